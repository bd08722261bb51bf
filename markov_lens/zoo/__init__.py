"""Ready-made trained runs shipped with the package (tens of kilobytes each), so a notebook or
the README opens a model at once instead of training first. ``zoo()`` lists them, one line
each (DESCRIPTIONS below).

``load_run("zoo/NAME")`` (also ``markov_lens.load_run``) opens one; any other path is a run
directory as usual, or a checkpoint directory (RUN/checkpoints/step_X, or a lone one): the
run opened at that checkpoint. Regenerate them all with ``python -m markov_lens.zoo.build``
(seeded: the same files come out). Analyses that default to writing into the run directory
should be given an output directory (e.g. ``explain_run(..., out_dir=...)``): the zoo lives
inside the installed package. ``to_transformerlens("zoo/NAME")`` exports one to
TransformerLens (training.interop).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "trained-runs"
DESCRIPTIONS = {
    "tied-p0.5-q0.8": "the paper's model (1 layer, d 8, tied, length 128, 400 steps) on p=0.5, "
    "q=0.8: on the unigram plateau for 90 steps, left it at step 130, ends at the kernel",
    "untied-p0.5-q0.8": "the same untied: the bigram solution, read through the embedding",
    "theta-pi-p0.5-q0.8": "the paper's model placed at theta_pi: predicts the marginal "
    "(no training: one checkpoint at step 0, no summary)",
    "in-context-2layer": "2 attention-only layers, d 32, no LayerNorm, length 128, 3000 steps, "
    "on in-context binary chains (a Dirichlet(1) kernel per sequence): an induction head, "
    "within 0.01 nats of the add-alpha (Bayes) loss; labelled in-context (induction)",
    "in-context-1layer": "the same recipe with 1 layer: no induction head, short of the "
    "add-alpha loss; not labelled induction",
    "lag2-window2": "1 layer, d 8, attention window 2 on the paper's lag-2 chain (p=0.2, "
    "q=0.3): the second-order kernel through a short window",
}
NAMES = tuple(DESCRIPTIONS)
PREFIX = "zoo/"


class Listing(dict):
    """name -> one-line description; printed (or shown in a notebook) one run a line."""

    def __str__(self) -> str:
        width = max(map(len, self), default=0)
        return "\n".join(f"{name:<{width}}  {line}" for name, line in self.items())

    __repr__ = __str__


def zoo() -> Listing:
    """The zoo's runs, each with one line saying what it is (open one: load_run("zoo/NAME"))."""
    return Listing(DESCRIPTIONS)


def zoo_path(name: str) -> Path:
    """The directory of the zoo run ``name`` (ValueError naming the runs there are)."""
    if name not in NAMES:
        raise ValueError(f"no zoo run {name!r}; the zoo holds: {', '.join(NAMES)}")
    return ROOT / name


def resolve(run: str | os.PathLike) -> Path:
    """``zoo/NAME`` -> the shipped run (unless a directory of that name exists here); any other
    path unchanged."""
    if not isinstance(run, (str, os.PathLike)) or isinstance(os.fspath(run), bytes):
        raise ValueError(
            f"a run directory is a str or pathlib.Path, got {type(run).__name__} {run!r:.60}"
        )
    text = os.fspath(run)
    if text.startswith(PREFIX) and not Path(text).exists():
        return zoo_path(text[len(PREFIX) :])
    return Path(text)


def load_run(run: str | os.PathLike):
    """``training.runs.load_run`` that also opens ``zoo/NAME`` and checkpoint directories: a
    checkpoint of a run gives that run with ``model()`` defaulting to the checkpoint and
    ``metrics()`` cut at its step; a lone checkpoint gives a run read from its metadata
    (chain, train config, seed), with no metrics and no summary."""
    from training.checkpoints import MANIFEST
    from training.runs import CONFIG
    from training.runs import load_run as load

    path = resolve(run)
    if path.is_dir() and not (path / CONFIG).exists() and (path / MANIFEST).exists():
        return _checkpoint_run(path)
    return load(path)


@functools.cache
def _checkpoint_run_class() -> type:
    """CheckpointRun, defined on first use (training.runs imports torch)."""
    from training.runs import Run

    @dataclasses.dataclass
    class CheckpointRun(Run):
        """A run opened at one checkpoint: model() (step None) loads it, metrics() stop at it."""

        checkpoint: Path | None = None
        checkpoint_step: int | None = None

        def model(self, step=None, device=None):
            if step is not None:
                return super().model(step, device)
            from training.checkpoints import load_checkpoint

            return load_checkpoint(self.checkpoint, device, expected_config=self.model_config)

        def metrics(self):
            cut = self.checkpoint_step
            return [m for m in super().metrics() if cut is None or m["step"] <= cut]

    return CheckpointRun


def _checkpoint_run(path: Path):
    """The run of checkpoint directory `path`, opened at it (load_run)."""
    from training.chains import chain_from_dict
    from training.checkpoints import read_checkpoint
    from training.recipe import TrainConfig
    from training.runs import CONFIG
    from training.runs import load_run as load

    CheckpointRun = _checkpoint_run_class()
    ckpt = read_checkpoint(path)
    meta = ckpt.metadata
    step = meta.get("step") if isinstance(meta.get("step"), int) else None
    root = path.resolve().parent.parent
    if (root / CONFIG).exists():
        run = load(root)
        fields = {f.name: getattr(run, f.name) for f in dataclasses.fields(run)}
        return CheckpointRun(**fields, checkpoint=path, checkpoint_step=step)
    missing = [k for k in ("chain", "train", "seed") if k not in meta]
    if missing:
        raise ValueError(
            f"{path} is a checkpoint outside a run directory and its metadata lacks {missing}: "
            "open the model with training.checkpoints.load_checkpoint"
        )
    return CheckpointRun(
        path=path,
        model_config=ckpt.config,
        chain=chain_from_dict(meta["chain"]),
        train_config=TrainConfig.from_dict(meta["train"]),
        seed=meta["seed"],
        checkpoint=path,
        checkpoint_step=step,
    )


def to_transformerlens(source, *, process_weights: bool = True, step: int | None = None):
    """``training.interop.to_transformerlens`` that also takes ``zoo/NAME`` and checkpoint
    directories: the model as TransformerLens's own TransformerBridge."""
    from training.interop import to_transformerlens as export

    if isinstance(source, (str, os.PathLike)):
        source = load_run(source)
    return export(source, process_weights=process_weights, step=step)


class _CallableZoo(types.ModuleType):
    """``markov_lens.zoo`` is both this package and ``zoo()``: ``ml.zoo()`` lists the runs even
    after ``import markov_lens.zoo`` has bound the package to that name."""

    def __call__(self) -> Listing:
        return zoo()


sys.modules[__name__].__class__ = _CallableZoo
