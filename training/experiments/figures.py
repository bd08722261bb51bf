"""The drawing helpers of the reproductions' figures, shared by the four reports: a row of
panels and its file, loss curves per run, reference lines, mean ± std markers, a heatmap
over the (p, q) grid, and the labels of a panel. matplotlib and numpy are imported only
when a figure is drawn.

The reference lines of loss curves are the true predictor's and the unigram predictor's loss
on the runs' own held-out batches (``sample_references``), not the entropy rate and H(pi):
an eval loss is measured on a finite sample whose own optimum differs from the entropy rate
(0.010 nats above it for p=0.2, q=0.3 on the quick demo's 16 x 256 tokens), a line a model's curve could never reach."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

from training.experiments.tables import mean_std
from training.runs import read_json, read_metrics

EVAL_LOSS = "eval loss (nats)"
FINAL_LOSS = "final eval loss (nats)"
ORDER_STYLES = (":", "-.", "--")  # the order-0, 1, 2 reference losses


def figure_row(ncols: int = 1, width: float = 5.0, height: float = 4.0):
    """A figure of `ncols` panels side by side, each `width` x `height` inches: (fig, axes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)
    return fig, axes[0]


def save_figure(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def run_curves(row: dict) -> list[dict]:
    """The metrics of a run (its metrics.jsonl), one dict per evaluation."""
    return read_metrics(Path(row["run_dir"]) / "metrics.jsonl")


def label_axes(
    ax,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    *,
    title_size: float | None = None,
    legend_size: float | None = None,
    legend_loc: str | None = None,
) -> None:
    """Axis labels, the title (at `title_size` when given) and, when `legend_size` is given,
    the legend (at `legend_loc` when given): the last call on a panel."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title, **({"fontsize": title_size} if title_size is not None else {}))
    if legend_size is not None:
        ax.legend(fontsize=legend_size, **({"loc": legend_loc} if legend_loc else {}))


def plot_loss_curves(
    ax,
    runs: list[dict],
    group: Callable[[dict], Hashable],
    style: Callable[[Hashable], tuple[str, str]],
) -> None:
    """The eval loss against the step of each run, in the order given: `group(run)` names
    its group, `style(group)` gives the group's (color, legend label); the label is put on
    the first run of each group only."""
    labelled = set()
    for r in runs:
        key = group(r)
        color, label = style(key)
        m = run_curves(r)
        ax.plot(
            [x["step"] for x in m],
            [x["eval_loss"] for x in m],
            color=color,
            alpha=0.7,
            lw=1,
            label=None if key in labelled else label,
        )
        labelled.add(key)


_SAMPLE_CACHE: dict[str, dict[str, float] | None] = {}


def sample_references(row: dict) -> dict[str, float] | None:
    """The losses (nats) of the true predictor ("true": the chain's next-token law) and of the
    unigram predictor ("unigram") on the run's own held-out batches, the tokens its eval_loss
    was measured on: ``EvalSet(chain, train, seed)`` rebuilt from its config.json on the
    device its summary names (the sampler's stream depends on the device). None for
    in-context chains, or when the run's directory, config or device is not available here.
    Runs sharing their held-out batches (one eval_seed) are computed once."""
    import json

    import torch

    from training.chains import InContextChain
    from training.runs import CONFIG, SUMMARY, parse_run_config
    from training.trainer.evaluation import EvalSet

    run_dir = Path(row.get("run_dir", ""))
    if not (run_dir / CONFIG).is_file():
        return None
    config = read_json(run_dir / CONFIG)
    summary = read_json(run_dir / SUMMARY) if (run_dir / SUMMARY).is_file() else {}
    device = torch.device(str(summary.get("device", "cpu")))
    if device.type == "cuda" and not torch.cuda.is_available():
        return None
    _, chain, train_config, seed = parse_run_config(config, str(run_dir / CONFIG))
    if isinstance(chain, InContextChain):
        return None
    eval_seed = seed if train_config.eval_seed is None else train_config.eval_seed
    shape = (train_config.eval_batches, train_config.batch, train_config.seq_len)
    key = json.dumps([chain.to_dict(), shape, eval_seed, device.type], sort_keys=True)
    if key not in _SAMPLE_CACHE:
        eval_set = EvalSet(chain, train_config, seed, device)
        sums = {"true": 0.0, "unigram": 0.0}
        n = 0
        for tokens, true, uni in zip(eval_set.tokens, eval_set.true, eval_set.unigram, strict=True):
            targets = tokens[:, 1:, None]
            for name, probs in (("true", true), ("unigram", uni)):
                sums[name] += float(-probs.double().gather(-1, targets).log().sum())
            n += targets.numel()
        _SAMPLE_CACHE[key] = {name: total / n for name, total in sums.items()}
    return _SAMPLE_CACHE[key]


def reference_lines(
    ax, entropy_rate: float, unigram: float, runs: Sequence[dict] | None = None
) -> None:
    """The optimal and the unigram loss as labelled lines: with ``runs``, those of the true
    and the unigram predictor on the runs' held-out batches (``sample_references``; a line
    per distinct batch set), which their eval losses can reach; else (or where the batches
    cannot be rebuilt) the entropy rate and H(pi)."""
    samples = [sample_references(r) for r in runs or []]
    if not samples or any(s is None for s in samples):
        ax.axhline(entropy_rate, color="k", ls="--", lw=1, label=f"entropy rate {entropy_rate:.3f}")
        ax.axhline(unigram, color="0.5", ls=":", lw=1.5, label=f"unigram loss {unigram:.3f}")
        return
    distinct = list({(round(s["true"], 9), round(s["unigram"], 9)): s for s in samples}.values())
    where = "these eval tokens" if len(distinct) == 1 else f"each of {len(distinct)} eval sets"
    for i, s in enumerate(distinct):
        first = i == 0
        true_label = f"true predictor on {where} {s['true']:.4f} (entropy rate {entropy_rate:.4f})"
        ax.axhline(s["true"], color="k", ls="--", lw=1, label=true_label if first else None)
        uni_label = f"unigram predictor on {where} {s['unigram']:.4f}"
        ax.axhline(s["unigram"], color="0.5", ls=":", lw=1.5, label=uni_label if first else None)


def order_lines(ax, refs: Sequence[float], labelled: bool = True) -> None:
    """The order-j losses refs[j] (j = 0, 1, 2), labelled in the legend or not."""
    for j, (ref, style) in enumerate(zip(refs, ORDER_STYLES, strict=False)):
        label = f"order-{j} loss {ref:.3f}" if labelled else None
        ax.axhline(ref, color="k", ls=style, lw=1, label=label)


def errorbar_means(
    ax,
    xs: Sequence[float],
    samples: Sequence[list],
    *,
    skip_empty: bool = False,
    **style,
) -> None:
    """Mean ± std of each sample at its x (samples with no number left out; with
    skip_empty, nothing is drawn when no sample has one). `style`: errorbar's marker,
    color, label...; capsize 4 unless given."""
    stats = [mean_std(s) for s in samples]
    ok = [i for i, (m, _) in enumerate(stats) if m is not None]
    if skip_empty and not ok:
        return
    ax.errorbar(
        [xs[i] for i in ok],
        [stats[i][0] for i in ok],
        yerr=[stats[i][1] for i in ok],
        **({"capsize": 4} | style),
    )


def depth_figure(fin: list[dict], title: str, references: Callable, log_x: bool = False):
    """The depth figure of a reproduction: left, the final eval loss per depth (mean ± std
    over the finished runs `fin`); right, every run's eval loss against the step, coloured by
    depth; `references(ax)` draws the reference lines on both."""
    layers = sorted({r["layers"] for r in fin})
    fig, (left, right) = figure_row(2)
    errorbar_means(
        left,
        layers,
        [[r["final_eval_loss"] for r in fin if r["layers"] == L] for L in layers],
        marker="o",
        label="final eval loss (mean ± std over seeds)",
    )
    if log_x:
        left.set_xscale("log", base=2)
    left.set_xticks(layers, [str(L) for L in layers])
    plot_loss_curves(
        right,
        [r for L in layers for r in fin if r["layers"] == L],
        lambda r: r["layers"],
        lambda L: (f"C{layers.index(L)}", f"L={L}"),
    )
    if fin:
        references(left)
        references(right)
    label_axes(left, "layers", FINAL_LOSS, title, legend_size=7)
    label_axes(right, "step", EVAL_LOSS, legend_size=7)
    return fig


def pq_heatmap(fig, ax, grid: list[float], mat, vmax: float | None, title: str) -> None:
    """A heatmap of mat[i, j], the value at (p, q) = (grid[j], grid[i]) (NaN: no runs), each
    cell annotated (2 significant digits when vmax is given, else whole numbers), the line
    p + q = 1 dashed red, and a colorbar."""
    import numpy as np

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
    # the line p + q = 1 (red; blank cells there: i.i.d. chains, excluded)
    ax.plot([edges[0], edges[-1]], [1 - edges[0], 1 - edges[-1]], "r--", lw=1.2)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(edges[0], edges[-1])
    ax.set_aspect("equal")
    label_axes(ax, "p = P(1|0)", "q = P(0|1)", title, title_size=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
