"""A run directory before training (training.runs describes its files): its config
(config_dict), its preparation (prepare_run_dir: create it, refuse to overwrite a run, check
that a resumed run's config is the same) and resuming it (find_resume_checkpoint, the
metrics to keep, the temporary files a killed save left). The loop writes its checkpoints
with RUN_FORMAT.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from training.checkpoints import CheckpointError, read_checkpoint
from training.config import ModelConfig
from training.recipe import TrainConfig
from training.runs import (
    CHECKPOINTS,
    CONFIG,
    LATEST,
    METRICS,
    STEP_DIR,
    SUMMARY,
    read_json,
    read_metrics,
    write_json_atomic,
)

RUN_FORMAT = "markov-lens-run/1"


def config_dict(model_config, chain, train_config, seed) -> dict[str, Any]:
    """The config.json of a run: its model, chain and train sections and its seed."""
    return {
        "model": model_config.to_dict(),
        "chain": chain.to_dict(),
        "train": train_config.to_dict(),
        "seed": seed,
    }


def _with_defaults(section: str, d: Any) -> Any:
    """A saved model/train section with the fields added since filled with their defaults."""
    kind = {"model": ModelConfig, "train": TrainConfig}.get(section)
    if kind is None or not isinstance(d, dict):
        return d
    try:
        return kind.from_dict(d).to_dict()
    except (TypeError, ValueError):
        return d


def _config_differences(saved: dict, new: dict) -> list[str]:
    diffs = []
    for section in ("model", "chain", "train", "seed"):
        a, b = saved.get(section), new.get(section)
        a = _with_defaults(section, a)  # a field added since the run was saved: its default
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if section == "train" and key == "device":
                    continue
                if a.get(key) != b.get(key):
                    diffs.append(f"{section}.{key}: saved {a.get(key)!r}, now {b.get(key)!r}")
        elif a != b:
            diffs.append(f"{section}: saved {a!r}, now {b!r}")
    return diffs


def prepare_run_dir(out_dir: Path, config: dict, resume: bool, force: bool) -> bool:
    """Check/create the run directory. Returns True when the run is already finished (and
    resume was asked for), so there is nothing to do."""
    # interp/: analyses of the old model (markov-lens explain, patch, ...), stale after --force
    ours = [out_dir / n for n in (CONFIG, METRICS, SUMMARY, CHECKPOINTS, "interp")]
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    has_config = (out_dir / CONFIG).exists()
    finished = (out_dir / SUMMARY).exists()
    if force:
        for path in ours:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    elif has_config:
        saved = read_json(out_dir / CONFIG)
        diffs = _config_differences(saved, config)
        if finished and not resume:
            raise FileExistsError(
                f"{out_dir} holds a finished run (summary.json); pass force=True (--force) to "
                "train it again from scratch, or choose another directory"
            )
        if not resume:
            raise FileExistsError(
                f"{out_dir} holds an unfinished run; pass resume=True (--resume) to continue "
                "it or force=True (--force) to start over"
            )
        if diffs:
            raise ValueError(f"cannot resume {out_dir}: its config differs: " + "; ".join(diffs))
        return finished
    elif any(p.exists() for p in ours[1:]):
        raise FileExistsError(
            f"{out_dir} holds run files but no {CONFIG}; pass force=True (--force) to replace "
            "them or choose another directory"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / CONFIG).exists():
        write_json_atomic(out_dir / CONFIG, config)
    return False


def truncate_metrics(path: Path, last_step: int) -> list[dict[str, Any]]:
    """Keep the records with step <= last_step (rewritten atomically); return them."""
    kept = [m for m in read_metrics(path) if m["step"] <= last_step]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        for m in kept:
            f.write(json.dumps(m) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return kept


def _resume_candidates(run_dir: Path) -> list[tuple[int, Path]]:
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        m = STEP_DIR.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry))
        elif entry.name in (LATEST, f".{LATEST}.old"):
            found.append((-1, entry))  # step known after reading
    return found


def check_checkpoint_config(ckpt, model_config: ModelConfig) -> None:
    """CheckpointError naming the fields where `ckpt` was saved from another architecture."""
    mine, theirs = model_config.to_dict(), ckpt.config.to_dict()
    diff = [k for k in mine if mine.get(k) != theirs.get(k)]
    if diff:
        detail = ", ".join(f"{k}={theirs.get(k)!r} (expected {mine.get(k)!r})" for k in diff)
        raise CheckpointError(f"{ckpt.path} is from another config: {detail}")


def find_resume_checkpoint(run_dir: Path, model_config: ModelConfig | None = None):
    """The verified checkpoint with the highest step that holds resume state, or None.
    Unreadable or corrupt candidates are skipped with a warning; with `model_config`, a
    candidate saved from another architecture is refused (CheckpointError), never trained
    over."""
    best = None
    for _, path in sorted(_resume_candidates(run_dir), key=lambda t: t[0], reverse=True):
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError as err:
            warnings.warn(f"skipping checkpoint {path}: {err}", stacklevel=2)
            continue
        if "resume" not in ckpt.metadata:
            continue
        if model_config is not None:
            check_checkpoint_config(ckpt, model_config)
        if best is None or ckpt.step > best.step:
            best = ckpt
    return best


def clean_partial_saves(run_dir: Path) -> None:
    """Remove temporary directories a killed save left in checkpoints/ (never a checkpoint)."""
    root = run_dir / CHECKPOINTS
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.startswith(".") and ".tmp-" in entry.name and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
