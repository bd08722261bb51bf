"""What the atlas measures on one trained run: where the dependence on each context token
flows, whether attention and the MLP are needed for it, what the components encode, what the
heads do, and whether the kernel sits in the weights or is estimated in context.

All measurements read the model at the readout, the last position N-1 (its output predicts
x_{N+1}); a corruption at lag j flips x_{n-j} = tokens[:, N-1-j] (binary: 1 - x; an
in-distribution change for chains with positive kernels). For each lag j < max(k, 2):

- ``rho``: the model's flip effect on the logit difference over a perfect predictor's
  (interp.explain's flip ratio; nan where the true law does not depend on x_{n-j});
  ``sensitivity``: mean total variation between the model's next-token laws before and after
  the flip (defined whatever the truth; a model reading a token the truth ignores shows here);
- ``shares``: the direct-path decomposition of the effect at the readout
  (interp.patching.direct_path_effects) into the token embedding ("direct"), each attention
  layer and each MLP, noising (corrupt one component in the clean run) and denoising (clean
  one component in the corrupted run); groups attention / mlp / direct sum to ~1;
- ``necessity``: the share of the flip effect that disappears when every attention layer
  (or every MLP) is mean-ablated (outputs replaced by their mean over the clean batch at each
  position, in the clean and the corrupted run, so the component passes no information about
  the particular sequence; interp.patching.ablation_source and ablation_hooks).

Transfer (in weights or in context?): the model reads sequences of ``TRANSFER`` chains of the
same family with other parameters. Two references predict them: the training kernel applied
to the test context ("in weights"; the prior mean 1/S for in-context training chains) and the
add-beta in-context estimate of the test kernel ("in context", add-1 counts of the same order;
add-alpha for in-context chains). d_w, d_c = mean KL(reference || model) over positions
N/4..N-2; ``in_context_index`` = d_w / (d_w + d_c): 0 for a model that keeps predicting its
training kernel, 1 for one that tracks the in-context estimate. Losses against the true test
kernel of the model and of both references are reported too (nats).

``circuit`` (in-context chains only): ``interp.circuits.induction_circuit`` on
``INDUCTION_SEQS`` (at most ``n_seqs``) sequences of the training chain: head scores, path
patching into the matching head, composition, the add-beta fit and the ``in-context
(induction)`` rule (interp.atlas.labels rule 5), as its JSON-able dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.attention import attention_patterns, offset_profile
from interp.corruptions import make_patching_data
from interp.heads import head_scores
from interp.patching import (
    ablation_hooks,
    ablation_source,
    cache_runs,
    direct_path_effects,
    direct_path_hooks,
    make_metric,
)
from training.chains import (
    BinaryChain,
    InContextChain,
    KthOrderChain,
    MarkovChain,
    add_pseudocount_probs,
)
from training.jsonconfig import JsonConfig
from training.model import MarkovTransformer
from training.stats import finite

TRUE_EFFECT_MIN = 1e-3  # |true flip effect| below this (logits): rho undefined
SENSITIVITY_MIN = 1e-3  # true total variation below this: the truth ignores the token
TRANSFER_PQ = ((0.1, 0.6), (0.6, 0.1), (0.8, 0.9), (0.35, 0.35))
TRANSFER_SEEDS = (1000, 1001, 1002, 1003)
PROBE_TARGETS = ("x_n", "x_n-1", "next_prob", "icl_unigram", "icl_bigram")
MAX_OFFSET = 8
INDUCTION_SEQS = 64  # sequences for induction_circuit (path patching sweeps every sender)


@dataclass
class AtlasConfig(JsonConfig):
    """How much the atlas measures per run (JSON-able). seq_len None: the run's training
    length capped at ``max_len``. The same seed gives every run the same sequences."""

    config_name = "atlas config"

    n_seqs: int = 128
    seq_len: int | None = None
    max_len: int = 256
    seed: int = 0
    probes: bool = True
    probe_seqs: int = 64
    probe_positions: int = 32
    timeline: bool = True
    timeline_seqs: int = 32

    def __post_init__(self) -> None:
        for name in ("n_seqs", "max_len", "probe_seqs", "probe_positions", "timeline_seqs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.seq_len is not None and (
            isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 4
        ):
            raise ValueError(f"seq_len must be an integer >= 4 or None, got {self.seq_len!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")


def lags_of(chain: MarkovChain) -> list[int]:
    """Lags j measured: 0..max(order, 2) - 1 (x_n, x_{n-1}, ...)."""
    return list(range(max(chain.order, 2)))


def analysis_length(model: MarkovTransformer, config: AtlasConfig, train_len: int | None) -> int:
    n = config.seq_len or min(train_len or model.cfg.n_ctx, config.max_len)
    return min(n, model.cfg.n_ctx)


# ------------------------------------------------------------------------------ dependence


def _laws(logits: Tensor) -> Tensor:
    return logits[:, -1].double().softmax(-1)


def _group_layers(effects: dict[str, float], total: float) -> dict[str, float]:
    """Per-layer shares: L{l}.attn (all heads), L{l}.mlp, and direct (the embedding)."""
    out: dict[str, float] = {}
    for label, e in effects.items():
        if label == "embed":
            key = "direct"
        elif label.endswith("mlp_out"):
            key = label.split(".")[0] + ".mlp"
        else:
            key = label.split("H")[0] + ".attn"
        out[key] = out.get(key, 0.0) + e
    return {k: (v / total if abs(total) > 1e-9 else math.nan) for k, v in out.items()}


ABLATED = {"attention": "attn_out", "mlp": "mlp_out"}


def ablated_hooks(model: MarkovTransformer) -> dict[str, list[str]]:
    """Per kind ("attention", and "mlp" unless attention-only): the hooks of every layer's
    attn_out / mlp_out, ablated together for that kind's necessity."""
    return {
        kind: [f"blocks.{i}.hook_{act}" for i in range(model.cfg.n_layers)]
        for kind, act in ABLATED.items()
        if not (kind == "mlp" and model.cfg.attn_only)
    }


