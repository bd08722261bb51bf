"""Run directories: what the trainer writes, and `load_run` to read it back.

    RUN_DIR/
        config.json        {"model": ModelConfig dict, "chain": chain dict,
                            "train": TrainConfig dict, "seed": int}
        metrics.jsonl      one JSON object per evaluation (step, eval_loss, kl, ...)
        checkpoints/
            step_000000/   checkpoints (training.checkpoints format) at log-spaced steps
            step_000001/   and the last step; each also holds the optimiser, scheduler and
            ...            step state needed to resume exactly
            latest/        rolling resume checkpoint while a run is in progress
        summary.json       written when the run ends (final_eval_loss, entropy_rate,
                           unigram_loss, verdict, steps, seed, wall_seconds, ...)

A run is *finished* when summary.json exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from training.chains import MarkovChain, chain_from_dict
from training.config import ModelConfig
from training.recipe import TrainConfig

if TYPE_CHECKING:  # the model (and transformer_lens) load only when a checkpoint is read
    from training.model import MarkovTransformer

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def display_name(path: str | os.PathLike) -> str:
    """A path as text for titles, labels and reports: bytes that are not UTF-8 (a name the
    file system holds but no text encoding can write) shown as \\xNN escapes."""
    return os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON: {str(err)[:200]}") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` (hidden, same suffix, so writers that read the format
    from it still do) to write in the block; renamed onto ``path`` when the block ends, and
    removed if it raises: ``path`` is whole or absent, never half-written, and a failed write
    leaves nothing behind. Every output file of the package is written through it.
    ``path`` must be absent or a regular file (ValueError for a device such as /dev/full or
    a directory: a rename would replace them)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise ValueError(f"{path} is {kind}; an output must be a regular file")
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through ``atomic_path``, synced to disk; a path
    with bytes that are not UTF-8 quoted in it is written as ``display_name`` shows it."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def savefig_atomic(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """``fig.savefig(path, **kwargs)`` (a matplotlib figure) through ``atomic_path``."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)
    return Path(path)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as JSON to `path` via a temporary file and a rename (never half-written)."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


SUMMARY_NUMBERS = (
    "final_eval_loss",
    "entropy_rate",
    "unigram_loss",
    "gap",
    "final_kl",
    "final_rel_excess",
    "final_dependence",
    "wall_seconds",
    "p_hat",
    "q_hat",
)
METRIC_NUMBERS = ("eval_loss", "kl", "rel_excess", "rel_unigram", "dependence", "train_loss", "lr")


def _number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def check_summary(summary: dict[str, Any], path: Path | str) -> None:
    """ValueError naming the file and field when a summary.json field has the wrong type
    (a report must never render "verdict 42" or "final_eval_loss abc")."""
    from training.verdicts import VERDICTS

    status = summary.get("status", "finished")
    if status not in ("finished", "paused", "diverged"):
        raise ValueError(f"{path}: field 'status' must be finished/paused/diverged, got {status!r}")
    if "verdict" in summary and summary["verdict"] not in VERDICTS:
        raise ValueError(
            f"{path}: field 'verdict' must be one of {'/'.join(VERDICTS)}, "
            f"got {summary['verdict']!r}"
        )
    for key in SUMMARY_NUMBERS:
        if key in summary and not _number_or_none(summary[key]):
            raise ValueError(f"{path}: field {key!r} must be a number, got {summary[key]!r}")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file. A last line cut short (a process killed while
    writing it) is ignored; a bad line anywhere else is an error."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a text file: {err}") from None
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1} is not valid JSON: {str(err)[:200]}") from None
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(
                f"{path}:{i + 1} is not a metric record (a JSON object with an integer step)"
            )
        for key in METRIC_NUMBERS:
            if key in record and not _number_or_none(record[key]):
                raise ValueError(
                    f"{path}:{i + 1}: field {key!r} must be a number, got {record[key]!r}"
                )
        out.append(record)
    return out


@dataclass
class Run:
    """A run directory, read: configs, chain, seed; checkpoints, metrics and summary on demand."""

    path: Path
    model_config: ModelConfig
    chain: MarkovChain
    train_config: TrainConfig
    seed: int

    @property
    def finished(self) -> bool:
        return (self.path / SUMMARY).exists()

    def checkpoint_steps(self) -> list[int]:
        """Steps with a kept checkpoint (checkpoints/step_XXXXXX), ascending."""
        root = self.path / CHECKPOINTS
        if not root.is_dir():
            return []
        steps = []
        for entry in root.iterdir():
            m = STEP_DIR.match(entry.name)
            if m and entry.is_dir():
                steps.append(int(m.group(1)))
        return sorted(steps)

    def checkpoint_path(self, step: int | None = None) -> Path:
        """Directory of the checkpoint at `step` (default: the last one)."""
        steps = self.checkpoint_steps()
        if not steps:
            raise FileNotFoundError(f"run {self.path} has no checkpoints yet")
        if step is None:
            step = steps[-1]
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"step must be an integer (a checkpoint step), got {step!r}")
        if step not in steps:
            raise ValueError(f"run {self.path} has no checkpoint at step {step}; it has {steps}")
        return self.path / CHECKPOINTS / step_dir_name(step)

    def model(
        self, step: int | None = None, device: str | torch.device | None = None
    ) -> MarkovTransformer:
        """The model at `step` (default: the last checkpoint), eval mode, on `device`
        (default: CUDA when available, else CPU)."""
        from training.checkpoints import load_checkpoint

        return load_checkpoint(
            self.checkpoint_path(step),
            device=device,
            expected_config=self.model_config,
            expected_chain=self.chain.to_dict(),
        )

    def metrics(self) -> list[dict[str, Any]]:
        """Every evaluation record of metrics.jsonl, in order (step, eval_loss, kl, ...)."""
        return read_metrics(self.path / METRICS)

    def summary(self) -> dict[str, Any]:
        """summary.json (FileNotFoundError if the run has not finished)."""
        path = self.path / SUMMARY
        if not path.exists():
            raise FileNotFoundError(
                f"run {self.path} has no {SUMMARY}: it has not finished (resume it with "
                "`markov-lens train --resume --out RUN_DIR`)"
            )
        summary = read_json(path)
        if not isinstance(summary, dict):
            raise ValueError(f"{path} is not a run summary (a JSON object)")
        check_summary(summary, path)
        return summary

    def config_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_config.to_dict(),
            "chain": self.chain.to_dict(),
            "train": self.train_config.to_dict(),
            "seed": self.seed,
        }


def parse_run_config(d: Any, where: str = "config") -> tuple:
    """(ModelConfig, chain, TrainConfig, seed) from a config.json dict; ValueError if bad."""
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(d).__name__}")
    allowed = {"model", "chain", "train", "seed"}
    unknown = sorted(set(d) - allowed)
    missing = sorted(allowed - set(d))
    if unknown or missing:
        raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing}")
    seed = d["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{where}: seed must be an integer >= 0, got {seed!r}")
    return (
        ModelConfig.from_dict(d["model"]),
        chain_from_dict(d["chain"]),
        TrainConfig.from_dict(d["train"]),
        seed,
    )


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read the run directory `run_dir` (it must hold config.json)."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a run directory")
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} does not exist")
    if not (path / CONFIG).exists():
        raise FileNotFoundError(f"{path} is not a run directory: it has no {CONFIG}")
    model_config, chain, train_config, seed = parse_run_config(
        read_json(path / CONFIG), str(path / CONFIG)
    )
    return Run(path, model_config, chain, train_config, seed)
