"""The paper's experiments (docs/theory.md section 3), reproducible from one command.

``reproduce(name, out_dir, size)`` runs an experiment through the sweep machinery (parallel
workers, finished runs skipped, so an interrupted reproduction resumes) and writes to out_dir:
PNG figures, summary.csv (one row per cell), summary.md (settings, table, the paper's claims
with the fraction of seeds for which each held, wall time), and sweep/ (the runs,
results.csv, aggregate.csv).

Experiments (size "full" = the paper's settings; "quick" = shorter sequences, fewer seeds,
minutes on a 2-core CPU; "test" = tiny, for the test suite):

- tying: p=0.2,q=0.3 and p=0.5,q=0.8; 1 layer, d 8; tied vs untied. Loss curves with the
  entropy-rate and unigram lines; final p_hat/q_hat against the truth.
- depth: p=0.5,q=0.8, L in {1,2,4,8}, d 8, length 512, 500 iterations; final loss mean, std.
- second-order: lag-2 chain p=0.2,q=0.3, d 32, 800 iterations; 1 layer with attention
  windows {none,2,8,32,40,80,100}, and depths 4, 8 with full causal attention (the paper's
  design); final loss against the window with the order-0/1/2 losses.
- phase-diagram: (p, q) on a 5 x 5 grid in (0,1)^2 without the line p + q = 1 (an i.i.d. chain
  where the two minima coincide), tied vs untied, 1 layer: the fraction of seeds that end at
  the unigram point and the median plateau exit step, as heatmaps.

Nothing is tuned to make a claim come out: each claim is checked per seed and reported as
"held for k of n seeds".
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.chains import KthOrderChain
from training.references import order_j_loss
from training.runs import read_metrics
from training.stats import (
    bootstrap_interval,
    claim_status,
    fmt_fraction,
    fmt_interval,
    quartiles,
    wilson_interval,
)
from training.sweeps import SweepResult, markdown_table, run_sweep, write_csv

SIZES = ("full", "quick", "test")
TINY = {
    "iters": 24,
    "seq_len": 16,
    "batch": 4,
    "eval_every": 6,
    "eval_batches": 1,
    "checkpoints_per_octave": 0,
}


@dataclass
class Claim:
    """A statement of the paper checked per seed: `select` picks the runs it is about and
    `expected` lists the verdicts under which it holds (or `holds` decides from the row)."""

    text: str
    select: Callable[[dict], bool]
    expected: tuple[str, ...] = ()
    holds: Callable[[dict], bool] | None = None

    def check(self, row: dict) -> bool:
        return self.holds(row) if self.holds is not None else row.get("verdict") in self.expected


@dataclass
class Reproduction:
    """What `reproduce` wrote and found."""

    name: str
    size: str
    out_dir: Path
    table: list[dict[str, Any]]
    claims: list[dict[str, Any]]
    figures: dict[str, Path] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    wall_seconds: float = 0.0
    markdown: str = ""


# ---------------------------------------------------------------------------- settings


def _train(size: str, full: dict, quick: dict) -> dict:
    base = {"full": full, "quick": quick, "test": TINY}[size]
    return dict(base)


def default_seeds(name: str, size: str) -> int:
    """Seeds per cell when none are given: the paper's 3 (full), 3 for a quick reproduction
    (2 for the 24-cell quick phase diagram), 1 at test size."""
    if size == "test":
        return 1
    return 2 if (name, size) == ("phase-diagram", "quick") else 3


def tying_specs(size: str, seeds: int) -> list[dict]:
    train = _train(
        size,
        {"iters": 400, "seq_len": 1024, "batch": 16},
        {"iters": 400, "seq_len": 256, "batch": 16},
    )
    model = {"layers": 1, "d_model": 8, "tie": [True, False]}
    return [
        {"chain": {"p": p, "q": q}, "model": model, "train": train, "seeds": seeds}
        for p, q in ((0.2, 0.3), (0.5, 0.8))
    ]


def depth_specs(size: str, seeds: int) -> list[dict]:
    train = _train(
        size,
        {"iters": 500, "seq_len": 512, "batch": 16},
        {"iters": 300, "seq_len": 128, "batch": 16},
    )
    layers = {"full": [1, 2, 4, 8], "quick": [1, 2, 4], "test": [1, 2]}[size]
    return [
        {
            "chain": {"p": 0.5, "q": 0.8},
            "model": {"layers": layers, "d_model": 8},
            "train": train,
            "seeds": seeds,
        }
    ]


def second_order_specs(size: str, seeds: int) -> list[dict]:
    train = _train(
        size,
        {"iters": 800, "seq_len": 1024, "batch": 16},
        {"iters": 400, "seq_len": 128, "batch": 16},
    )
    windows = {
        "full": [None, 2, 8, 32, 40, 80, 100],  # the paper's windows, and full attention
        "quick": [None, 2, 8, 32],
        "test": [None, 2],
    }[size]
    depths = {"full": [4, 8], "quick": [4], "test": [2]}[size]
    chain = {"p": 0.2, "q": 0.3, "order": 2}
    d = 32 if size != "test" else 8
    return [
        {
            "chain": chain,
            "model": {"layers": 1, "d_model": d, "window": windows},
            "train": train,
            "seeds": seeds,
        },
        {
            "chain": chain,
            "model": {"layers": depths, "d_model": d, "window": None},
            "train": train,
            "seeds": seeds,
        },
    ]


def phase_grid(size: str) -> list[float]:
    return {
        # 5 x 5 (20 cells off the line p + q = 1, x 2 tyings x 10 seeds = 400 runs at length
        # 1024: about 40 min on 2 cores); a finer grid is a sweep spec away
        "full": [0.1, 0.3, 0.5, 0.7, 0.9],
        "quick": [0.2, 0.4, 0.6, 0.8],
        "test": [0.3, 0.8],
    }[size]


def phase_specs(size: str, seeds: int) -> list[dict]:
    train = _train(
        size,
        {"iters": 400, "seq_len": 1024, "batch": 16},
        {"iters": 300, "seq_len": 128, "batch": 16},
    )
    grid = phase_grid(size)
    tie = [True] if size == "test" else [True, False]
    return [
        {
            "chain": {"p": p, "q": q},
            "model": {"layers": 1, "d_model": 8, "tie": tie},
            "train": train,
            "seeds": seeds,
        }
        for p in grid
        for q in grid
        if abs(p + q - 1) > 1e-9
    ]


# ----------------------------------------------------------------------------- helpers


def _figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def _curves(row: dict) -> list[dict]:
    return read_metrics(Path(row["run_dir"]) / "metrics.jsonl")


def _finished(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "finished"]


def _cells(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return out


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if isinstance(v, (int, float))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _label_counts(rows: list[dict]) -> str:
    """'order-2 (optimal) 3, marginal 2': how many runs reached which order (verdicts)."""
    counts: dict[str, int] = {}
    for r in rows:
        label = r.get("order_label") or "?"
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def cell_table(rows: list[dict], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per cell: seeds, verdict counts (the unigram fraction with its Wilson 95%
    interval), the excess loss over the true predictor on the same evaluation tokens (the
    final KL, nats; mean with a bootstrap 95% interval over seeds), final loss mean/std,
    references, and the plateau: how many seeds visited it, how long they stayed (median
    [quartiles] of evaluation steps at the unigram loss), how many escaped."""
    table = []
    for key, group in _cells(rows, keys).items():
        fin = _finished(group)
        mean, std = _mean_std([r.get("final_eval_loss") for r in fin])
        exits = [r["plateau_exit_step"] for r in fin if r.get("plateau_exit_step") is not None]
        entered = [r for r in fin if r.get("plateau_first_step") is not None]
        walls = [r.get("wall_seconds") for r in fin if r.get("wall_seconds") is not None]
        n_uni = sum(r.get("verdict") == "unigram" for r in fin)
        stay = quartiles([r.get("plateau_steps") for r in entered])
        row = dict(zip(keys, key, strict=False))
        row |= {
            "seeds": len(group),
            "finished": len(fin),
            "bigram": sum(r.get("verdict") == "bigram" for r in fin),
            "unigram": sum(r.get("verdict") == "unigram" for r in fin),
            "neither": sum(r.get("verdict") == "neither" for r in fin),
            "unigram_fraction": fmt_fraction(n_uni, len(fin)),
            **(
                {"order_labels": _label_counts(fin)}
                if any((r.get("order") or 1) >= 2 for r in group)
                else {}
            ),
            "excess_loss": fmt_interval(bootstrap_interval([r.get("final_kl") for r in fin]), 5),
            "loss_mean": mean,
            "loss_std": std,
            "entropy_rate": fin[0].get("entropy_rate") if fin else None,
            "unigram_loss": fin[0].get("unigram_loss") if fin else None,
            "on_plateau": len(entered),
            "escaped": len(exits),
            "exit_step_median": statistics.median(exits) if exits else None,
            "plateau_steps_mean": _mean_std([r.get("plateau_steps") for r in fin])[0],
            "plateau_steps_median_iqr": (
                f"{stay[1]:g} [{stay[0]:g}, {stay[2]:g}]" if stay is not None else ""
            ),
            "wall_s_mean": statistics.fmean(walls) if walls else None,
        }
        table.append(row)
    return table


