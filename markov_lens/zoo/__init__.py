"""Ready-made trained runs shipped with the package (tens of kilobytes each), so a notebook or
the README opens a model at once instead of training first:

- ``tied-p0.5-q0.8``: the paper's model (1 layer, d 8, tied, length 128, 400 steps) on
  p=0.5, q=0.8: it sat on the unigram plateau for 90 steps, left it at step 130 and ends at
  the kernel (its metrics show the plateau);
- ``untied-p0.5-q0.8``: the same untied: the bigram solution, read through the embedding;
- ``theta-pi-p0.5-q0.8``: the paper's model placed at theta_pi (predicts the marginal; no
  training, one checkpoint at step 0 and no summary);
- ``in-context-2layer``: 2 attention-only layers, d 16, on in-context binary chains (a fresh
  kernel per sequence): estimates the bigram in context;
- ``lag2-window2``: 1 layer, d 8, attention window 2 on the paper's lag-2 chain (p=0.2,
  q=0.3): the second-order kernel through a short window.

``load_run("zoo/NAME")`` (also ``markov_lens.load_run``) opens one; any other path is a run
directory as usual. Regenerate them all with ``python -m markov_lens.zoo.build`` (seeded:
the same files come out). Analyses that default to writing into the run directory should be
given an output directory (e.g. ``explain_run(..., out_dir=...)``): the zoo lives inside the
installed package.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "trained-runs"
NAMES = (
    "tied-p0.5-q0.8",
    "untied-p0.5-q0.8",
    "theta-pi-p0.5-q0.8",
    "in-context-2layer",
    "lag2-window2",
)
PREFIX = "zoo/"


def zoo_path(name: str) -> Path:
    """The directory of the zoo run ``name`` (ValueError naming the runs there are)."""
    if name not in NAMES:
        raise ValueError(f"no zoo run {name!r}; the zoo holds: {', '.join(NAMES)}")
    return ROOT / name


def resolve(run: str | os.PathLike) -> Path:
    """``zoo/NAME`` -> the shipped run (unless a directory of that name exists here); any other
    path unchanged."""
    text = os.fspath(run)
    if text.startswith(PREFIX) and not Path(text).exists():
        return zoo_path(text[len(PREFIX) :])
    return Path(text)


def load_run(run: str | os.PathLike):
    """``training.runs.load_run`` that also opens ``zoo/NAME`` (module doc)."""
    from training.runs import load_run as load

    return load(resolve(run))
