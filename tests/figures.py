"""Checks that a saved figure shows something: a PNG of a plausible size with many colours
(a blank or single-colour canvas fails), for CLI outputs read back from disk."""

from __future__ import annotations

from pathlib import Path


def assert_drawn(path: Path, min_colours: int = 16) -> None:
    import matplotlib.image
    import numpy as np

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] >= 100 and image.shape[1] >= 100, image.shape
    colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
    assert len(colours) >= min_colours, f"{path.name}: only {len(colours)} colours"