def check_claims(rows: list[dict], claims: list[Claim]) -> list[dict[str, Any]]:
    out = []
    for claim in claims:
        chosen = [r for r in _finished(rows) if claim.select(r)]
        held = sum(claim.check(r) for r in chosen)
        verdicts = {
            v: sum(r.get("verdict") == v for r in chosen) for v in ("bigram", "unigram", "neither")
        }
        lo, hi = wilson_interval(held, len(chosen))
        out.append(
            {
                "claim": claim.text,
                "expected": "/".join(claim.expected) if claim.expected else "see claim",
                "held": held,
                "runs": len(chosen),
                "interval": [lo, hi],
                "status": claim_status(held, len(chosen)),
                "verdicts": verdicts,
            }
        )
    return out


def _ref_lines(ax, entropy_rate: float, unigram: float) -> None:
    ax.axhline(entropy_rate, color="k", ls="--", lw=1, label=f"entropy rate {entropy_rate:.3f}")
    ax.axhline(unigram, color="0.5", ls=":", lw=1.5, label=f"unigram loss {unigram:.3f}")


# ------------------------------------------------------------------------------ tying


def tying_report(rows: list[dict], out: Path) -> tuple[list, list, dict]:
    keys = ("p", "q", "tie")
    table = cell_table(rows, keys)
    chains = sorted({(r["p"], r["q"]) for r in rows})
    colors = {True: "tab:red", False: "tab:blue"}
    fig, axes = _figure(len(chains))
    for ax, (p, q) in zip(axes[0], chains, strict=False):
        sel = [r for r in _finished(rows) if (r["p"], r["q"]) == (p, q)]
        labelled = set()
        for r in sel:
            m = _curves(r)
            tie = bool(r["tie"])
            ax.plot(
                [x["step"] for x in m],
                [x["eval_loss"] for x in m],
                color=colors[tie],
                alpha=0.7,
                lw=1,
                label=None if tie in labelled else ("tied" if tie else "untied"),
            )
            labelled.add(tie)
        if sel:
            _ref_lines(ax, sel[0]["entropy_rate"], sel[0]["unigram_loss"])
            lo, hi = sel[0]["entropy_rate"], sel[0]["unigram_loss"]
            ax.set_ylim(lo - 0.15 * (hi - lo) - 0.005, max(hi + 0.6 * (hi - lo), 0.70))
        ax.set_title(f"p={p:g}, q={q:g} (p+q {'>' if p + q > 1 else '<'} 1), 1 layer")
        ax.set_xlabel("step")
        ax.set_ylabel("eval loss (nats)")
        ax.legend(fontsize=8)
    figures = {"loss_curves": _save(fig, out / "loss_curves.png")}

    fig, axes = _figure(len(chains))
    for ax, (p, q) in zip(axes[0], chains, strict=False):
        sel = [r for r in _finished(rows) if (r["p"], r["q"]) == (p, q)]
        pi1 = p / (p + q)
        ax.scatter(
            [p],
            [q],
            marker="*",
            s=300,
            facecolors="none",
            edgecolors="k",
            zorder=2,
            label=f"truth ({p:g}, {q:g})",
        )
        ax.scatter(
            [pi1],
            [1 - pi1],
            marker="X",
            s=150,
            facecolors="none",
            edgecolors="0.4",
            zorder=2,
            label=f"unigram point ({pi1:.3f}, {1 - pi1:.3f})",
        )
        for tie in (True, False):
            runs = [r for r in sel if bool(r["tie"]) == tie and r.get("p_hat") is not None]
            for j, r in enumerate(runs):
                m = [x for x in _curves(r) if x.get("p_hat") is not None]
                ax.plot(
                    [x["p_hat"] for x in m],
                    [x["q_hat"] for x in m],
                    color=colors[tie],
                    lw=0.8,
                    alpha=0.5,
                    zorder=3,
                )
                ax.scatter(
                    [r["p_hat"]],
                    [r["q_hat"]],
                    color=colors[tie],
                    s=25,
                    zorder=4,
                    label=("tied" if tie else "untied") + " (path, end)" if j == 0 else None,
                )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("p_hat = mean P(1 | x_n = 0)")
        ax.set_ylabel("q_hat = mean P(0 | x_n = 1)")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(f"estimated p, q during training: p={p:g}, q={q:g}", fontsize=10)
    figures["estimates"] = _save(fig, out / "estimates.png")

    def sel(p, q, tie):
        return lambda r: (r["p"], r["q"], bool(r["tie"])) == (p, q, tie)

    claims = [
        Claim(
            "tied, p=0.5, q=0.8 (p+q>1): ends at the unigram point (a local minimum)",
            sel(0.5, 0.8, True),
            ("unigram",),
        ),
        Claim(
            "untied, p=0.5, q=0.8: reaches the entropy rate (theta_pi is a saddle)",
            sel(0.5, 0.8, False),
            ("bigram",),
        ),
        Claim(
            "tied, p=0.2, q=0.3 (p+q<1): reaches the entropy rate", sel(0.2, 0.3, True), ("bigram",)
        ),
        Claim("untied, p=0.2, q=0.3: reaches the entropy rate", sel(0.2, 0.3, False), ("bigram",)),
        Claim(
            "tied, p=0.5, q=0.8: sits on the unigram plateau (at the unigram point for at least "
            "one evaluation)",
            sel(0.5, 0.8, True),
            holds=lambda r: r.get("plateau_first_step") is not None,
        ),
        Claim(
            "untied, p=0.5, q=0.8: does not sit on the unigram plateau (a saddle, passed quickly)",
            sel(0.5, 0.8, False),
            holds=lambda r: r.get("plateau_first_step") is None,
        ),
    ]
    return table, check_claims(rows, claims), figures


