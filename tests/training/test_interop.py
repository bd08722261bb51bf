"""Export to TransformerLens's own model (issue 3): a TransformerBridge built by boot_native and
loaded through convert_tl_checkpoint computes the same logits (within 1e-5) and the same
activations under the same hook names; configs it cannot express are refused."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from training.config import ModelConfig
from training.interop import bridge_config, to_transformer_bridge, unsupported_features
from training.model import MarkovTransformer


def randomised(cfg: ModelConfig, seed: int = 0) -> MarkovTransformer:
    """A model whose every parameter (biases and LayerNorm weights too) is far from its init.
    Without LayerNorm the perturbation is smaller, so that float32 logits stay O(10)."""
    model = MarkovTransformer(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    scale = 0.3 if cfg.normalization_type else 0.15
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def tokens(cfg: ModelConfig, batch: int = 4, length: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, cfg.d_vocab, (batch, length or cfg.n_ctx), generator=gen)


EXPRESSIBLE = {
    "untied_paper": dict(n_layers=1, n_heads=1),
    "ln_bias_linear_bias_2L2H": dict(ln_bias=True, linear_bias=True, n_layers=2, n_heads=2),
    "no_unembed_bias_3L": dict(unembed_bias=False, n_layers=3, n_heads=2),
    "attn_only": dict(attn_only=True, n_layers=2, n_heads=2),
    "no_ln": dict(normalization_type=None, n_layers=2),
    "no_positions": dict(positional_embedding_type="none", n_layers=2),
    "relu_odd_heads": dict(act_fn="relu", n_heads=3, d_head=5, d_mlp=20, n_layers=2),
}


def untied_cfg(**overrides) -> ModelConfig:
    base = dict(d_vocab=3, n_ctx=12, d_model=8, tie_embeddings=False, init_range=0.3)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.mark.parametrize("name", sorted(EXPRESSIBLE))
def test_bridge_gives_the_same_logits(name):
    cfg = untied_cfg(**EXPRESSIBLE[name])
    model = randomised(cfg)
    assert unsupported_features(cfg) == []
    bridge = to_transformer_bridge(model)
    assert isinstance(bridge, TransformerBridge) and not bridge.training
    toks = tokens(cfg)
    with torch.no_grad():
        ours, theirs = model(toks), bridge(toks)
    assert theirs.shape == ours.shape
    assert (ours - theirs).abs().max() < 1e-5
    with torch.no_grad():
        short = bridge(toks[:, :5])
    assert (short - ours[:, :5]).abs().max() < 1e-5


def test_bridge_activations_match_under_the_same_hook_names():
    cfg = untied_cfg(ln_bias=True, linear_bias=True, n_layers=2, n_heads=2)
    model = randomised(cfg)
    bridge = to_transformer_bridge(model)
    toks = tokens(cfg)
    _, ours = model.run_with_cache(toks)
    _, theirs = bridge.run_with_cache(toks)
    shared = [k for k in ours.cache_dict if k in theirs.cache_dict]
    # TransformerLens 4.3's generic AttentionBridge fires hook_attn_scores post hoc on the
    # softmaxed weights the native attention returns, so its "scores" are the pattern; ours
    # are the pre-softmax masked scores of HookedTransformer. Compared through the pattern.
    compared = [k for k in shared if not k.endswith("hook_attn_scores")]
    assert set(ours.cache_dict) - set(shared) == set()  # every one of our hooks exists there
    assert len(compared) == len(ours.cache_dict) - cfg.n_layers
    for key in compared:
        assert ours[key].shape == theirs[key].shape, key
        assert (ours[key] - theirs[key]).abs().max() < 1e-5, key
    for layer in range(cfg.n_layers):
        pattern = ours[f"blocks.{layer}.attn.hook_attn_scores"].softmax(-1)
        assert (pattern - theirs[f"blocks.{layer}.attn.hook_pattern"]).abs().max() < 1e-6


def test_bridge_weights_are_ours():
    cfg = untied_cfg(n_layers=2, n_heads=2, linear_bias=True)
    model = randomised(cfg)
    state = to_transformer_bridge(model).state_dict()
    assert torch.equal(state["embed.weight"], model.W_E)
    assert torch.equal(state["unembed.weight"], model.W_U.T)
    assert torch.equal(state["unembed.bias"], model.unembed.b_U)
    assert torch.equal(state["pos_embed.weight"], model.pos_embed.W_pos)
    W_Q = model.blocks[1].attn.W_Q  # [head, d_model, d_head] -> [(head d_head), d_model]
    assert torch.equal(state["blocks.1.attn.q.weight"], W_Q.permute(0, 2, 1).reshape(8, 8))
    assert torch.equal(state["blocks.0.mlp.in.weight"], model.blocks[0].mlp.W_in.T)
    assert torch.equal(state["blocks.0.ln1.bias"], torch.zeros(8))  # LN without bias: zeros


def test_float64_export():
    cfg = untied_cfg(n_layers=2, n_heads=2)
    model = randomised(cfg).to(torch.float64)
    bridge = to_transformer_bridge(model)
    toks = tokens(cfg)
    with torch.no_grad():
        theirs = bridge(toks)
    assert theirs.dtype == torch.float64
    assert (model(toks) - theirs).abs().max() < 1e-12


def test_export_leaves_the_global_rng_alone():
    model = randomised(untied_cfg())
    state = torch.get_rng_state()
    to_transformer_bridge(model)
    assert torch.equal(torch.get_rng_state(), state)


def test_tied_models_are_refused_unless_untie():
    cfg = ModelConfig.paper(n_ctx=12)
    model = randomised(cfg)
    with pytest.raises(ValueError, match="tie_embeddings=True: .*separate embedding"):
        to_transformer_bridge(model)
    bridge = to_transformer_bridge(model, untie=True)
    toks = tokens(cfg)
    with torch.no_grad():
        assert (model(toks) - bridge(toks)).abs().max() < 1e-5
    state = bridge.state_dict()
    assert torch.equal(state["unembed.weight"], state["embed.weight"])  # a copy of W_E


@pytest.mark.parametrize("window", [0, 3, [None, 2]])
def test_attention_windows_are_refused(window):
    n_layers = len(window) if isinstance(window, list) else 1
    cfg = untied_cfg(attn_window=window, n_layers=n_layers)
    with pytest.raises(ValueError, match=r"attn_window=.*plain causal attention only"):
        to_transformer_bridge(randomised(cfg))
    with pytest.raises(ValueError, match="attn_window.*; tie_embeddings=True"):
        to_transformer_bridge(
            randomised(ModelConfig.paper(n_ctx=8, attn_window=window, n_layers=n_layers))
        )


def test_bridge_config_mirrors_ours():
    cfg = untied_cfg(n_heads=3, d_head=5, d_mlp=20, ln_eps=1e-6, act_fn="relu", attn_only=True)
    bcfg = bridge_config(cfg)
    assert (bcfg.d_model, bcfg.n_heads, bcfg.d_head, bcfg.d_mlp) == (8, 3, 5, 20)
    assert (bcfg.n_ctx, bcfg.d_vocab, bcfg.n_layers) == (12, 3, 1)
    assert bcfg.eps == 1e-6 and bcfg.act_fn == "relu" and bcfg.attn_only
    assert bcfg.normalization_type == "LN" and bcfg.positional_embedding_type == "standard"
    assert bridge_config(untied_cfg(act_fn="gelu")).act_fn == "gelu"  # exact GELU, not gelu_new
