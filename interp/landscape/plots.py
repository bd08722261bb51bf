"""Figures of the landscape: a Hessian spectrum with its flat band, and the theta_pi grid.

matplotlib is imported inside the functions (``Figure`` objects, no pyplot).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from interp.landscape.spectrum import HessianReport
from training.runs import savefig_atomic


def symlog_position(y: float, linthresh: float) -> float:
    """Where a symlog axis (linscale 1) draws y, in decades from 0."""
    a = abs(y)
    return y / linthresh if a <= linthresh else math.copysign(1 + math.log10(a / linthresh), y)


def symlog_value(position: float, linthresh: float) -> float:
    """The inverse of ``symlog_position``."""
    a = abs(position)
    return position * linthresh if a <= 1 else math.copysign(linthresh * 10 ** (a - 1), position)


def symlog_ticks(
    low: float,
    high: float,
    linthresh: float,
    n_max: int = 7,
    keep: tuple[float, ...] = (),
) -> list[float]:
    """Major ticks for a symlog axis (linscale 1) over [low, high]: the ``keep`` ticks (e.g.
    both edges of a band), then 0 and powers of ten (+-linthresh where no power of ten fits),
    at most about ``n_max``, kept greedily from the largest magnitude inward only where they
    are at least 1/n_max of the axis apart, so labels of a small figure spanning many
    decades do not overlap."""

    def position(y: float) -> float:
        return symlog_position(y, linthresh)

    top, bottom = position(max(high, linthresh)), position(min(low, -linthresh))
    gap = (top - bottom) / n_max
    candidates = []
    for sign, end in ((1.0, high), (-1.0, -low)):
        if end > linthresh:
            first = math.ceil(math.log10(linthresh) - 1e-9)
            last = math.floor(math.log10(end) + 1e-9)
            powers = [10.0**d for d in range(last, first - 1, -1)]
            candidates += [sign * v for v in powers] or [sign * linthresh]
        elif end > 0:
            candidates.append(sign * linthresh)
    ticks = list(keep) or [0.0]
    if keep and all(abs(position(t)) >= gap for t in keep):
        ticks.append(0.0)
    for y in sorted(candidates, key=lambda v: -abs(position(v))):
        if all(abs(position(y) - position(t)) >= gap for t in ticks):
            ticks.append(y)
    return sorted(set(ticks))


def plot_spectrum(report: HessianReport, ax=None, title: str | None = None):
    """Eigenvalues (exact: all; Lanczos: the Ritz values, "k of P shown") on a symlog axis
    (linear inside the flat band, logarithmic outside; said on the axis), with the flat band
    shaded and both its edges ticked, integer index ticks, and room above the top and below
    the bottom eigenvalue."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    if ax is None:
        ax = Figure(layout="constrained", figsize=(6.4, 3.4)).subplots()
    ev = sorted(report.eigenvalues)
    ax.plot(range(len(ev)), ev, ".", ms=4)
    if report.flat_band < report.flat_tol:
        ax.axhspan(-report.flat_tol, report.flat_tol, color="0.93", label="Weyl bound")
    ax.axhspan(-report.flat_band, report.flat_band, color="0.82", label="flat within error")
    ax.axhline(0, color="k", lw=0.5)
    linthresh = max(report.flat_band, 1e-8)
    ax.set_yscale("symlog", linthresh=linthresh)
    lo, hi = symlog_position(min(ev), linthresh), symlog_position(max(ev), linthresh)
    lo, hi = min(lo, -1.0), max(hi, 1.0)  # the band is always in view
    pad = 0.06 * (hi - lo)
    ax.set_ylim(symlog_value(lo - pad, linthresh), symlog_value(hi + pad, linthresh))
    band = (-linthresh, linthresh)
    ax.yaxis.set_major_locator(FixedLocator(symlog_ticks(min(ev), max(ev), linthresh, keep=band)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: "0" if y == 0 else f"{y:.2g}"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-0.5 - 0.02 * len(ev), len(ev) - 0.5 + 0.02 * len(ev))
    if report.method == "exact":
        what, shown = "eigenvalue", f"all {len(ev)} eigenvalues"
    else:
        what, shown = "Ritz value", f"{len(ev)} of {report.n_params} Ritz values shown"
    ax.set_xlabel(f"{what} index (ascending)")
    ax.set_ylabel(f"eigenvalue (symlog: linear within +-{linthresh:.2g})", fontsize=8)
    head = title or f"Hessian spectrum ({report.method}): {report.verdict}"
    ax.set_title(f"{head}\n{shown}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return ax


def plot_grid(rows: list[dict[str, Any]], path=None):
    """One panel per architecture: lambda_min over (p, q) (sign-symmetric log colour scale),
    the verdict written in each cell, and the line p + q = 1."""
    from matplotlib.colors import SymLogNorm
    from matplotlib.figure import Figure

    archs = list(dict.fromkeys(r["architecture"] for r in rows))
    fig = Figure(figsize=(4.2 * len(archs), 3.8), layout="constrained")
    axes = fig.subplots(1, len(archs), squeeze=False)
    short = {
        "saddle": "saddle",
        "local minimum": "min",
        "local minimum (up to flat directions)": "min*",
        "degenerate (flat)": "flat",
        "inconclusive": "?",
    }
    vmax = max(abs(r["lambda_min"]) for r in rows) or 1.0
    tols = sorted(r["flat_band"] for r in rows)
    linthresh = max(tols[len(tols) // 2], 1e-8)  # linear (pale) inside a typical flat band
    for ax, arch in zip(axes[0], archs, strict=True):
        sub = [r for r in rows if r["architecture"] == arch]
        ps = sorted({r["p"] for r in sub})
        qs = sorted({r["q"] for r in sub})
        grid = torch.full((len(qs), len(ps)), float("nan"))
        for r in sub:
            grid[qs.index(r["q"]), ps.index(r["p"])] = r["lambda_min"]
        im = ax.imshow(
            grid.numpy(),
            origin="lower",
            cmap="RdBu",
            norm=SymLogNorm(linthresh, vmin=-vmax, vmax=vmax),
        )
        for r in sub:
            ax.text(
                ps.index(r["p"]),
                qs.index(r["q"]),
                short[r["verdict"]],
                ha="center",
                va="center",
                fontsize=8,
            )
        ax.set_xticks(range(len(ps)), [f"{p:g}" for p in ps])
        ax.set_yticks(range(len(qs)), [f"{q:g}" for q in qs])
        ax.set_xlabel("p")
        ax.set_ylabel("q")
        ax.set_title(f"{arch}: lambda_min at theta_pi", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.text(0.01, 0.01, "min* = local minimum up to flat directions", fontsize=7)
    if path is not None:
        savefig_atomic(fig, path, dpi=120)
    return fig


def plot_precision_escape(result: dict[str, Any], path=None):
    """A precision_escape result over training steps, one line per arithmetic: the eval loss
    (nats), the training gradient's norm, and 1 - cosine between each arithmetic's gradient
    and the float32 gradient at the same weights (log scale; dashed: fp16 with a GradScaler's
    loss scale 2^16), with each run's plateau exit step marked."""
    from matplotlib.figure import Figure

    curves = result["precisions"]
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    loss_ax, norm_ax, cos_ax = fig.subplots(1, 3)
    for i, (name, c) in enumerate(curves.items()):
        color = f"C{i}"
        loss_ax.plot(c["eval_steps"], c["eval_loss"], color=color, lw=1, label=name)
        norm_ax.plot(c["steps"], c["grad_norm"], color=color, lw=1, label=name)
        if name != result["reference"]:
            off = [max(1.0 - x, 1e-12) for x in c["cosine"]]
            cos_ax.plot(c["steps"], off, color=color, lw=1, label=f"{name}, no loss scale")
            scaled = [x for x in c.get("scaled_cosine") or [] if x is not None]
            if len(scaled) == len(c["steps"]):
                off = [max(1.0 - x, 1e-12) for x in scaled]
                cos_ax.plot(c["steps"], off, color=color, ls="--", lw=1, label=f"{name} x 2^16")
        exit_step = c.get("plateau_exit_step")
        for ax in (loss_ax, norm_ax, cos_ax):
            if exit_step is not None:
                ax.axvline(exit_step, color=color, ls=":", lw=0.8)
    loss_ax.set(xlabel="step", ylabel="eval loss (nats)", title="eval loss")
    norm_ax.set(xlabel="step", ylabel="||grad||", yscale="log", title="training gradient norm")
    cos_ax.set(
        xlabel="step",
        ylabel=f"1 - cos(grad, {result['reference']} grad at the same weights)",
        yscale="log",
        title="gradient lost to the arithmetic",
    )
    for ax in (loss_ax, norm_ax, cos_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"seed {result['seed']}: dotted lines = plateau exit step of each run", fontsize=9)
    if path is not None:
        savefig_atomic(fig, path, dpi=120)
    return fig
