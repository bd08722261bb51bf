"""theta_pi, the unigram stationary point, and what the paper says about it.

``theta_pi_of`` / ``theta_pi_model`` (a model at theta_pi for a chain), ``hessian_proxy`` (the
paper code's proxy), ``paper_prediction`` (docs/theory.md section 1), ``agreement`` (verdict
against prediction) and ``theta_pi_analysis`` (loss, gradient, Hessian verdict, proxy and
prediction for one chain and architecture, as a JSON-able dict).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch

from interp.landscape.sample import (
    DTYPES,
    LandscapeConfig,
    analysis_copy,
    default_device,
    population_gradient,
    population_loss,
    sample_tokens,
)
from interp.landscape.spectrum import HessianReport, hessian_report
from training.chains import BinaryChain, MarkovChain
from training.config import ModelConfig
from training.inits import init_theta_pi
from training.references import entropy_rate, stationary_marginal, unigram_loss

if TYPE_CHECKING:  # the model (transformer_lens) is imported where one is built
    from training.model import MarkovTransformer
    from training.progress import Counter


def theta_pi_of(model: MarkovTransformer, chain: MarkovChain) -> MarkovTransformer:
    """A copy of `model` moved to theta_pi for `chain` (W_Q, W_K, W_V, W_pos, LayerNorm
    weights kept: the unigram stationary point nearest in those coordinates)."""
    out = copy.deepcopy(model)
    return init_theta_pi(out, stationary_marginal(chain))


def theta_pi_model(
    model_config: ModelConfig,
    chain: MarkovChain,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> MarkovTransformer:
    """MarkovTransformer(model_config, seed) in `dtype`, set to theta_pi for `chain` (paper
    init for the arbitrary parameters W_Q, W_K, W_V, W_pos; b_U = log pi in `dtype`)."""
    if model_config.d_vocab != chain.n_states:
        raise ValueError(
            f"model d_vocab={model_config.d_vocab} but the chain has {chain.n_states} states"
        )
    from training.model import MarkovTransformer

    # Paper init, then theta_pi after the dtype change so that b_U = log pi in `dtype` (the
    # constructor's pi= would compute it in float32); the model's cfg keeps model_config.init.
    paper = dataclasses.replace(model_config, init="paper")
    model = MarkovTransformer(paper, seed=seed).to(dtype)
    model.cfg.init = model_config.init
    return init_theta_pi(model, stationary_marginal(chain))


def hessian_proxy(model: MarkovTransformer, p: float, q: float, n_positions: int) -> float:
    """The paper code's Hessian proxy: lambda_min(2 (p + q - 1) I_d + (1/N) sum_n
    (p_n - pbar)(p_n - pbar)^T) over the first N positional embeddings p_n = W_pos[n]
    (docs/theory.md section 1). Positive predicts a local minimum (tied, one layer)."""
    if model.cfg.positional_embedding_type != "standard":
        raise ValueError("the Hessian proxy needs learned positional embeddings")
    W = model.pos_embed.W_pos[:n_positions].detach().double()
    centred = W - W.mean(0)
    cov = centred.T @ centred / W.shape[0]
    d = W.shape[1]
    mat = 2 * (p + q - 1) * torch.eye(d, dtype=W.dtype, device=W.device) + cov
    return float(torch.linalg.eigvalsh(mat)[0])


def paper_prediction(p: float, q: float, tied: bool, n_layers: int) -> str | None:
    """What docs/theory.md section 1 predicts for theta_pi: None where it claims nothing."""
    s = p + q
    if math.isclose(s, 1.0, abs_tol=1e-12):
        return "global minimum (p + q = 1: i.i.d. chain)"
    if n_layers != 1:
        return None
    if not tied:
        return "saddle"
    return "local minimum" if s > 1 else "saddle"


def agreement(verdict: str, prediction: str | None) -> str:
    """'agrees', 'disagrees', 'no prediction', 'undecided' (verdict degenerate/inconclusive) or,
    for "local minimum (up to flat directions)", 'no negative curvature beyond sampling error':
    its flat band can be far wider than lambda_min, so it neither confirms a minimum nor rules
    out a saddle along the flat directions."""
    if prediction is None:
        return "no prediction"
    if verdict in ("inconclusive", "degenerate (flat)"):
        return "undecided"
    if verdict == "local minimum (up to flat directions)":
        return "no negative curvature beyond sampling error"
    minimum_like = verdict.startswith("local minimum")
    wants_minimum = prediction != "saddle"
    return "agrees" if minimum_like == wants_minimum else "disagrees"


def theta_pi_analysis(
    chain: MarkovChain,
    model_config: ModelConfig,
    config: LandscapeConfig | None = None,
    model_seed: int = 0,
    device: str | torch.device | None = None,
    with_report: bool = False,
    progress: Counter | None = None,
) -> dict[str, Any] | tuple[dict[str, Any], HessianReport]:
    """Everything about theta_pi for one chain and architecture, as a JSON-able dict (and the
    HessianReport itself, with its eigenvectors, if with_report). progress: the Hessian's
    ``training.progress.Counter`` (``hessian_report``).

    Keys: chain, model, landscape (configs); loss (LossEstimate dict), unigram_loss,
    entropy_rate, loss_z ((loss - unigram)/se); gradient (GradientEstimate dict); hessian
    (HessianReport dict); proxy (binary chains with learned positions, else None);
    prediction (paper_prediction) and agreement.
    """
    cfg = config or LandscapeConfig()
    device = torch.device(device) if device is not None else default_device()
    model = theta_pi_model(model_config, chain, model_seed, DTYPES[cfg.dtype]).to(device)
    seq_len = cfg.seq_len or model_config.n_ctx
    if seq_len > model_config.n_ctx:
        raise ValueError(f"seq_len={seq_len} is longer than the model's n_ctx={model_config.n_ctx}")
    tokens = sample_tokens(chain, cfg.n_sequences, seq_len, cfg.seed, device)
    loss = population_loss(analysis_copy(model, cfg.dtype), tokens, cfg.batch_size)
    grad_est = population_gradient(model, tokens, cfg.n_groups, cfg.include, cfg.dtype)
    report = hessian_report(model, tokens, cfg, progress)
    u = unigram_loss(chain)
    binary = isinstance(chain, BinaryChain)
    proxy = None
    if binary and model_config.positional_embedding_type == "standard":
        proxy = hessian_proxy(model, chain.p, chain.q, seq_len)
    prediction = (
        paper_prediction(chain.p, chain.q, model_config.tie_embeddings, model_config.n_layers)
        if binary
        else None
    )
    result = {
        "chain": chain.to_dict(),
        "model": model_config.to_dict(),
        "model_seed": model_seed,
        "landscape": cfg.to_dict(),
        "loss": loss.to_dict(),
        "unigram_loss": u,
        "entropy_rate": entropy_rate(chain),
        "loss_z": (loss.mean - u) / loss.se if loss.se > 0 else None,
        "gradient": grad_est.to_dict(),
        "hessian": report.to_dict(),
        "proxy": proxy,
        "proxy_prediction": None if proxy is None else ("local minimum" if proxy > 0 else "saddle"),
        "prediction": prediction,
        "agreement": agreement(report.verdict, prediction),
    }
    return (result, report) if with_report else result
