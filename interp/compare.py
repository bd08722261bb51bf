"""Compare two models: two runs, two checkpoints, or a run against a checkpoint.

``compare(a, b)`` puts two models side by side on the *same* held-out inputs (drawn from A's
chain, or B's when A has none):

- behaviour: eval loss, KL to the true next-token law, relative excess, dependence and the
  verdict of each model (``training.trainer.evaluate`` on one shared ``EvalSet``, nats);
- predicted transition probabilities against the truth (fixed chains: the mean prediction
  given each context of the last k tokens; every chain: binned predicted-vs-true);
- attention patterns side by side and their difference, offset profiles, head scores;
- probe tables of both models side by side (``probes.sweeps.probe_model``, same sequences,
  split and controls) and activation-patching tables (``interp.patching``), when asked for;
- distances between the models: per-parameter norms of the difference in HookedTransformer
  names (``parameter_distances``; needs equal shapes, else says why and skips), and linear
  CKA between every pair of hook points (``cka_matrix``; works across architectures).

Linear CKA (Kornblith et al. 2019) of representations X [n, d1], Y [n, d2] of the same n
inputs, columns centred:

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)      in [0, 1]

It is 1 for X = Y, invariant to orthogonal transforms and isotropic scaling of either side
(not to general invertible maps), and undefined (nan) for a constant representation.

Sources (``load_subject``): a run directory means its last checkpoint plus its metrics; a
checkpoint directory means that checkpoint (plus its run's metrics up to its step when it
lies inside a run directory); a ``Run`` or a ``MarkovTransformer`` (with ``chain=``) also work.
Figures and the markdown summary are in ``interp.compare_plots``; ``Comparison.save`` writes
them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.attention import attention_patterns, attention_summary
from interp.heads import HeadScores, head_scores
from probes.activations import cache_activations, resolve_components
from training.chains import InContextChain, MarkovChain, chain_from_dict
from training.checkpoints import MANIFEST, model_from_checkpoint, read_checkpoint
from training.devices import resolve_device
from training.model import MarkovTransformer
from training.recipe import TrainConfig
from training.runs import CONFIG, Run, load_run
from training.trainer import EvalSet, evaluate, run_references
from training.verdicts import verdict

SourceLike = str | os.PathLike | Run | MarkovTransformer
MAX_TABLE_CONTEXTS = 64  # transition tables for fixed chains with at most this many contexts


def default_device() -> torch.device:
    """CUDA when available, else CPU (training.devices.resolve_device)."""
    return resolve_device()


# ------------------------------------------------------------------------------ subjects


@dataclass
class Subject:
    """One side of a comparison: a model and whatever is known about how it was trained.

    kind: "run", "checkpoint" or "model". metrics: the run's evaluation records (up to
    ``step`` for a checkpoint), [] when unknown. references: optimal_loss and unigram_loss
    (nats) of its chain at its training length, None without a chain.
    """

    label: str
    kind: str
    model: MarkovTransformer
    chain: MarkovChain | None = None
    path: Path | None = None
    step: int | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    references: dict[str, Any] | None = None
    train_config: TrainConfig | None = None
    seed: int | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-able facts: label, kind, path, step, seed, configs."""
        return {
            "label": self.label,
            "kind": self.kind,
            "path": None if self.path is None else str(self.path),
            "step": self.step,
            "seed": self.seed,
            "model": self.model.cfg.to_dict(),
            "chain": None if self.chain is None else self.chain.to_dict(),
            "train": None if self.train_config is None else self.train_config.to_dict(),
        }


def _references(
    chain: MarkovChain | None, train_config: TrainConfig | None, summary
) -> dict | None:
    if summary and isinstance(summary.get("references"), dict):
        return summary["references"]
    if chain is None:
        return None
    return run_references(chain, train_config or TrainConfig())


def run_name(path: Path) -> str:
    """A run's label: its directory name, with the parent's for sweep runs (CELL/seedN)."""
    path = Path(path).resolve()
    if re.fullmatch(r"seed\d+", path.name) and path.parent.name:
        return f"{path.parent.name}/{path.name}"
    return path.name


def _run_of_checkpoint(path: Path) -> Run | None:
    """The run a checkpoint directory RUN/checkpoints/step_X belongs to, if any."""
    root = path.resolve().parent.parent
    if (root / CONFIG).exists():
        try:
            return load_run(root)
        except (ValueError, FileNotFoundError):
            return None
    return None