# ------------------------------------------------------------------------------ depth


def depth_report(rows: list[dict], out: Path) -> tuple[list, list, dict]:
    keys = ("layers",)
    table = cell_table(rows, keys)
    fin = _finished(rows)
    layers = sorted({r["layers"] for r in rows})
    fig, axes = _figure(2)
    ax = axes[0][0]
    means, stds = [], []
    for L in layers:
        m, s = _mean_std([r["final_eval_loss"] for r in fin if r["layers"] == L])
        means.append(m)
        stds.append(s)
    ok = [i for i, m in enumerate(means) if m is not None]
    ax.errorbar(
        [layers[i] for i in ok],
        [means[i] for i in ok],
        yerr=[stds[i] for i in ok],
        marker="o",
        capsize=4,
        label="final eval loss (mean ± std over seeds)",
    )
    if fin:
        _ref_lines(ax, fin[0]["entropy_rate"], fin[0]["unigram_loss"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(layers, [str(L) for L in layers])
    ax.set_xlabel("layers")
    ax.set_ylabel("final eval loss (nats)")
    ax.set_title("depth: p=0.5, q=0.8, tied, d=8")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    for L in layers:
        for j, r in enumerate(r for r in fin if r["layers"] == L):
            m = _curves(r)
            ax.plot(
                [x["step"] for x in m],
                [x["eval_loss"] for x in m],
                lw=1,
                alpha=0.7,
                color=f"C{layers.index(L)}",
                label=f"L={L}" if j == 0 else None,
            )
    if fin:
        _ref_lines(ax, fin[0]["entropy_rate"], fin[0]["unigram_loss"])
    ax.set_xlabel("step")
    ax.set_ylabel("eval loss (nats)")
    ax.legend(fontsize=8)
    figures = {"final_loss": _save(fig, out / "final_loss_vs_depth.png")}
    claims = [
        Claim(f"L={L}: reaches the entropy rate", lambda r, L=L: r["layers"] == L, ("bigram",))
        for L in layers
        if L >= 2
    ]
    claims.insert(
        0,
        Claim(
            "L=1 (tied, p+q>1): can end at the unigram point",
            lambda r: r["layers"] == 1,
            ("unigram",),
        ),
    )
    return table, check_claims(rows, claims), figures


# ----------------------------------------------------------------------- second order


def _window_label(w: Any) -> str:
    return "none" if w is None else str(w)


def second_order_report(rows: list[dict], out: Path) -> tuple[list, list, dict]:
    keys = ("layers", "window")
    table = [r | {"window": _window_label(r["window"])} for r in cell_table(rows, keys)]
    fin = _finished(rows)
    chain = KthOrderChain.lag(2, 0.2, 0.3)
    refs = [order_j_loss(chain, j) for j in range(3)]
    windows = sorted(
        {r["window"] for r in rows if r["layers"] == 1}, key=lambda w: (w is None, w or 0)
    )
    fig, axes = _figure(2, width=5.5)
    ax = axes[0][0]
    xs = list(range(len(windows)))
    ms = [
        _mean_std([r["final_eval_loss"] for r in fin if r["layers"] == 1 and r["window"] == w])
        for w in windows
    ]
    ok = [i for i, (m, _) in enumerate(ms) if m is not None]
    ax.errorbar(
        [xs[i] for i in ok],
        [ms[i][0] for i in ok],
        yerr=[ms[i][1] for i in ok],
        marker="o",
        capsize=4,
        label="1 layer (mean ± std)",
    )
    for k, L in enumerate(sorted({r["layers"] for r in rows if r["layers"] != 1})):
        m, s = _mean_std(
            [r["final_eval_loss"] for r in fin if r["layers"] == L and r["window"] is None]
        )
        if m is not None:
            ax.errorbar(
                [xs[-1] + 0.1 * (k + 1)],
                [m],
                yerr=[s],
                marker="s",
                capsize=4,
                color=f"C{k + 1}",
                label=f"{L} layers, full attention",
            )
    for j, (ref, style) in enumerate(zip(refs, (":", "-.", "--"), strict=False)):
        ax.axhline(ref, color="k", ls=style, lw=1, label=f"order-{j} loss {ref:.3f}")
    ax.set_xticks(xs, [_window_label(w) for w in windows])
    ax.set_xlabel("attention window M (none = full causal)")
    ax.set_ylabel("final eval loss (nats)")
    ax.set_title("lag-2 chain p=0.2, q=0.3")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    for i, (key, group) in enumerate(_cells(fin, keys).items()):
        for j, r in enumerate(group):
            m = _curves(r)
            ax.plot(
                [x["step"] for x in m],
                [x["eval_loss"] for x in m],
                lw=1,
                alpha=0.7,
                color=f"C{i}",
                label=f"L={key[0]}, window {_window_label(key[1])}" if j == 0 else None,
            )
    for ref, style in zip(refs, (":", "-.", "--"), strict=False):
        ax.axhline(ref, color="k", ls=style, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("eval loss (nats)")
    ax.legend(fontsize=7)
    figures = {"final_loss": _save(fig, out / "final_loss_vs_window.png")}
    claims = [
        Claim(
            f"1 layer, window {w}: reaches the order-2 loss (entropy rate)",
            lambda r, w=w: r["layers"] == 1 and r["window"] == w,
            ("bigram",),
        )
        for w in windows
        if w is not None and w <= 8
    ]
    claims += [
        Claim(
            f"{L} layer(s), full causal attention: does not reach the entropy rate",
            lambda r, L=L: r["layers"] == L and r["window"] is None,
            ("unigram", "neither"),
        )
        for L in sorted({r["layers"] for r in rows if r["window"] is None})
    ]
    return table, check_claims(rows, claims), figures


# ---------------------------------------------------------------------- phase diagram


def phase_report(rows: list[dict], out: Path) -> tuple[list, list, dict]:
    import numpy as np

    keys = ("p", "q", "tie")
    table = cell_table(rows, keys)
    grid = sorted({r["p"] for r in rows} | {r["q"] for r in rows})
    ties = sorted({bool(r["tie"]) for r in rows}, reverse=True)
    fin = _finished(rows)
    figures = {}
    for name, title, value in (
        (
            "unigram_fraction",
            "fraction of seeds ending at the unigram point",
            lambda g: sum(r["verdict"] == "unigram" for r in g) / len(g),
        ),
        (
            "plateau_fraction",
            "fraction of seeds that sat on the unigram plateau",
            lambda g: sum(r.get("plateau_first_step") is not None for r in g) / len(g),
        ),
        (
            "plateau_steps",
            "median steps on the plateau (seeds that visited it)",
            lambda g: (
                statistics.median(e)
                if (
                    e := [
                        r["plateau_steps"]
                        for r in g
                        if r.get("plateau_first_step") is not None and r.get("plateau_steps")
                    ]
                )
                else np.nan
            ),
        ),
        (
            "plateau_exit",
            "median plateau exit step",
            lambda g: (
                statistics.median(e)
                if (
                    e := [
                        r["plateau_exit_step"] for r in g if r.get("plateau_exit_step") is not None
                    ]
                )
                else np.nan
            ),
        ),
    ):
        fig, axes = _figure(len(ties), width=5.2, height=4.4)
        for ax, tie in zip(axes[0], ties, strict=False):
            mat = np.full((len(grid), len(grid)), np.nan)
            for i, q in enumerate(grid):
                for j, p in enumerate(grid):
                    g = [r for r in fin if (r["p"], r["q"], bool(r["tie"])) == (p, q, tie)]
                    if g:
                        mat[i, j] = value(g)
            vmax = 1.0 if name.endswith("_fraction") else None
            g_arr = np.array(grid)
            mids = (g_arr[1:] + g_arr[:-1]) / 2
            first = g_arr[0] - (mids[0] - g_arr[0] if len(grid) > 1 else 0.05)
            last = g_arr[-1] + (g_arr[-1] - mids[-1] if len(grid) > 1 else 0.05)
            edges = np.concatenate([[first], mids, [last]])
            im = ax.pcolormesh(edges, edges, mat, cmap="viridis", vmin=0, vmax=vmax)
            cut = 0.5 if vmax else (np.nanmax(mat) / 2 if np.isfinite(mat).any() else 0)
            for i, q in enumerate(grid):
                for j, p in enumerate(grid):
                    if not np.isnan(mat[i, j]):
                        ax.text(
                            p,
                            q,
                            f"{mat[i, j]:.2g}" if vmax else f"{mat[i, j]:.0f}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="w" if mat[i, j] < cut else "k",
                        )
            ax.set_xticks(grid, [f"{v:g}" for v in grid])
            ax.set_yticks(grid, [f"{v:g}" for v in grid])
            ax.set_xlabel("p = P(1|0)")
            ax.set_ylabel("q = P(0|1)")
            # the line p + q = 1 (red; blank cells there: i.i.d. chains, excluded)
            ax.plot([edges[0], edges[-1]], [1 - edges[0], 1 - edges[-1]], "r--", lw=1.2)
            ax.set_xlim(edges[0], edges[-1])
            ax.set_ylim(edges[0], edges[-1])
            ax.set_aspect("equal")
            ax.set_title(f"{'tied' if tie else 'untied'}: {title}", fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
        figures[name] = _save(fig, out / f"phase_{name}.png")
    claims = [
        Claim(
            "tied, p+q>1: ends at the unigram point",
            lambda r: bool(r["tie"]) and r["p"] + r["q"] > 1,
            ("unigram",),
        ),
        Claim(
            "tied, p+q<1: reaches the entropy rate",
            lambda r: bool(r["tie"]) and r["p"] + r["q"] < 1,
            ("bigram",),
        ),
        Claim(
            "tied, p+q>1: sits on the unigram plateau (at least one evaluation)",
            lambda r: bool(r["tie"]) and r["p"] + r["q"] > 1,
            holds=lambda r: r.get("plateau_first_step") is not None,
        ),
    ]
    if False in ties:
        claims.append(
            Claim("untied: reaches the entropy rate", lambda r: not bool(r["tie"]), ("bigram",))
        )
    return table, check_claims(rows, claims), figures


# ---------------------------------------------------------------------------- registry


EXPERIMENTS: dict[str, tuple[Callable, Callable, str]] = {
    "tying": (tying_specs, tying_report, "weight tying: tied vs untied, p+q<1 vs p+q>1"),
    "depth": (depth_specs, depth_report, "depth: L = 1, 2, 4, 8 on p=0.5, q=0.8"),
    "second-order": (
        second_order_specs,
        second_order_report,
        "lag-2 chain: attention windows vs depth",
    ),
    "phase-diagram": (phase_specs, phase_report, "(p, q) grid: where the unigram trap happens"),
}


# Wall time at the paper's settings on this project's 2-core CPU (two worker processes, one
# torch thread each; other work shared the machine at times): docs/results/paper/*/RUN.md.
MEASURED = {
    "tying": "10 seeds per cell (40 runs): 4 min",
    "depth": "5 seeds per depth (20 runs): 4 min",
    "second-order": "5 seeds per cell (45 runs): about 50 min (3 seeds: 28 min)",
    "phase-diagram": "10 seeds per cell (400 runs): 46 min",
}


def _settings_line(specs: list[dict]) -> str:
    train = specs[0]["train"]
    return ", ".join(f"{k}={v}" for k, v in train.items())


def reproduce(
    name: str,
    out_dir: str | os.PathLike | None = None,
    size: str = "full",
    seeds: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> Reproduction:
    """Run experiment `name` (see EXPERIMENTS) at `size` with `seeds` seeds per cell (default:
    default_seeds) and write figures, summary.csv and summary.md to out_dir (default
    runs/NAME or runs/NAME-SIZE). An out_dir holding this experiment at another size or seed
    count is refused (FileExistsError) unless force=True (see run_sweep)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(EXPERIMENTS)}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    n_seeds = seeds or default_seeds(name, size)
    out = (
        Path(out_dir)
        if out_dir is not None
        else Path("runs") / (name if size == "full" else f"{name}-{size}")
    )
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; a reproduction's output must be a directory")
    out.mkdir(parents=True, exist_ok=True)
    make_specs, report, description = EXPERIMENTS[name]
    specs = make_specs(size, n_seeds)
    t0 = time.perf_counter()
    result: SweepResult = run_sweep(
        specs, out / "sweep", workers=workers, progress=progress, force=force
    )
    wall = time.perf_counter() - t0
    table, claims, figures = report(result.rows, out)
    files = {"summary_csv": write_csv(out / "summary.csv", table)}
    run_walls = [
        r["wall_seconds"] for r in result.rows if isinstance(r.get("wall_seconds"), (int, float))
    ]
    md = _markdown(
        name, description, size, n_seeds, specs, result, table, claims, figures, wall, run_walls
    )
    (out / "summary.md").write_text(md)
    files["summary_md"] = out / "summary.md"
    files |= {k: v for k, v in result.files.items()}
    return Reproduction(name, size, out, table, claims, figures, files, wall, md)


def claims_table(claims: list[dict]) -> str:
    rows = [
        {
            "claim": c["claim"],
            "held for (seeds, Wilson 95%)": fmt_fraction(c["held"], c["runs"]),
            "status": c.get("status") or claim_status(c["held"], c["runs"]),
            "verdicts (bigram/unigram/neither)": "{bigram}/{unigram}/{neither}".format(
                **c["verdicts"]
            ),
        }
        for c in claims
    ]
    return markdown_table(rows)


def _markdown(
    name, description, size, n_seeds, specs, result, table, claims, figures, wall, run_walls
) -> str:
    failed = [r for r in result.rows if r.get("status") != "finished"]
    lines = [
        f"# Reproduction: {name} ({size})",
        "",
        description + ".",
        "",
        f"- settings: {_settings_line(specs)}; seeds per cell: {n_seeds}"
        + ("" if size == "full" else f" (size {size}: NOT the paper's full settings)"),
        f"- runs: {len(result.rows)} ({len(failed)} not finished); wall time of this call "
        f"{wall:.0f} s (runs finished earlier are reused, not retrained)"
        + (
            f"; per run {statistics.fmean(run_walls):.1f} s mean (sum {sum(run_walls):.0f} s)"
            if run_walls
            else ""
        ),
        "- verdict per run (training.verdicts): bigram = reached the optimal (order-k) predictor, "
        "unigram = predicts the stationary marginal, neither = in between or elsewhere.",
        "",
        "## The paper's claims, per seed",
        "",
        'A claim is read as "it happens for most seeds": held when the whole Wilson 95% '
        "interval of its fraction of seeds lies above 1/2, not held when it lies below, "
        "undecided when it contains 1/2 (training.stats). excess_loss: the final loss minus "
        "the true predictor's loss on the same evaluation tokens (the KL to the true law, "
        "nats), mean [bootstrap 95% interval] over seeds.",
        "",
        claims_table(claims),
        "## Per cell",
        "",
        markdown_table(table),
        "## Figures",
        "",
    ]
    lines += [f"![{k}]({p.name})" for k, p in figures.items()]
    if failed:
        lines += ["", "## Runs that did not finish", ""]
        lines += [f"- {r['run_dir']}: {r.get('status')} {r.get('error') or ''}" for r in failed]
    return "\n".join(lines) + "\n"
