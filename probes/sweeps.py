"""Sweeps of probes: component x target tables for one model, over a run's checkpoints, and
across runs (depth, attention window, tying).

Every table is a list of rows (dicts with the keys in ``COLUMNS``), one per (run, step,
component, target), written as CSV by ``write_csv``:

    score           held-out R^2 (continuous targets, against the training mean) or accuracy
    chance          discrete: accuracy of the training-majority class; continuous: 0
    control_score   accuracy on the control task (discrete; controls.py)
    control_chance  the control task's own majority-class accuracy (with few types the
                    control labels' realised frequencies differ from the target's)
    above_chance    discrete: whether score exceeds chance by more than CHANCE_Z binomial
                    standard errors sqrt(chance (1 - chance) / n_test); continuous: R^2 > 0
                    by as much (score_std as the error)
    selectivity     score - control_score, only where above_chance (at chance the control
                    task, a random label per (position, x_n), can be the easier one and the
                    difference is negative without meaning: x_{n-1} gave -0.32); else nan
    shuffled_score  R^2 with sequences' targets shuffled (continuous; controls.py)
    random_score    the same probe on a randomly initialised model of the same config
    penalty         ridge alpha or logistic l2 chosen; loss: test MSE or cross-entropy (nats)

One seed fixes everything (``ProbeConfig.seed``): the held-out sequences (seed), the probed
positions (seed + 1), the train/test split by sequence (seed + 2), the control labels (seed +
3), the shuffle (seed + 4), the inner CV folds and the random model (seed). Within a sweep all
components, checkpoints and the random model see the same sequences, split and controls, so
their scores are comparable.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from probes.activations import (
    ActivationSet,
    cache_activations,
    held_out_tokens,
    resolve_components,
    sample_positions,
)
from probes.controls import (
    INPUT_TYPES,
    control_target,
    input_types,
    random_model,
    shuffled_target,
)
from probes.fitting import (
    DEFAULT_ALPHAS,
    DEFAULT_L2,
    Split,
    kfold_by_sequence,
    score_probe,
    split_by_sequence,
)
from probes.targets import (
    MODEL_TARGETS,
    Target,
    check_target_name,
    compute_target,
    default_targets,
)
from training.chains import MarkovChain
from training.devices import resolve_device
from training.jsonconfig import JsonConfig
from training.model import MarkovTransformer

RUN_COLUMNS = ["run", "step", "n_layers", "tied", "window"]
COLUMNS = RUN_COLUMNS + [
    "component",
    "target",
    "kind",
    "width",
    "score",
    "score_std",
    "train_score",
    "chance",
    "control_score",
    "control_chance",
    "above_chance",
    "selectivity",
    "shuffled_score",
    "random_score",
    "loss",
    "penalty",
    "n_train",
    "n_test",
    "note",
]
NAN = math.nan
CHANCE_Z = 2.0  # standard errors above chance a score needs for its selectivity to be reported


def above_chance(score: float, chance: float, n_test: int, score_std: float = NAN) -> bool:
    """Whether a held-out score beats chance by more than CHANCE_Z standard errors (accuracy:
    the binomial error at chance over n_test; R^2, chance 0: score_std when finite)."""
    if not (math.isfinite(score) and math.isfinite(chance)) or n_test < 1:
        return False
    se = math.sqrt(chance * (1 - chance) / n_test) if 0 < chance < 1 else 0.0
    if math.isfinite(score_std):
        se = max(se, score_std)
    return score > chance + CHANCE_Z * se


@dataclass
class ProbeConfig(JsonConfig):
    """What to probe and how (JSON-able).

    targets / components: names (targets.py, activations.py; components also take groups);
    None = the defaults for the chain / the ``default`` component group.
    n_seqs held-out sequences of seq_len tokens (None: the run's training length, or the
    model's n_ctx outside a run: positions never trained on are off-distribution); n_positions
    positions probed per sequence, shared by all sequences (None: all).
    test_fraction of sequences held out, or ``folds``-fold CV by sequence when folds is set;
    cv_folds: inner folds choosing the ridge alpha (and logistic l2 when l2s lists several).
    control: input type of the control tasks (controls.INPUT_TYPES) or None for none.
    """

    config_name = "probe config"

    targets: list[str] | None = None
    components: list[str] | None = None
    n_seqs: int = 128
    seq_len: int | None = None
    n_positions: int | None = 64
    batch_size: int = 32
    test_fraction: float = 0.25
    folds: int | None = None
    cv_folds: int = 5
    alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))
    l2s: list[float] = field(default_factory=lambda: [DEFAULT_L2])
    control: str | None = "pos_token"
    shuffle_baseline: bool = True
    random_baseline: bool = True
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("n_seqs", "batch_size", "cv_folds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("seq_len", "n_positions", "folds"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if self.folds is not None and not 2 <= self.folds <= self.n_seqs:
            raise ValueError(f"folds must be in 2..n_seqs={self.n_seqs}, got {self.folds}")
        if self.cv_folds < 2:
            raise ValueError(f"cv_folds must be >= 2, got {self.cv_folds}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.control is not None and self.control not in INPUT_TYPES:
            raise ValueError(
                f"control must be one of {list(INPUT_TYPES)} or None, got {self.control!r}"
            )
        if not self.alphas or any(a < 0 for a in self.alphas):
            raise ValueError(
                f"alphas must be a non-empty list of penalties >= 0, got {self.alphas}"
            )
        if not self.l2s or any(a < 0 for a in self.l2s):
            raise ValueError(f"l2s must be a non-empty list of penalties >= 0, got {self.l2s}")
        if self.targets is not None:
            if not self.targets:
                raise ValueError("targets must list at least one target (or be None)")
            for t in self.targets:
                check_target_name(t)
        if self.components is not None and not self.components:
            raise ValueError("components must list at least one component (or be None)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)


@dataclass
class ProbeData:
    """Held-out sequences, probed positions, sequence splits and control types of one sweep."""

    tokens: Tensor
    kernels: Tensor | None
    positions: Tensor
    splits: list[Split]
    types: Tensor | None


def make_probe_data(chain: MarkovChain, n_ctx: int, config: ProbeConfig) -> ProbeData:
    """Sample the held-out sequences and fix positions, splits and control types (seeded)."""
    seq_len = config.seq_len or n_ctx
    if seq_len > n_ctx:
        raise ValueError(f"seq_len={seq_len} is longer than the model's n_ctx={n_ctx}")
    tokens, kernels = held_out_tokens(chain, config.n_seqs, seq_len, config.seed)
    positions = sample_positions(
        seq_len, config.n_positions, torch.Generator().manual_seed(config.seed + 1)
    )
    gen = torch.Generator().manual_seed(config.seed + 2)
    if config.folds:
        splits = kfold_by_sequence(config.n_seqs, config.folds, gen)
    else:
        splits = [split_by_sequence(config.n_seqs, config.test_fraction, gen)]
    types = None
    if config.control is not None:
        types = input_types(tokens, positions, config.control, chain.n_states)
    return ProbeData(tokens, kernels, positions, splits, types)


def compute_targets(
    chain: MarkovChain, data: ProbeData, acts: ActivationSet, names: list[str] | None
) -> dict[str, Target]:
    names = names or default_targets(chain)
    return {
        n: compute_target(
            n, data.tokens, data.positions, chain, kernels=data.kernels, log_probs=acts.log_probs
        )
        for n in names
    }


def _fit(X: Tensor, target: Target, data: ProbeData, config: ProbeConfig, device):
    return score_probe(
        X,
        target,
        data.splits,
        alphas=config.alphas,
        l2s=config.l2s,
        cv_folds=config.cv_folds,
        seed=config.seed,
        device=device,
    )


def probe_activations(
    acts: ActivationSet,
    chain: MarkovChain,
    data: ProbeData,
    config: ProbeConfig,
    *,
    random_acts: ActivationSet | None = None,
    random_memo: dict | None = None,
) -> list[dict[str, Any]]:
    """One row per (component, target) for cached activations (see the module docstring).

    random_memo: cache of random-model scores of targets that do not depend on the probed
    model (shared across checkpoints of one run)."""
    device = config.resolved_device()
    targets = compute_targets(chain, data, acts, config.targets)
    rows = []
    for tname, target in targets.items():
        control = shuffled = None
        if target.kind == "discrete" and data.types is not None:
            gen = torch.Generator().manual_seed(config.seed + 3)
            control = control_target(target, data.types, gen)
        if target.kind == "continuous" and config.shuffle_baseline:
            shuffled = shuffled_target(target, torch.Generator().manual_seed(config.seed + 4))
        for comp, X in acts.acts.items():
            row = {k: NAN for k in COLUMNS[len(RUN_COLUMNS) :]}
            row.update(component=comp, target=tname, kind=target.kind, width=X.shape[-1], note="")
            if target.constant:
                row["note"] = "constant target: nothing to decode"
                rows.append(row)
                continue
            s = _fit(X, target, data, config, device)
            row.update(
                score=s.score,
                score_std=s.score_std,
                train_score=s.train_score,
                chance=s.chance,
                loss=s.loss,
                penalty=s.penalty,
                n_train=s.n_train,
                n_test=s.n_test,
            )
            row["above_chance"] = above_chance(s.score, s.chance, s.n_test, s.score_std)
            if control is not None:
                c = _fit(X, control, data, config, device)
                row.update(
                    control_score=c.score,
                    control_chance=c.chance,
                    selectivity=s.score - c.score if row["above_chance"] else NAN,
                )
                if not row["above_chance"]:
                    row["note"] = "at chance: no selectivity"
            if shuffled is not None:
                row["shuffled_score"] = _fit(X, shuffled, data, config, device).score
            if random_acts is not None:
                key = (comp, tname)
                if random_memo is not None and key in random_memo and tname not in MODEL_TARGETS:
                    row["random_score"] = random_memo[key]
                else:
                    r = _fit(random_acts.acts[comp], target, data, config, device).score
                    row["random_score"] = r
                    if random_memo is not None:
                        random_memo[key] = r
            rows.append(row)
    return rows


def _cache(model: MarkovTransformer, data: ProbeData, config: ProbeConfig) -> ActivationSet:
    components = resolve_components(model.cfg, config.components)
    return cache_activations(
        model,
        data.tokens,
        components,
        positions=data.positions,
        batch_size=config.batch_size,
        kernels=data.kernels,
    )


def _run_columns(model: MarkovTransformer, run: str = "", step: int | None = None) -> dict:
    windows = model.cfg.windows()
    window = windows[0] if len(set(windows)) == 1 else "/".join(str(w) for w in windows)
    return {
        "run": run,
        "step": "" if step is None else step,
        "n_layers": model.cfg.n_layers,
        "tied": model.cfg.tie_embeddings,
        "window": "" if window is None else window,
    }


def probe_model(
    model: MarkovTransformer,
    chain: MarkovChain,
    config: ProbeConfig | None = None,
    *,
    run: str = "",
    step: int | None = None,
) -> list[dict[str, Any]]:
    """Component x target table of one model on held-out sequences of ``chain``."""
    return probe_steps([(step, model)], chain, config, run=run)


def probe_steps(
    models: Iterable[tuple[int | None, MarkovTransformer | Callable[[], MarkovTransformer]]],
    chain: MarkovChain,
    config: ProbeConfig | None = None,
    *,
    run: str = "",
) -> list[dict[str, Any]]:
    """Tables of several models of one architecture (a run's checkpoints), on the same
    sequences, split, controls and random-model baseline. ``models`` yields (step, model) or
    (step, zero-argument loader), so checkpoints are loaded one at a time."""
    config = config or ProbeConfig()
    rows: list[dict[str, Any]] = []
    data = random_acts = None
    memo: dict = {}
    for step, model in models:
        model = model() if callable(model) and not isinstance(model, torch.nn.Module) else model
        if config.device is not None:
            model = model.to(config.device)
        if data is None:
            data = make_probe_data(chain, model.cfg.n_ctx, config)
            if config.random_baseline:
                rnd = random_model(model.cfg, config.seed, model.W_E.device)
                random_acts = _cache(rnd, data, config)
        acts = _cache(model, data, config)
        fixed = _run_columns(model, run, step)
        for row in probe_activations(
            acts, chain, data, config, random_acts=random_acts, random_memo=memo
        ):
            rows.append(fixed | row)
    if data is None:
        raise ValueError("no models to probe")
    return rows


def select_steps(available: list[int], spec: str | list[int] = "last") -> list[int]:
    """Checkpoint steps from 'all', 'last' or a list / comma-separated string of steps."""
    if not available:
        raise FileNotFoundError("the run has no checkpoints")
    if spec == "all":
        return list(available)
    if spec == "last":
        return [available[-1]]
    if isinstance(spec, str):
        try:
            spec = [int(s) for s in spec.split(",") if s.strip()]
        except ValueError:
            raise ValueError(
                f"checkpoints must be 'all', 'last' or comma-separated steps, got {spec!r}"
            ) from None
    missing = [s for s in spec if s not in available]
    if missing or not spec:
        raise ValueError(f"no checkpoint at steps {missing or spec}; the run has {available}")
    return sorted(set(spec))


def probe_run(
    run_dir: str | os.PathLike,
    config: ProbeConfig | None = None,
    steps: str | list[int] = "last",
) -> list[dict[str, Any]]:
    """Probe a run directory's checkpoints (``select_steps``); rows carry the run's name."""
    from training.runs import display_name, load_run

    config = config or ProbeConfig()
    run = load_run(run_dir)
    if config.seq_len is None:  # probe the positions the run was trained on
        seq_len = min(run.train_config.seq_len, run.model_config.n_ctx)
        config = dataclasses.replace(config, seq_len=seq_len)
    chosen = select_steps(run.checkpoint_steps(), steps)
    device = config.resolved_device()
    models = [(s, (lambda s=s: run.model(s, device=device))) for s in chosen]
    return probe_steps(models, run.chain, config, run=display_name(Path(run_dir).name))


def probe_runs(
    run_dirs: list[str | os.PathLike],
    config: ProbeConfig | None = None,
    steps: str | list[int] = "last",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """The same table for several runs (each on its own chain), rows tagged by run name;
    progress: a line (or a bar) per run on stderr."""
    names = [Path(d).name for d in run_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"run directory names must be distinct to label the rows, got {names}")
    from training.progress import Stages

    with Stages("markov-lens probe", len(run_dirs), enabled=progress) as stage:
        rows = []
        for d in run_dirs:
            stage(f"run {Path(d).name}")
            rows += probe_run(d, config, steps)
    return rows


# ------------------------------------------------------------------------------ tables


def write_csv(rows: list[dict[str, Any]], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Rows as CSV with the columns of ``COLUMNS`` (FileExistsError unless overwrite)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass --force / overwrite=True)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k, "")) for k in COLUMNS})
    return path


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return v


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a probe CSV, numbers parsed (int, float; nan kept as float nan)."""
    out = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for k, v in raw.items():
                row[k] = _parse(v)
            out.append(row)
    return out


def _parse(v: str) -> Any:
    if v in ("True", "False"):
        return v == "True"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def pivot(
    rows: list[dict[str, Any]],
    value: str = "score",
    index: str = "component",
    columns: str = "target",
) -> tuple[list, list, list[list[float]]]:
    """(index labels, column labels, matrix) of ``value``; labels in first-seen order; nan where
    a cell is missing. Several rows per cell: the last wins (filter rows first)."""
    idx, cols, cells = [], [], {}
    for r in rows:
        i, c = r[index], r[columns]
        if i not in idx:
            idx.append(i)
        if c not in cols:
            cols.append(c)
        v = r.get(value, NAN)
        cells[(i, c)] = float(v) if isinstance(v, (int, float)) else NAN
    return idx, cols, [[cells.get((i, c), NAN) for c in cols] for i in idx]


def first_decodable_step(
    rows: list[dict[str, Any]], target: str, threshold: float = 0.9, value: str = "score"
) -> dict[str, int | None]:
    """Per component: the first checkpoint step at which ``value`` of ``target`` reaches
    ``threshold`` (None if never): when the target becomes linearly decodable, and where."""
    out: dict[str, int | None] = {}
    for r in sorted((r for r in rows if r["target"] == target), key=lambda r: r["step"]):
        comp = r["component"]
        out.setdefault(comp, None)
        v = r.get(value, NAN)
        if out[comp] is None and isinstance(v, (int, float)) and v >= threshold:
            out[comp] = r["step"]
    return out
