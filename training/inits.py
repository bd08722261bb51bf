"""Named initialisations of a MarkovTransformer (docs/theory.md sections 1 and 4).

- "paper": N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)) (done by the model itself).
- "theta_pi": the unigram stationary point for a chain: token embedding W_E = 0, MLP W_in = 0,
  every output projection (attention W_O, MLP W_out) = 0, W_U = 0 (tied: through W_E = 0;
  untied: set explicitly, so the logits cannot depend on position), b_U = log pi so that
  softmax(b_U) = pi (binary: b_U[1] - b_U[0] = log(p/q)). W_Q, W_K, W_V, W_pos keep their
  paper init. Its loss is the unigram loss H(pi) and its gradient is 0.
- "good": the Local-to-Global escaping init (docs/theory.md section 4): every entry of the
  token embedding e = -1, W_pos = 0.5, MLP W_in = 2, W_out = -2; the rest paper init. It
  belongs to that paper's simplified model: ModelConfig(token_embedding="linear",
  normalization_type=None), where token x embeds as x * e. In the paper's pre-LayerNorm model
  with an embedding table both token rows become -1, the residual stream is the same
  constant for both tokens, which LayerNorm maps to 0: the model starts as a context-free
  predictor. Measured (p=0.5, q=0.8, tied, 400 steps, length 256): 2 of 10 seeds
  escaped to the kernel from it, against 10 of 10 from the paper init.

The model applies its config's init itself: MarkovTransformer(cfg, seed) is the paper init
followed by apply_init(model, cfg.init, pi), with pi passed as MarkovTransformer(cfg, seed,
pi=stationary_marginal(chain)) for "theta_pi". init_theta_pi and init_good also move an
existing model (e.g. a trained one, or one converted to float64) in place.
"""

from __future__ import annotations

from typing import TypeVar

import torch

# Any MarkovTransformer. inits imports nothing from training.model, not even for annotations
# (an import under TYPE_CHECKING is an edge too): the model imports inits, since
# MarkovTransformer(cfg, pi=...) applies cfg.init itself through apply_init.
Model = TypeVar("Model", bound=torch.nn.Module)


@torch.no_grad()
def init_theta_pi(model: Model, pi: torch.Tensor) -> Model:
    """Set `model` to theta_pi for a stationary marginal `pi` [d_vocab] (all entries > 0)."""
    pi = torch.as_tensor(pi, dtype=torch.float64)
    if pi.shape != (model.cfg.d_vocab,):
        raise ValueError(f"pi must have shape ({model.cfg.d_vocab},), got {tuple(pi.shape)}")
    if (pi <= 0).any() or abs(float(pi.sum()) - 1) > 1e-6:
        raise ValueError(f"pi must be a positive probability vector, got {pi.tolist()}")
    if not model.cfg.unembed_bias:
        raise ValueError("theta_pi needs the unembedding bias b_U (unembed_bias=True)")
    model.embed.W_E.zero_()
    if not model.cfg.tie_embeddings:
        model.unembed.W_U.zero_()
    for block in model.blocks:
        block.attn.W_O.zero_()
        if not model.cfg.attn_only:
            block.mlp.W_in.zero_()
            block.mlp.W_out.zero_()
    log_pi = pi.log()
    model.unembed.b_U.copy_((log_pi - log_pi.mean()).to(model.unembed.b_U))
    return model


@torch.no_grad()
def init_good(model: Model) -> Model:
    """The Local-to-Global "good" init (docs/theory.md section 4)."""
    model.embed.W_E.fill_(-1.0)
    if model.cfg.token_embedding == "linear":
        model.embed.W_E[0].zero_()  # x * e with e = -1: token 0 -> 0, token 1 -> -1
    if model.cfg.positional_embedding_type == "standard":
        model.pos_embed.W_pos.fill_(0.5)
    for block in model.blocks:
        if not model.cfg.attn_only:
            block.mlp.W_in.fill_(2.0)
            block.mlp.W_out.fill_(-2.0)
    return model


def apply_init(model: Model, name: str, pi: torch.Tensor | None = None) -> Model:
    """Apply the named initialisation `name` to `model` (which holds the paper init), in place.

    The one dispatcher of the named inits: MarkovTransformer(cfg, seed, pi=pi) calls it with
    cfg.init right after its paper init. "paper": nothing; "good": init_good; "theta_pi":
    init_theta_pi with `pi` (the chain's stationary marginal, [d_vocab]), which is required.
    """
    if name == "paper":
        return model
    if name == "theta_pi":
        if pi is None:
            raise ValueError("init 'theta_pi' needs the chain's stationary marginal pi")
        return init_theta_pi(model, pi)
    if name == "good":
        return init_good(model)
    raise ValueError(f"unknown init {name!r}; allowed: 'paper', 'theta_pi', 'good'")