@torch.no_grad()
def dependence_at_lag(
    model: MarkovTransformer,
    chain: MarkovChain,
    lag: int,
    n_seqs: int,
    n: int,
    seed: int,
    ablate: bool = True,
    directions: tuple[str, ...] = ("noise", "denoise"),
) -> dict[str, Any]:
    """The flip of x_{n-lag}: rho, sensitivity, direct-path shares and necessity (module doc)."""
    gen = torch.Generator().manual_seed(seed + 101 * (lag + 1))
    data = make_patching_data(chain, "flip", n_seqs, n, gen, position=-1 - lag)
    dev = model.W_E.device
    clean, corrupt = data.clean.to(dev), data.corrupt.to(dev)
    # each batch runs once, caching what the direct paths (and the ablations) read: attention
    # stays fused, so the logits are the plain forward's; for the laws, both directions and
    # the ablation means
    kinds = ablated_hooks(model) if ablate else {}
    names = direct_path_hooks(model.cfg).union(*kinds.values())
    runs = cache_runs(model, data, names)
    true_tv = 0.5 * float((data.clean_probs - data.corrupt_probs).abs().sum(-1).mean())
    laws_clean, laws_corrupt = _laws(runs.clean[0]), _laws(runs.corrupt[0])
    model_tv = 0.5 * float((laws_clean - laws_corrupt).abs().sum(-1).mean())
    t_clean, t_corrupt = data.true_logit_diff()
    true_effect = t_clean - t_corrupt
    out: dict[str, Any] = {
        "lag": lag,
        "true_sensitivity": true_tv,
        "sensitivity": model_tv,
        "sensitivity_ratio": model_tv / true_tv if true_tv >= SENSITIVITY_MIN else math.nan,
        "true_effect": true_effect,
    }
    if abs(true_effect) < TRUE_EFFECT_MIN:
        return out | {
            "rho": math.nan,
            "effect": math.nan,
            "shares": {},
            "layer_shares": {},
            "necessity": {},
        }
    shares, layer_shares = {}, {}
    for direction in directions:
        res = direct_path_effects(model, data, "logit_diff", direction, runs=runs)
        shares[direction] = res["shares"]
        layer_shares[direction] = _group_layers(res["effects"], res["total_effect"])
    effect = res["total_effect"]
    necessity = {}
    if ablate:
        fn = make_metric("logit_diff", data.to(dev))
        # every layer's output of a kind replaced by its mean over the clean batch at each
        # position, in both batches
        wanted = {name for group in kinds.values() for name in group}
        means = ablation_source(
            model,
            clean.shape[0],
            clean,
            "mean",
            reference_cache={name: runs.clean[1][name] for name in wanted},
        )
        for kind, group in kinds.items():
            with model.hooks(fwd_hooks=ablation_hooks(means, group)):
                ablated = float(fn(model(clean)).mean() - fn(model(corrupt)).mean())
            necessity[kind] = 1.0 - ablated / effect if abs(effect) > 1e-9 else math.nan
    return out | {
        "rho": effect / true_effect,
        "effect": effect,
        "shares": shares,
        "layer_shares": layer_shares,
        "necessity": necessity,
    }


