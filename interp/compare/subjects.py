"""The two sides of a comparison: ``Subject`` and ``load_subject``.

A run directory means its last checkpoint (or ``step``) plus its metrics; a checkpoint
directory means that checkpoint (plus its run's metrics up to its step when it lies inside a
run directory); a ``Run`` or a ``MarkovTransformer`` (with ``chain=``) also work.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.chains import MarkovChain, chain_from_dict
from training.checkpoints import MANIFEST, model_from_checkpoint, read_checkpoint
from training.devices import resolve_device
from training.model import MarkovTransformer
from training.recipe import TrainConfig
from training.runs import CONFIG, Run, display_name, load_run
from training.trainer import run_references

SourceLike = str | os.PathLike | Run | MarkovTransformer


def default_device() -> torch.device:
    """CUDA when available, else CPU (training.devices.resolve_device)."""
    return resolve_device()


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
        return display_name(f"{path.parent.name}/{path.name}")
    return display_name(path.name)


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
