"""Command-line checks shared by every command, run before anything is allocated.

Each raises ValueError (``main`` prints one line, exit 2) naming the flag and the value:

- ``add_allow_large(parser)``: the ``--allow-large`` flag; ``main`` runs the command inside
  ``training.limits.allow_large()`` when it is given;
- ``check_threads``: a thread count in 1..os.cpu_count();
- ``check_device``: a device name torch knows and this machine has (``--device bogus``);
- ``nonempty``: an argparse type refusing ``''`` (``--out ''`` is not the current directory);
- ``check_output_path``: an output path that resolves (a symlink loop is one line);
- ``check_run_analysis``: sequences x length of an analysis of a run against the caps and
  an estimate of its memory (``training.limits``);
- ``resolve_runs`` and ``holding_runs``: an analysis's RUN_DIR arguments, ``zoo/NAME`` read as
  ``ml.load_run`` reads it, and each run's lock held while the command runs (a run still
  training is refused, naming its trainer; two reports on one run do not race).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training import limits


def add_allow_large(p: argparse.ArgumentParser) -> None:
    """``--allow-large``: skip the memory estimate's refusal (the hard caps still apply)."""
    p.add_argument(
        "--allow-large",
        action="store_true",
        help="run even when the memory estimate exceeds what this machine has available",
    )


def nonempty(text: str) -> str:
    """argparse type: any string but an empty (or blank) one."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def check_threads(n: int | None, flag: str = "--threads") -> int | None:
    """``n`` if it is None or in 1..os.cpu_count(), else ValueError naming ``flag``."""
    cores = os.cpu_count() or 1
    if n is not None and not 1 <= n <= cores:
        raise ValueError(f"{flag} must be in 1..{cores} (this machine's cores), got {n}")
    return n


def check_device(name: Any, flag: str = "--device") -> Any:
    """``name`` unchanged (None and "auto" included) if it names a device torch knows and
    this machine has, else ValueError naming ``flag`` and what is allowed."""
    if name is None or name == "auto":
        return name
    from training.devices import resolve_device

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{flag} must be auto, cpu, cuda or cuda:N, got {name!r}")
    allowed = "allowed: auto, cpu, cuda, cuda:N"
    try:
        device = resolve_device(name)
    except ValueError as err:
        if "invalid device" in str(err):
            raise ValueError(f"{flag} {name!r} is not a device; {allowed}") from None
        raise ValueError(f"{flag}: {err}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{flag} {name!r}: markov-lens runs on cpu or cuda; {allowed}")
    return name


def check_output_path(path: str | os.PathLike, flag: str = "--out", file: bool = False) -> Path:
    """``path`` as a Path once it is known to resolve (no symlink loop, no name too long);
    with ``file``, it must also be absent or a regular file (not /dev/full, not a FIFO)."""
    if not str(path).strip():
        raise ValueError(f"{flag} must not be empty")
    try:
        Path(path).resolve()
    except (RuntimeError, OSError) as err:
        reason = "a symlink loop" if "loop" in str(err).lower() else str(err)
        raise ValueError(f"{flag} {path}: cannot be resolved ({reason})") from None
    if file and Path(path).exists() and not Path(path).is_file():
        raise ValueError(f"{flag} {path} exists and is not a regular file")
    return Path(path)


def check_run_analysis(
    model_cfg,
    n_seqs: int,
    seq_len: int,
    device: Any = None,
    *,
    copies: int = 2,
    backward: bool = False,
    batch: int | None = None,
) -> None:
    """``--n-seqs`` sequences of ``--seq-len`` tokens of a run with ModelConfig ``model_cfg``:
    within the caps, and within the memory available (``training.limits.check_fits``)."""
    what = f"--n-seqs {n_seqs} x --seq-len {seq_len}"
    limits.check_tokens(("--n-seqs", "--seq-len"), n_seqs, seq_len)
    est = limits.analysis_estimate(
        model_cfg, n_seqs, seq_len, copies=copies, backward=backward, batch=batch
    )
    limits.check_fits(est, f"{what} tokens", device)


RUN_ARGUMENTS = ("run_dir", "run_dirs", "sources")  # the argparse dests naming runs
ANALYSES = ("attention", "patch", "explain", "report", "landscape", "probe", "compare")


OUTPUT_ARGUMENTS = {"out": False, "plot": True, "json": True}  # dest -> must be a file


def check_outputs(args: argparse.Namespace) -> None:
    """Every output path of a command (--out, --plot, --json FILE) through
    ``check_output_path``, before the command runs."""
    for dest, file in OUTPUT_ARGUMENTS.items():
        value = getattr(args, dest, None)
        if isinstance(value, (str, os.PathLike)):
            check_output_path(value, f"--{dest}", file=file)


def resolve_runs(args: argparse.Namespace) -> None:
    """Replace ``zoo/NAME`` in the run arguments by the shipped run's directory, in place."""
    from markov_lens.zoo import PREFIX, resolve

    for dest in RUN_ARGUMENTS:
        value = getattr(args, dest, None)
        if isinstance(value, str) and value.startswith(PREFIX):
            setattr(args, dest, str(resolve(value)))
        elif isinstance(value, list):
            setattr(args, dest, [str(resolve(v)) if v.startswith(PREFIX) else v for v in value])


@contextlib.contextmanager
def holding_runs(args: argparse.Namespace) -> Iterator[None]:
    """Hold the lock (``training.locks``) of every run directory the analysis reads while it
    runs: one still being trained (or analysed by another command) is refused at once with
    DirectoryLocked naming the holder. A run directory this process cannot write (a
    read-only copy) is only checked, not locked."""
    if args.command not in ANALYSES:
        yield
        return
    from training.locks import (
        DirectoryLocked,
        describe_holder,
        is_locked,
        lock_directory,
        read_lock,
    )
    from training.runs import CONFIG

    paths: dict[str, Path] = {}
    for dest in RUN_ARGUMENTS:
        value = getattr(args, dest, None)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and (Path(item) / CONFIG).is_file():
                paths.setdefault(str(Path(item).resolve()), Path(item))
    with contextlib.ExitStack() as held:
        for path in paths.values():
            if os.access(path, os.W_OK):
                held.enter_context(lock_directory(path, purpose=f"markov-lens {args.command}"))
            elif is_locked(path):
                holder = describe_holder(read_lock(path) or {})
                raise DirectoryLocked(
                    f"{path} is in use by {holder}; wait for it to finish", read_lock(path) or {}
                )
        yield