# ------------------------------------------------------------------------------- transfer


def transfer_chains(chain: MarkovChain) -> list[MarkovChain]:
    """Test chains of the same family as ``chain`` with other parameters (module doc)."""
    if isinstance(chain, BinaryChain):
        return [BinaryChain(p, q) for p, q in TRANSFER_PQ if (p, q) != (chain.p, chain.q)]
    label = getattr(chain, "label", "")
    if isinstance(chain, KthOrderChain) and label.startswith("lag("):
        k = chain.order
        return [KthOrderChain.lag(k, p, q) for p, q in TRANSFER_PQ]
    return [KthOrderChain.random(chain.n_states, chain.order, 1.0, seed=s) for s in TRANSFER_SEEDS]


def _mean_kl(p: Tensor, q: Tensor) -> float:
    """mean over rows of KL(p || q), nats."""
    p = p.clamp_min(1e-300)
    return float((p * (p.log() - q.clamp_min(1e-300).log())).sum(-1).mean())


def _loss(probs: Tensor, labels: Tensor) -> float:
    return float(-probs.clamp_min(1e-300).log().gather(-1, labels[..., None]).mean())


@torch.no_grad()
def transfer(
    model: MarkovTransformer, chain: MarkovChain, n_seqs: int, n: int, seed: int
) -> dict[str, Any]:
    """In weights or in context (module doc): per test chain and averaged."""
    S = chain.n_states
    order = chain.order
    alpha = chain.alpha if isinstance(chain, InContextChain) else 1.0
    start = max(1, n // 4)
    dev = model.W_E.device
    per_chain = []
    for i, test in enumerate(transfer_chains(chain)):
        gen = torch.Generator().manual_seed(seed + 7919 * (i + 1))
        tokens = test.sample(n_seqs, n, generator=gen)
        labels = tokens[:, start + 1 :]
        model_p = model(tokens.to(dev)).double().softmax(-1)[:, start:-1].cpu()
        oracle = test.next_token_probs(tokens)[:, start:-1]
        if isinstance(chain, InContextChain):
            weights = torch.full_like(oracle, 1.0 / S)
        else:
            weights = chain.next_token_probs(tokens)[:, start:-1]
        context = add_pseudocount_probs(tokens, S, order, alpha)[:, start:-1]
        d_w, d_c = _mean_kl(weights, model_p), _mean_kl(context, model_p)
        per_chain.append(
            {
                "chain": repr(test),
                "d_weights": d_w,
                "d_context": d_c,
                "in_context_index": d_w / (d_w + d_c) if d_w + d_c > 0 else math.nan,
                "loss_model": _loss(model_p, labels),
                "loss_weights": _loss(weights, labels),
                "loss_context": _loss(context, labels),
                "loss_oracle": _loss(oracle, labels),
            }
        )
    keys = [k for k in per_chain[0] if k != "chain"]
    mean = {k: sum(r[k] for r in per_chain) / len(per_chain) for k in keys}
    d_w, d_c = mean["d_weights"], mean["d_context"]
    mean["in_context_index"] = d_w / (d_w + d_c) if d_w + d_c > 0 else math.nan
    return {"mean": mean, "chains": per_chain, "positions": [start, n - 2]}


# ---------------------------------------------------------------------------------- heads


@torch.no_grad()
def heads(model: MarkovTransformer, chain: MarkovChain, n_seqs: int, n: int, seed: int) -> dict:
    """Previous-token and induction scores over their shuffled baselines (interp.heads), and
    the attention offset profile [layer][head][offset 0..8] with the k-back excess."""
    tokens = chain.sample(n_seqs, n, generator=torch.Generator().manual_seed(seed + 17))
    patterns = attention_patterns(model, tokens.to(model.W_E.device))
    scores = head_scores(patterns, tokens, chain.n_states, model.cfg.windows())
    profile = offset_profile(patterns, MAX_OFFSET).mean(1).cpu()  # [layer, head, offset]
    return {
        "previous_token_excess_max": float(scores.previous_token_excess.max()),
        "induction_excess_max": float(scores.induction_excess.max()),
        "scores": scores.to_dict(),
        "profile": profile.tolist(),
        # k-back: mass at offset k beyond the previous-token baseline, best head
        "kback_excess_max": [
            float((profile[..., k] - scores.previous_token_baseline).max())
            for k in range(1, max(chain.order, 2) + 1)
        ],
    }


# ------------------------------------------------------------------------------ induction


def induction(
    model: MarkovTransformer, chain: InContextChain, n_seqs: int, n: int, seed: int
) -> dict[str, Any]:
    """``induction_circuit`` on ``n_seqs`` sequences of ``n`` tokens of ``chain`` (order
    ``chain.order``), as its JSON-able dict (module doc)."""
    from interp.circuits import induction_circuit

    tokens = chain.sample(n_seqs, n, generator=torch.Generator().manual_seed(seed + 29))
    return induction_circuit(model, tokens, order=chain.order, seed=seed).to_dict()


# --------------------------------------------------------------------------------- probes


def probe_summary(
    model: MarkovTransformer, chain: MarkovChain, n: int, config: AtlasConfig
) -> dict[str, Any]:
    """Probes with controls at every residual stream and every attn_out / mlp_out: per target,
    the selectivity (discrete: accuracy - control accuracy; continuous: R^2 - R^2 with
    shuffled targets) at each component, and its best over the attention outputs, the MLP
    outputs and the final residual."""
    from probes.sweeps import ProbeConfig, probe_model

    cfg = ProbeConfig(
        targets=list(PROBE_TARGETS),
        components=["resid", "outputs"],
        n_seqs=config.probe_seqs,
        seq_len=n,
        n_positions=min(config.probe_positions, n),
        random_baseline=False,
        seed=config.seed,
        device=str(model.W_E.device),
    )
    rows = probe_model(model, chain, cfg)
    table: dict[str, dict[str, float]] = {}
    for r in rows:
        base = r["control_score"] if r["kind"] == "discrete" else r["shuffled_score"]
        sel = r["score"] - base if finite(r["score"]) and finite(base) else math.nan
        table.setdefault(r["target"], {})[r["component"]] = sel
    best = {}
    for target, by_comp in table.items():
        for group, prefix in (("attn", "attn_out"), ("mlp", "mlp_out"), ("resid", "resid_final")):
            vals = [v for c, v in by_comp.items() if c.startswith(prefix) and finite(v)]
            best[f"{target}.{group}"] = max(vals) if vals else math.nan
    return {"selectivity": table, "best": best}


# -------------------------------------------------------------------------------- a model


def measure_model(
    model: MarkovTransformer,
    chain: MarkovChain,
    config: AtlasConfig | None = None,
    train_len: int | None = None,
) -> dict[str, Any]:
    """Every measurement of the module docstring on one model (JSON-able, nan for undefined)."""
    config = config or AtlasConfig()
    model.eval()
    n = analysis_length(model, config, train_len)
    lags = [
        dependence_at_lag(model, chain, j, config.n_seqs, n, config.seed) for j in lags_of(chain)
    ]
    out = {
        "seq_len": n,
        "lags": lags,
        "transfer": transfer(model, chain, config.n_seqs, n, config.seed),
        "heads": heads(model, chain, min(config.n_seqs, 64), n, config.seed),
    }
    if isinstance(chain, InContextChain):
        k = min(config.n_seqs, INDUCTION_SEQS)
        out["circuit"] = induction(model, chain, k, n, config.seed)
    if config.probes:
        out["probes"] = probe_summary(model, chain, n, config)
    return out


def timeline(run, config: AtlasConfig, lag: int | None) -> list[dict[str, Any]]:
    """Per kept checkpoint of ``run`` (a training.runs.Run): rho, sensitivity ratio and the
    noising shares of the flip at ``lag`` (unless None), and on in-context chains the best
    head's previous-token and induction excess over their shuffled baselines (``heads``)."""
    out = []
    in_context = isinstance(run.chain, InContextChain)
    for step in run.checkpoint_steps():
        model = run.model(step)
        model.eval()
        n = analysis_length(model, config, run.train_config.seq_len)
        point: dict[str, Any] = {"step": step}
        if lag is not None:
            d = dependence_at_lag(
                model,
                run.chain,
                lag,
                config.timeline_seqs,
                n,
                config.seed,
                ablate=False,
                directions=("noise",),
            )
            point |= {
                "rho": d["rho"],
                "sensitivity_ratio": d["sensitivity_ratio"],
                "shares": d["shares"].get("noise", {}),
            }
        if in_context:
            h = heads(model, run.chain, config.timeline_seqs, n, config.seed)
            point["previous_token_excess"] = h["previous_token_excess_max"]
            point["induction_excess"] = h["induction_excess_max"]
        out.append(point)
    return out
