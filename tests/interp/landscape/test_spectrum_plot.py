"""The Hessian spectrum figure (report page, landscape): readable tick labels."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from interp.landscape import HessianReport, plot_spectrum


def _report(eigenvalues: list[float], flat_tol: float) -> HessianReport:
    values = {
        "method": "exact",
        "n_params": len(eigenvalues),
        "n_sequences": 64,
        "n_tokens": 64 * 128,
        "lambda_min": min(eigenvalues),
        "lambda_max": max(eigenvalues),
        "eigenvalues": eigenvalues,
        "noise_norm": flat_tol / 2,
        "flat_tol": flat_tol,
        "verdict": "saddle",
    }
    for f in dataclasses.fields(HessianReport):
        if (
            f.name not in values
            and f.default is dataclasses.MISSING
            and (f.default_factory is dataclasses.MISSING)
        ):
            values[f.name] = {} if "split" in f.name else 0.0
    return HessianReport(**values)


@pytest.mark.parametrize(
    ("low", "high", "flat_tol"),
    [(-3e-3, 50.0, 1e-4), (-2.0, 2.0, 1.2), (-1e-6, 1e3, 1e-9), (-40.0, 1e-2, 1e-5)],
)
def test_spectrum_tick_labels_do_not_overlap(low, high, flat_tol):
    n = 60
    ev = [low + (high - low) * (i / (n - 1)) ** 3 for i in range(n)]
    ax = plot_spectrum(_report(ev, flat_tol))
    fig = ax.figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.get_yticklabels() if t.get_text() and t.get_visible()]
    assert len(labels) >= 3  # still a scale to read
    boxes = [t.get_window_extent(renderer) for t in labels]
    lo, hi = ax.get_ylim()
    for (a, ta), (b, tb) in itertools.combinations(zip(boxes, labels, strict=True), 2):
        assert not a.overlaps(b), (ta.get_text(), tb.get_text(), (lo, hi))


def test_spectrum_says_what_it_shows_and_clips_nothing():
    """19 Ritz values of a 938-parameter Hessian: the title says so; the symlog axis is
    named; both edges of the flat band are ticks; the index ticks are whole numbers; the
    top and bottom eigenvalues sit inside the axes, not on their edges."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from interp.landscape.plots import symlog_position
    from tests.figures import assert_fills_axes

    ev = [-0.058, -0.01, -2e-4, 0.0, 1e-4, 3e-4] + [0.02 * 1.6**i for i in range(12)] + [15.74]
    report = dataclasses.replace(_report(ev, 0.05), method="lanczos", n_params=938)
    report.flat_band = 0.02
    ax = plot_spectrum(report)
    FigureCanvasAgg(ax.figure).draw()
    assert "19 of 938 Ritz values shown" in ax.get_title()
    assert "symlog" in ax.get_ylabel()
    labels = {t.get_text() for t in ax.get_yticklabels() if t.get_visible()}
    assert {"-0.02", "0.02"} <= labels, labels
    xticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert xticks and all(float(t).is_integer() for t in xticks), xticks
    lo, hi = (symlog_position(y, 0.02) for y in ax.get_ylim())
    top, bottom = symlog_position(max(ev), 0.02), symlog_position(min(ev), 0.02)
    assert bottom - lo >= 0.03 * (hi - lo) and hi - top >= 0.03 * (hi - lo)
    assert_fills_axes(ax.figure)
    titled = plot_spectrum(report, title="report: saddle")
    assert titled.get_title().startswith("report: saddle") and "19 of 938" in titled.get_title()
