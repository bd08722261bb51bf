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


def assert_fills_axes(fig, min_fraction: float = 0.2) -> None:
    """Every axes of ``fig`` with data shows it over a visible part of itself: lines, bars and
    points span >= min_fraction of the y-range (and of the x-range); a heatmap uses >=
    min_fraction of its colour scale (its middle 80% of cells >= min_fraction / 2: a field of
    one colour fails), and >= min_fraction of its columns differ from the most common value
    (a one-pixel column of signal in a flat field fails)."""
    import matplotlib.collections
    import matplotlib.image
    import matplotlib.lines
    import matplotlib.patches
    import numpy as np

    checked = 0
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        for im in ax.get_images():
            data = np.ma.masked_invalid(np.asarray(im.get_array(), dtype=float))
            if data.count() == 0:
                continue
            scaled = np.ma.masked_invalid(np.asarray(im.norm(data), dtype=float))
            used = float(scaled.max() - scaled.min())
            assert used >= min_fraction, f"{ax.get_title()!r}: {used:.3f} of the colour scale"
            body = np.quantile(scaled.compressed(), [0.1, 0.9]) if scaled.count() > 4 else None
            if body is not None:  # most cells one colour: the finding is not visible
                spread = float(body[1] - body[0])
                assert spread >= min_fraction / 2, (
                    f"{ax.get_title()!r}: 80% of the cells within {spread:.3f} of the scale"
                )
            flat = data.filled(np.nan)
            values, counts = np.unique(flat[np.isfinite(flat)], return_counts=True)
            mode = values[counts.argmax()]
            cols = np.isfinite(flat) & ~np.isclose(flat, mode, rtol=0, atol=1e-9)
            share = float(cols.any(0).mean())
            assert share >= min_fraction, f"{ax.get_title()!r}: {share:.3f} of the columns"
            checked += 1
        ys, xs = [], []
        for line in ax.get_lines():
            if line.get_label().startswith("_") and len(line.get_xdata()) <= 2:
                continue  # reference lines (axhline / axvline)
            xs.append(np.asarray(line.get_xdata(), dtype=float))
            ys.append(np.asarray(line.get_ydata(), dtype=float))
        for p in ax.patches:
            if isinstance(p, matplotlib.patches.Rectangle) and p.get_height() != 0:
                ys.append(np.array([p.get_y(), p.get_y() + p.get_height()], dtype=float))
        for c in ax.collections:
            if isinstance(c, matplotlib.collections.PathCollection):
                off = np.asarray(c.get_offsets(), dtype=float)
                if off.size:
                    xs.append(off[:, 0])
                    ys.append(off[:, 1])
        if not ys:
            continue
        for name, vals, lim in (("y", ys, ax.get_ylim()), ("x", xs, ax.get_xlim())):
            v = np.concatenate([a.ravel() for a in vals]) if vals else np.array([])
            v = v[np.isfinite(v)]
            if v.size < 2 or ax.get_yscale() != "linear":
                continue
            share = float((v.max() - v.min()) / abs(lim[1] - lim[0]))
            assert share >= min_fraction, f"{ax.get_title()!r}: data span {share:.3f} of {name}"
        checked += 1
    assert checked, "no axes with data"