def load_subject(
    source: SourceLike,
    *,
    step: int | None = None,
    chain: MarkovChain | dict | None = None,
    label: str | None = None,
    device: str | torch.device | None = None,
) -> Subject:
    """A Subject from a run directory (last checkpoint, or ``step``), a checkpoint directory,
    a ``Run`` or a model. ``chain`` overrides (or, for a bare model, supplies) the chain."""
    device = torch.device(device) if device is not None else default_device()
    if isinstance(chain, dict):
        chain = chain_from_dict(chain)
    if isinstance(source, MarkovTransformer):
        return Subject(
            label=label or "model",
            kind="model",
            model=source.to(device).eval(),
            chain=chain,
            step=step,
            references=_references(chain, None, None),
        )
    if isinstance(source, Run):
        return _subject_from_run(source, step, chain, label, device)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected a run or checkpoint directory)")
    if (path / CONFIG).exists():
        return _subject_from_run(load_run(path), step, chain, label, device)
    if (path / MANIFEST).exists():
        if step is not None:
            raise ValueError(
                f"{path} is one checkpoint: step={step} applies to run directories only"
            )
        ckpt = read_checkpoint(path)
        run = _run_of_checkpoint(path)
        meta = ckpt.metadata
        ckpt_step = meta.get("step")
        if chain is None:
            if run is not None:
                chain = run.chain
            elif isinstance(meta.get("chain"), dict):
                chain = chain_from_dict(meta["chain"])
        train_config = run.train_config if run is not None else None
        if train_config is None and isinstance(meta.get("train"), dict):
            train_config = TrainConfig.from_dict(meta["train"])
        metrics, summary = [], None
        if run is not None:
            metrics = [m for m in run.metrics() if ckpt_step is None or m["step"] <= ckpt_step]
            summary = run.summary() if run.finished else None
        default = f"{run_name(run.path)}@{ckpt_step}" if run is not None else path.name
        return Subject(
            label=label or default,
            kind="checkpoint",
            model=model_from_checkpoint(ckpt, device),
            chain=chain,
            path=path,
            step=ckpt_step,
            metrics=metrics,
            summary=summary,
            references=_references(chain, train_config, summary),
            train_config=train_config,
            seed=run.seed if run is not None else meta.get("seed"),
        )
    raise FileNotFoundError(
        f"{path} is neither a run directory (no {CONFIG}) nor a checkpoint directory "
        f"(no {MANIFEST})"
    )


def _subject_from_run(run: Run, step, chain, label, device) -> Subject:
    steps = run.checkpoint_steps()
    if not steps:
        raise FileNotFoundError(f"run {run.path} has no checkpoints to compare")
    step = steps[-1] if step is None else step
    summary = run.summary() if run.finished else None
    chain = chain or run.chain
    metrics = [m for m in run.metrics() if m["step"] <= step]
    return Subject(
        label=label
        or (run_name(run.path) if step == steps[-1] else f"{run_name(run.path)}@{step}"),
        kind="run",
        model=run.model(step, device=device),
        chain=chain,
        path=run.path,
        step=step,
        metrics=metrics,
        summary=summary,
        references=_references(chain, run.train_config, summary),
        train_config=run.train_config,
        seed=run.seed,
    )


# ------------------------------------------------------------------- parameter distances


def named_weights(model: MarkovTransformer) -> dict[str, Float[Tensor, "..."]]:
    """Every parameter by its HookedTransformer name, plus ``unembed.W_U`` for a tied model
    (there it is embed.W_E transposed), so tied and untied models list the same names."""
    weights = {name: p.detach() for name, p in model.named_parameters()}
    if "unembed.W_U" not in weights:
        weights["unembed.W_U"] = model.W_U.detach()
    return weights


@dataclass
class ParameterDistances:
    """Per-parameter distances between two models of equal shapes.

    rows: one per parameter name: shape, norm_a, norm_b (Frobenius), diff_norm = ||A - B||,
    relative = ||A - B|| / (||A|| + ||B||) in [0, 1] (0: equal, 1: B = -cA), cosine of the
    flattened tensors. groups: the same per module (the name without its last part: embed,
    pos_embed, blocks.0.attn, blocks.0.mlp, blocks.0.ln1, ..., unembed), all its parameters
    together. total: all rows together. comparable is False (rows empty) when the names or
    shapes differ; ``reason`` says which.
    """

    rows: list[dict[str, Any]]
    total: dict[str, float] | None
    comparable: bool
    reason: str | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _distance(a: Tensor, b: Tensor) -> dict[str, float]:
    a, b = a.double().flatten(), b.double().flatten()
    na, nb, nd = float(a.norm()), float(b.norm()), float((a - b).norm())
    denom = na + nb
    cos = float(a @ b) / (na * nb) if na > 0 and nb > 0 else math.nan
    return {
        "norm_a": na,
        "norm_b": nb,
        "diff_norm": nd,
        "relative": nd / denom if denom > 0 else 0.0,
        "cosine": cos,
    }


