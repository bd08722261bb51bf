"""Direct logit attribution: components sum to the target minus the b_U part, exactly."""

import pytest
import torch

from interp.attribution import logit_attribution
from training.config import ModelConfig
from training.inits import init_theta_pi
from training.model import MarkovTransformer

CONFIGS = [
    {},
    {"tie_embeddings": False, "n_layers": 2, "n_heads": 2},
    {"ln_bias": True, "linear_bias": True, "d_vocab": 3, "attn_window": 2},
    {"normalization_type": None, "attn_only": True, "positional_embedding_type": "none"},
]


pytestmark = pytest.mark.usefixtures("one_thread_module")


def perturbed(cfg: dict, seed: int = 0) -> MarkovTransformer:
    """A model with weights of trained-model size (the paper init is ~0.02)."""
    model = MarkovTransformer(ModelConfig.paper(n_ctx=32, **cfg), seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("kind", ["diff", "true"])
def test_components_sum_to_target_minus_bias(cfg, kind, gen):
    model = perturbed(cfg)
    tokens = torch.randint(0, model.cfg.d_vocab, (4, 12), generator=gen)
    attr = logit_attribution(model, tokens, kind)
    logits = model(tokens)
    if kind == "diff":
        torch.testing.assert_close(attr.target, logits[..., 1] - logits[..., 0])
    else:
        centred = logits[:, :-1] - logits[:, :-1].mean(-1, keepdim=True)
        torch.testing.assert_close(attr.target, centred.gather(-1, tokens[:, 1:, None])[..., 0])
    torch.testing.assert_close(attr.values.sum(0), attr.target - attr.bias, atol=1e-4, rtol=1e-5)
    assert attr.residual_error() < 1e-4
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    assert sum(lab.startswith("L") and "H" in lab for lab in attr.labels) == n_heads
    groups = attr.grouped()
    torch.testing.assert_close(sum(groups.values()), attr.values.sum(0))


def test_without_layernorm_the_embedding_term_is_the_direct_path(gen):
    model = perturbed({"normalization_type": None})
    tokens = torch.randint(0, 2, (3, 10), generator=gen)
    attr = logit_attribution(model, tokens, "diff")
    direction = model.W_U[:, 1] - model.W_U[:, 0]
    expected = model.W_E[tokens] @ direction
    torch.testing.assert_close(attr.values[attr.labels.index("embed")], expected.detach())


def test_theta_pi_puts_everything_in_the_bias(gen):
    model = MarkovTransformer(ModelConfig.paper(n_ctx=32), seed=0).eval()
    init_theta_pi(model, torch.tensor([0.6, 0.4], dtype=torch.float64))
    tokens = torch.randint(0, 2, (3, 10), generator=gen)
    attr = logit_attribution(model, tokens)
    assert attr.values.abs().max() == 0
    torch.testing.assert_close(attr.target, attr.bias)
    assert attr.bias[0, 0].item() == pytest.approx(
        float(torch.log(torch.tensor(0.4 / 0.6))), rel=1e-5
    )
    summary = attr.summary(position=-1)
    assert summary["groups"]["attn"] == 0 and summary["kind"] == "diff"


def test_bad_arguments():
    model = perturbed({})
    tokens = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="kind must be"):
        logit_attribution(model, tokens, "loss")
    with pytest.raises(ValueError, match="distinct"):
        logit_attribution(model, tokens, "diff", tokens_ab=(1, 1))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        logit_attribution(model, tokens[:, :1], "true")