def shape_mismatch(model_a: MarkovTransformer, model_b: MarkovTransformer) -> str | None:
    """Why parameter distances are undefined for this pair (None when names and shapes agree)."""
    wa, wb = named_weights(model_a), named_weights(model_b)
    only_a, only_b = sorted(set(wa) - set(wb)), sorted(set(wb) - set(wa))
    wrong = [n for n in wa if n in wb and wa[n].shape != wb[n].shape]
    if not (only_a or only_b or wrong):
        return None
    parts = []
    if only_a:
        parts.append(f"only in A: {', '.join(only_a)}")
    if only_b:
        parts.append(f"only in B: {', '.join(only_b)}")
    if wrong:
        parts.append(
            "different shapes: "
            + ", ".join(f"{n} {list(wa[n].shape)} vs {list(wb[n].shape)}" for n in wrong)
        )
    return "parameter distances need equal parameter names and shapes; " + "; ".join(parts)


def parameter_distances(
    model_a: MarkovTransformer, model_b: MarkovTransformer, strict: bool = False
) -> ParameterDistances:
    """Per-parameter distances (``ParameterDistances``). Models of different shapes give
    comparable=False with the reason, or a ValueError with strict=True."""
    reason = shape_mismatch(model_a, model_b)
    if reason is not None:
        if strict:
            raise ValueError(reason)
        return ParameterDistances(rows=[], total=None, comparable=False, reason=reason)
    wa, wb = named_weights(model_a), named_weights(model_b)
    rows = []
    for name in wa:
        a, b = wa[name], wb[name].to(wa[name].device)
        rows.append({"name": name, "shape": list(a.shape)} | _distance(a, b))

    def flat(names: list[str]) -> tuple[Tensor, Tensor]:
        a = torch.cat([wa[n].double().flatten() for n in names])
        return a, torch.cat([wb[n].double().flatten().to(a.device) for n in names])

    modules: dict[str, list[str]] = {}
    for name in wa:
        modules.setdefault(name.rsplit(".", 1)[0], []).append(name)
    groups = [
        {"group": g, "parameters": names} | _distance(*flat(names)) for g, names in modules.items()
    ]
    return ParameterDistances(
        rows=rows, total=_distance(*flat(list(wa))), comparable=True, groups=groups
    )


# ---------------------------------------------------------------------------------- CKA


def linear_cka(
    x: Float[Tensor, "*batch n d1"], y: Float[Tensor, "*batch n d2"]
) -> Float[Tensor, "*batch"]:
    """Linear CKA of representations of the same n inputs (module docstring), batched over
    leading dims; computed in float64 in feature space (cost n d1 d2). nan when either side
    is constant over the inputs."""
    if x.shape[-2] != y.shape[-2]:
        raise ValueError(
            f"CKA needs the same inputs on both sides: got {x.shape[-2]} and {y.shape[-2]} rows"
        )
    if x.shape[-2] < 2:
        raise ValueError(f"CKA needs at least 2 inputs, got {x.shape[-2]}")
    x = x.double() - x.double().mean(-2, keepdim=True)
    y = y.double() - y.double().mean(-2, keepdim=True)
    cross = (x.mT @ y).pow(2).sum((-2, -1))
    norm_x = (x.mT @ x).pow(2).sum((-2, -1)).sqrt()
    norm_y = (y.mT @ y).pow(2).sum((-2, -1)).sqrt()
    denom = norm_x * norm_y
    out = cross / denom
    return torch.where(denom > 0, out, torch.full_like(out, math.nan))


def _stack_padded(acts: list[Tensor]) -> Float[Tensor, "hooks n width"]:
    """Stack [n, d_i] representations into [hooks, n, max d], zero-padding the features (zero
    columns change neither centring nor any Frobenius norm, so CKA is unchanged)."""
    width = max(a.shape[-1] for a in acts)
    return torch.stack(
        [torch.nn.functional.pad(a.double(), (0, width - a.shape[-1])) for a in acts]
    )


@dataclass
class CKAResult:
    """Linear CKA between every hook point of A (rows) and of B (columns) on the same inputs.

    names: component names (``probes.activations``: embed, resid_pre.0, attn_out.0, ...,
    ln_final, and log_probs for the output log-probabilities).
    """

    names_a: list[str]
    names_b: list[str]
    matrix: Float[Tensor, "hooks_a hooks_b"]
    n_inputs: int

    def per_hook(self) -> dict[str, float]:
        """CKA at each hook point both models have (the diagonal of the matrix)."""
        return {
            n: float(self.matrix[i, self.names_b.index(n)])
            for i, n in enumerate(self.names_a)
            if n in self.names_b
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "names_a": self.names_a,
            "names_b": self.names_b,
            "matrix": [[_json_float(v) for v in row] for row in self.matrix.tolist()],
            "per_hook": {k: _json_float(v) for k, v in self.per_hook().items()},
            "n_inputs": self.n_inputs,
        }


def cka_matrix(
    acts_a: dict[str, Float[Tensor, "n d"]], acts_b: dict[str, Float[Tensor, "n d"]]
) -> CKAResult:
    """Linear CKA between every representation of ``acts_a`` and every one of ``acts_b``, all
    pairs at once: one [hooks_a * d, n] x [n, hooks_b * d] product (features zero-padded)."""
    if not acts_a or not acts_b:
        raise ValueError("cka_matrix needs at least one representation on each side")
    names_a, names_b = list(acts_a), list(acts_b)
    rows = {a.shape[0] for a in acts_a.values()} | {b.shape[0] for b in acts_b.values()}
    if len(rows) != 1:
        raise ValueError(f"every representation must cover the same inputs; got row counts {rows}")
    x = _stack_padded([acts_a[n] for n in names_a])  # [Ha, n, Da]
    y = _stack_padded([acts_b[n] for n in names_b])  # [Hb, n, Db]
    x = x - x.mean(-2, keepdim=True)
    y = y.to(x.device) - y.to(x.device).mean(-2, keepdim=True)
    ha, n, da = x.shape
    hb, _, db = y.shape
    cross = x.permute(0, 2, 1).reshape(ha * da, n) @ y.permute(1, 0, 2).reshape(n, hb * db)
    cross = cross.view(ha, da, hb, db).pow(2).sum((1, 3))  # [Ha, Hb]
    norm_x = (x.mT @ x).pow(2).sum((-2, -1)).sqrt()
    norm_y = (y.mT @ y).pow(2).sum((-2, -1)).sqrt()
    denom = norm_x[:, None] * norm_y[None, :]
    matrix = torch.where(denom > 0, cross / denom, torch.full_like(cross, math.nan))
    return CKAResult(names_a, names_b, matrix.float().cpu(), n)


def cka_components(model: MarkovTransformer) -> list[str]:
    """Default hook points for CKA: the ``default`` probe components (embed, per block
    resid_pre, attn_out, per-head results with several heads, resid_mid, mlp_out, then
    resid_post of the last block, ln_final) with pos_embed after embed when the model has one."""
    names = [c.name for c in resolve_components(model.cfg, ["default"])]
    if model.cfg.positional_embedding_type == "standard":
        names.insert(1, "pos_embed")
    return names


def representations(
    model: MarkovTransformer,
    tokens: Int[Tensor, "seq pos"],
    components: list[str] | None = None,
    batch_size: int = 64,
) -> dict[str, Float[Tensor, "n width"]]:
    """Activations of ``components`` (default ``cka_components``) over every position of
    ``tokens``, flattened to [seq * pos, width], plus "log_probs" (the output, nats)."""
    comps = resolve_components(model.cfg, components or cka_components(model))
    acts = cache_activations(model, tokens, comps, batch_size=batch_size)
    out = {name: a.reshape(-1, a.shape[-1]) for name, a in acts.acts.items()}
    out["log_probs"] = acts.log_probs.reshape(-1, acts.log_probs.shape[-1])
    return out


# ---------------------------------------------------------------------- shared inputs


@dataclass
class ComparisonConfig:
    """What ``compare`` computes and on which inputs (JSON-able).

    n_seqs sequences of seq_len tokens (None: min(128, both models' n_ctx)) drawn from the
    chain of A (``input_chain`` "a") or B ("b") with ``seed`` (the trainer's evaluation
    stream, ``training.trainer.EvalSet``). attention_positions: positions shown in the
    attention heatmaps (first sequence). cka_rows: at most this many (sequence, position)
    rows enter CKA (a seeded subset). probes: probe tables (``probe_targets``,
    ``probe_components``: None = ["x_n", "next_prob"] (+ "icl_bigram" in context) on the
    "resid" group; probe_seqs sequences, probe_positions positions each). patching: the
    activation-patching tables (``interp.patching``).
    """

    n_seqs: int = 32
    seq_len: int | None = None
    seed: int = 0
    input_chain: str = "a"
    attention_positions: int = 24
    cka_rows: int = 4096
    probes: bool = True
    probe_targets: list[str] | None = None
    probe_components: list[str] | None = None
    probe_seqs: int = 64
    probe_positions: int = 16
    patching: bool = True

    def __post_init__(self) -> None:
        for name in ("n_seqs", "attention_positions", "cka_rows", "probe_seqs", "probe_positions"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.seq_len is not None and (
            isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 2
        ):
            raise ValueError(f"seq_len must be an integer >= 2 or None, got {self.seq_len!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.input_chain not in ("a", "b"):
            raise ValueError(f"input_chain must be 'a' or 'b', got {self.input_chain!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ComparisonConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown comparison config keys {unknown}; allowed: {sorted(names)}")
        return cls(**d)


def shared_inputs(
    chain: MarkovChain, n_seqs: int, seq_len: int, seed: int, device: torch.device
) -> EvalSet:
    """Held-out inputs with their true next-token laws: one batch of the trainer's evaluation
    stream for ``seed`` (``EvalSet``), so metrics match ``training.trainer.evaluate``."""
    cfg = TrainConfig(batch=n_seqs, seq_len=seq_len, eval_batches=1)
    return EvalSet(chain, cfg, seed, device)


def behaviour(
    model: MarkovTransformer, inputs: EvalSet, references: dict[str, Any]
) -> dict[str, Any]:
    """Metrics of ``model`` on ``inputs`` (``training.trainer.evaluate``: eval_loss, kl,
    rel_excess, rel_unigram, dependence, accuracy, p_hat/q_hat ...; nats) plus the verdict."""
    out = evaluate(model, inputs, references, contextlib.nullcontext)
    gap = references["unigram_loss"] - references["optimal_loss"]
    out["verdict"] = verdict(
        out.get("rel_excess"), out.get("rel_unigram"), out.get("dependence"), gap=gap, kl=out["kl"]
    )
    return out


@torch.no_grad()
def predicted_probs(
    model: MarkovTransformer, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_m1 S"]:
    """The model's next-token law at positions 0..N-2 (float64)."""
    return model(tokens)[:, :-1].double().softmax(-1)


@dataclass
class TransitionTable:
    """Mean predicted next-token law given each context of the last k tokens, against the
    truth (fixed chains). contexts: labels (the k tokens, oldest first); true, predicted[label]:
    [M, S]; weights: context frequencies in the inputs [M]."""

    contexts: list[str]
    true: Float[Tensor, "M S"]
    predicted: dict[str, Float[Tensor, "M S"]]
    weights: Float[Tensor, " M"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "contexts": self.contexts,
            "true": self.true.tolist(),
            "predicted": {k: v.tolist() for k, v in self.predicted.items()},
            "weights": self.weights.tolist(),
        }


def transition_table(
    inputs: EvalSet, probs: dict[str, Float[Tensor, "batch pos_m1 S"]]
) -> TransitionTable | None:
    """Context-mean predictions of each model (``probs`` from ``predicted_probs`` on
    ``inputs.tokens[0]``) and of the truth, via ``EvalSet.group_means``. None for in-context
    chains (no fixed kernel) or more than MAX_TABLE_CONTEXTS contexts."""
    if inputs.in_context or inputs.M > MAX_TABLE_CONTEXTS:
        return None
    true, weights = inputs.group_means(inputs.true)
    S, k = inputs.S, inputs.k
    digits = torch.cartesian_prod(*[torch.arange(S)] * k) if k > 1 else torch.arange(S)[:, None]
    contexts = ["".join(str(int(t)) for t in row) for row in digits.reshape(-1, k)]
    predicted = {label: inputs.group_means([p])[0].cpu() for label, p in probs.items()}
    return TransitionTable(contexts, true.cpu(), predicted, weights.cpu())


def calibration(
    true: Float[Tensor, "... S"], predicted: Float[Tensor, "... S"], bins: int = 20
) -> dict[str, list[float]]:
    """Predicted against true probabilities of every (input, position, state), binned by the
    true probability: bin centres, mean true, mean predicted, counts (empty bins dropped)."""
    t = true.detach().double().flatten().cpu()
    p = predicted.detach().double().flatten().cpu()
    idx = (t * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(idx, minlength=bins).double()
    sum_t = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, t)
    sum_p = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, p)
    keep = counts > 0
    return {
        "true": (sum_t[keep] / counts[keep]).tolist(),
        "predicted": (sum_p[keep] / counts[keep]).tolist(),
        "count": counts[keep].long().tolist(),
    }


# --------------------------------------------------------------------------- comparison


@dataclass
class Comparison:
    """Everything ``compare`` measured (module docstring); ``figures()``, ``markdown()`` and
    ``save()`` present it."""

    a: Subject
    b: Subject
    config: ComparisonConfig
    tokens: Int[Tensor, "seq pos"]
    input_chain: MarkovChain
    references: dict[str, Any]
    behaviour: dict[str, dict[str, Any]]
    transitions: TransitionTable | None
    calibration: dict[str, dict[str, list[float]]]
    patterns: dict[str, Float[Tensor, "layer head query key"]]
    attention: dict[str, dict[str, Any]]
    heads: dict[str, HeadScores]
    distances: ParameterDistances
    cka: CKAResult
    probe_rows: list[dict[str, Any]] = field(default_factory=list)
    patching: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> tuple[str, str]:
        return self.a.label, self.b.label

    def config_differences(self) -> list[tuple[str, Any, Any]]:
        """(field, value in A, value in B) for every model/chain/train/seed field that differs."""
        da, db = self.a.describe(), self.b.describe()
        out = []
        for section in ("model", "chain", "train"):
            sa, sb = da[section] or {}, db[section] or {}
            for key in sorted(set(sa) | set(sb)):
                if sa.get(key) != sb.get(key):
                    out.append((f"{section}.{key}", sa.get(key), sb.get(key)))
        for key in ("seed", "step"):
            if da[key] != db[key]:
                out.append((key, da[key], db[key]))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary of every result (tensors as nested lists)."""
        return {
            "subjects": {"a": self.a.describe(), "b": self.b.describe()},
            "config": self.config.to_dict(),
            "input_chain": self.input_chain.to_dict(),
            "inputs": {"n_seqs": self.tokens.shape[0], "seq_len": self.tokens.shape[1]},
            "references": self.references,
            "config_differences": [list(d) for d in self.config_differences()],
            "behaviour": self.behaviour,
            "transitions": None if self.transitions is None else self.transitions.to_dict(),
            "calibration": self.calibration,
            "attention": self.attention,
            "heads": {k: v.to_dict() for k, v in self.heads.items()},
            "distances": self.distances.to_dict(),
            "cka": self.cka.to_dict(),
            "probes": self.probe_rows,
            "patching": self.patching,
            "notes": self.notes,
        }

    def figures(self) -> dict:
        from interp.compare_plots import comparison_figures

        return comparison_figures(self)

    def markdown(self, figure_names: list[str] | None = None) -> str:
        from interp.compare_plots import comparison_markdown

        return comparison_markdown(self, figure_names)

    def save(self, out_dir: str | os.PathLike, force: bool = False) -> dict[str, Path]:
        """Write the figures (PNG), summary.md and comparison.json into ``out_dir``; an
        existing file is only replaced with force=True (FileExistsError otherwise)."""
        figures = self.figures()
        files = {f"{name}.png": fig for name, fig in figures.items()}
        texts = {
            "summary.md": self.markdown(list(figures)),
            "comparison.json": dumps(self.to_dict()),
        }
        return write_outputs(out_dir, files, texts, force)


def _json_float(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return _json_float(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Tensor):
        return _clean(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any) -> str:
    """JSON text with non-finite floats written as null."""
    return json.dumps(_clean(obj), indent=2) + "\n"


def write_outputs(
    out_dir: str | os.PathLike,
    figures: dict[str, Any],
    texts: dict[str, str],
    force: bool = False,
    dpi: int = 110,
) -> dict[str, Path]:
    """Save Figures (by file name) and texts into ``out_dir``. Refuses (FileExistsError,
    listing them) when any of those files exists, unless force; never touches other files."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    names = list(figures) + list(texts)
    clash = sorted(n for n in names if (out / n).exists())
    if clash and not force:
        raise FileExistsError(
            f"{out} already holds {', '.join(clash)}; pass --force (force=True) to replace them "
            "or choose another directory"
        )
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=dpi, bbox_inches="tight")
        written[name] = out / name
    for name, text in texts.items():
        (out / name).write_text(text, encoding="utf-8")
        written[name] = out / name
    return written


def _input_chain(a: Subject, b: Subject, which: str, notes: list[str]) -> MarkovChain:
    first, second = (a, b) if which == "a" else (b, a)
    chain = first.chain or second.chain
    if chain is None:
        raise ValueError(
            "neither model has a chain to draw inputs from: pass chain=... for a bare model"
        )
    if first.chain is None:
        notes.append(f"{first.label} has no chain; inputs come from {second.label}'s chain")
    if a.chain is not None and b.chain is not None and a.chain.to_dict() != b.chain.to_dict():
        notes.append(
            f"the two models were trained on different chains; both are evaluated on "
            f"{'A' if chain is a.chain else 'B'}'s chain ({chain.to_dict()['family']})"
        )
    return chain


def compare(
    a: SourceLike | Subject,
    b: SourceLike | Subject,
    config: ComparisonConfig | None = None,
    *,
    device: str | torch.device | None = None,
    chain: MarkovChain | None = None,
    labels: tuple[str, str] | None = None,
    progress: bool = False,
) -> Comparison:
    """Compare two models (run dirs, checkpoint dirs, Runs, models or Subjects) on the same
    inputs: behaviour, transitions, attention, heads, probes, patching, parameter distances
    and CKA (module docstring). ``chain`` supplies the chain for bare models; ``labels``
    names the two sides (default: run names, name@step for checkpoints)."""
    from training.progress import Stages

    config = config or ComparisonConfig()
    device = torch.device(device) if device is not None else default_device()
    with Stages(
        "markov-lens compare", 3 + config.probes + config.patching, enabled=progress
    ) as stage:
        la, lb = labels if labels is not None else (None, None)
        sa = a if isinstance(a, Subject) else load_subject(a, chain=chain, device=device, label=la)
        sb = b if isinstance(b, Subject) else load_subject(b, chain=chain, device=device, label=lb)
        if sa.label == sb.label:
            sa.label, sb.label = f"A: {sa.label}", f"B: {sb.label}"
        sa.model.to(device).eval()
        sb.model.to(device).eval()
        notes: list[str] = []
        ca, cb = sa.model.cfg, sb.model.cfg
        if ca.d_vocab != cb.d_vocab:
            raise ValueError(
                f"the models read different vocabularies (d_vocab {ca.d_vocab} vs {cb.d_vocab}); "
                "they cannot be run on the same inputs"
            )
        in_chain = _input_chain(sa, sb, config.input_chain, notes)
        if in_chain.n_states != ca.d_vocab:
            raise ValueError(
                f"the input chain has {in_chain.n_states} states but the models read {ca.d_vocab}"
            )
        seq_len = config.seq_len or min(128, ca.n_ctx, cb.n_ctx)
        if seq_len > min(ca.n_ctx, cb.n_ctx):
            raise ValueError(
                f"seq_len={seq_len} is longer than a model's context (n_ctx {ca.n_ctx} / {cb.n_ctx})"
            )
        inputs = shared_inputs(in_chain, config.n_seqs, seq_len, config.seed, device)
        tokens = inputs.tokens[0]
        refs = run_references(in_chain, TrainConfig(seq_len=seq_len))
        subjects = {sa.label: sa, sb.label: sb}

        stage("behaviour, transitions, attention and heads on shared inputs")
        beh, probs, calib, patterns, attn, heads = {}, {}, {}, {}, {}, {}
        n_attn = min(config.attention_positions, seq_len)
        for label, s in subjects.items():
            beh[label] = behaviour(s.model, inputs, refs)
            probs[label] = predicted_probs(s.model, tokens)
            calib[label] = calibration(inputs.true[0], probs[label])
            full = attention_patterns(s.model, tokens)  # [L, B, H, q, k]
            heads[label] = head_scores(full, tokens, in_chain.n_states, s.model.cfg.windows())
            attn[label] = attention_summary(full)
            patterns[label] = attention_patterns(s.model, tokens[:1, :n_attn])[:, 0].cpu()
        table = transition_table(inputs, probs)

        stage("parameter distances")
        distances = parameter_distances(sa.model, sb.model)
        if not distances.comparable:
            notes.append(distances.reason)
        reps = {label: representations(s.model, tokens) for label, s in subjects.items()}
        n_rows = tokens.numel()
        if n_rows > config.cka_rows:
            gen = torch.Generator().manual_seed(config.seed)
            keep = torch.randperm(n_rows, generator=gen)[: config.cka_rows].sort().values
            reps = {lab: {n: r[keep] for n, r in rr.items()} for lab, rr in reps.items()}
        stage("CKA")
        cka = cka_matrix(reps[sa.label], reps[sb.label])

        result = Comparison(
            a=sa,
            b=sb,
            config=config,
            tokens=tokens.cpu(),
            input_chain=in_chain,
            references=refs,
            behaviour=beh,
            transitions=table,
            calibration=calib,
            patterns=patterns,
            attention=attn,
            heads=heads,
            distances=distances,
            cka=cka,
            notes=notes,
        )
        if config.probes:
            stage("probes")
            result.probe_rows = compare_probes(sa, sb, in_chain, config, seq_len)
        if config.patching:
            stage("patching")
            result.patching = compare_patching(sa, sb, in_chain, config, seq_len)
    return result


def compare_probes(
    a: Subject, b: Subject, chain: MarkovChain, config: ComparisonConfig, seq_len: int
) -> list[dict[str, Any]]:
    """Probe tables of both models on the same sequences, split and controls
    (``probes.sweeps.probe_model``), rows tagged run = the subject's label."""
    from probes.sweeps import ProbeConfig, probe_model

    targets = config.probe_targets or (
        ["x_n", "next_prob"] + (["icl_bigram"] if isinstance(chain, InContextChain) else [])
    )
    pc = ProbeConfig(
        targets=targets,
        components=config.probe_components or ["resid"],
        n_seqs=config.probe_seqs,
        seq_len=seq_len,
        n_positions=min(config.probe_positions, seq_len),
        cv_folds=3,
        seed=config.seed,
        device=str(a.model.W_E.device),
    )
    rows = []
    for s in (a, b):
        rows += probe_model(s.model, chain, pc, run=s.label, step=s.step)
    return rows


PATCH_ACTS = ("resid_pre", "attn_out", "mlp_out")
MAX_PATCH_POSITIONS = 32


def patching_data(chain: MarkovChain, n_seqs: int, seq_len: int, seed: int, corruption=None):
    """Clean/corrupted batches (``interp.corruptions.make_patching_data``): "flip" of the last
    token for fixed chains, "kernel_swap" for in-context chains by default; seq_len capped at
    MAX_PATCH_POSITIONS (every position is patched)."""
    from interp.corruptions import make_patching_data

    corruption = corruption or ("kernel_swap" if isinstance(chain, InContextChain) else "flip")
    gen = torch.Generator().manual_seed(seed)
    return make_patching_data(chain, corruption, n_seqs, min(seq_len, MAX_PATCH_POSITIONS), gen)


@torch.no_grad()
def patching_tables(model: MarkovTransformer, data) -> dict[str, Any]:
    """Denoising patching of ``model`` on ``data`` (``interp.patching.run_patching``, logit
    difference answer - foil at the last position): clean activations patched one (layer,
    position) at a time into the corrupted run, normalised (M - M_corrupt) / (M_clean -
    M_corrupt), 1 = the clean prediction restored. Also the mechanistic verdict of the
    model's reaction against a perfect predictor's (``interp.explain.mechanistic_verdict``).

    Returns {"title", "corruption", "clean", "corrupt", "true_clean", "true_corrupt",
    "verdict", "ratio", "tables": {act: [layer][pos]}, "summary": {act: "x at L.. pos .."}}.
    """
    from interp.explain import mechanistic_verdict
    from interp.patching import run_patching

    acts = [a for a in PATCH_ACTS if not (model.cfg.attn_only and a == "mlp_out")]
    res = run_patching(model, data, acts, "denoise", "logit_diff")
    mech, ratio = mechanistic_verdict(res.effect, res.true_effect)
    tables, summary = {}, {}
    for act in acts:
        norm = res.normalised(act)
        tables[act] = norm.tolist()
        if torch.isfinite(norm).any():
            layer, pos = divmod(int(norm.nan_to_num(-math.inf).flatten().argmax()), norm.shape[1])
            summary[act] = f"{float(norm[layer, pos]):.3f} at L{layer} pos {pos}"
        else:
            summary[act] = "undefined (the model does not react to the corruption)"
    n_seqs, seq_len = data.clean.shape
    return {
        "title": (
            f"Denoising patching: clean activations into the '{data.corruption}'-corrupted run, "
            f"one (layer, position) at a time; {n_seqs} sequences of {seq_len} tokens; "
            "normalised logit difference (1 = clean behaviour restored, 0 = corrupted)."
        ),
        "corruption": data.corruption,
        "clean": res.clean,
        "corrupt": res.corrupt,
        "true_clean": res.true_clean,
        "true_corrupt": res.true_corrupt,
        "verdict": mech,
        "ratio": ratio,
        "tables": tables,
        "summary": summary,
    }


def compare_patching(
    a: Subject,
    b: Subject,
    chain: MarkovChain,
    config: ComparisonConfig,
    seq_len: int,
) -> dict[str, Any]:
    """``patching_tables`` of both models on the very same clean/corrupted batches."""
    data = patching_data(chain, config.n_seqs, seq_len, config.seed)
    per = {s.label: patching_tables(s.model, data) for s in (a, b)}
    first = per[a.label]
    out = {"title": first["title"], "corruption": first["corruption"]}
    for key in ("tables", "summary", "clean", "corrupt", "verdict", "ratio"):
        out[key] = {lab: r[key] for lab, r in per.items()}
    return out
