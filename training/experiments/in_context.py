"""The in-context reproduction's report (``markov-lens reproduce in-context``): the runs of the
three blocks of ``presets.in_context_specs``, judged against the four in-context references
(nats, Monte Carlo at the training length: add-alpha (the optimal predictor, Bayes under
Dirichlet rows), in-context unigram, uniform, oracle).

Blocks and what is read from each run (its summary.json; verdicts from training.verdicts with
L* = the add-alpha loss and L_u = the in-context unigram loss, gap = L_u - L*):

- stages (Edelman et al. 2024; 2 layers, attention-only): ``stage_steps`` = updates spent at
  the in-context unigram stage (summary plateau_steps: evaluations with |r - 1| <= 0.1 and
  u <= 0.1), ``leave_step`` = the first evaluation with r < 1/2 after one with r >= 1/2 (the
  loss leaves the unigram stage; summary plateau_exit_step).
- depth (the paper's abstract, in its own regime: one kernel per minibatch): the outcome per
  seed, "induction in context" (verdict bigram: KL to the add-alpha predictor <= 0.2 gap, in
  context dependence >= 0.5), "in-context unigram" (verdict unigram) or the verdict itself
  (neither, not converged, undecided). With a
  fresh kernel per minibatch no kernel can be stored in the weights: a 1-layer model that
  "learns the kernel" can at best learn the prior's mean, i.e. stay kernel-free.
- constant depth (Rajaraman et al. 2024): which (order k, layers L) reach the add-alpha loss
  within the stated tolerance: verdict bigram, for k >= 2 with order k reached (the order
  labels read the add-alpha order-j losses, j = 0..k).

The loss tells only whether the in-context bigram is computed; the heads that compute it are
the interp tools' business (previous-token / induction scores, path patching), which training
must not import.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from training.experiments.claims import Claim, check_claims
from training.experiments.figures import (
    EVAL_LOSS,
    depth_figure,
    errorbar_means,
    figure_row,
    label_axes,
    plot_loss_curves,
    save_figure,
)
from training.experiments.tables import cell_table, finished_runs
from training.runs import SUMMARY, read_json

REFERENCE_STYLES = {  # reference name -> (legend word, line style)
    "add_alpha": ("add-alpha (optimal)", "--"),
    "in_context_unigram": ("in-context unigram", ":"),
    "uniform": ("uniform", "-."),
    "oracle": ("oracle (knows the kernel)", (0, (1, 4))),
}
OUTCOMES = {"bigram": "induction in context", "unigram": "in-context unigram"}


def block_of(row: dict) -> str:
    """stages, depth or constant-depth: which block of in_context_specs a row belongs to."""
    if row.get("group_size") == "batch":
        return "depth"
    if row.get("mlp") is False:
        return "stages"
    return "constant-depth"


def _with_summary(row: dict) -> dict[str, Any]:
    """The row with its block, outcome and the four references (from its summary.json)."""
    out = dict(row) | {"block": block_of(row), "order": row.get("order") or 1}
    out["doubly_stochastic"] = bool(row.get("doubly_stochastic"))
    path = Path(row["run_dir"]) / SUMMARY
    summary = read_json(path) if row.get("status") == "finished" and path.exists() else {}
    refs = (summary.get("references") or {}).get("in_context_references") or {}
    for name in REFERENCE_STYLES:
        out[f"{name}_loss"] = refs.get(name)
    out["outcome"] = OUTCOMES.get(row.get("verdict"), row.get("verdict") or "no verdict")
    out["stage_steps"] = row.get("plateau_steps")
    out["leave_step"] = row.get("plateau_exit_step")
    return out


def in_context_reference_lines(ax, row: dict) -> None:
    """The four in-context references of a run (its *_loss fields), as labelled lines."""
    for name, (word, style) in REFERENCE_STYLES.items():
        value = row.get(f"{name}_loss")
        if value is not None:
            ax.axhline(value, color="k", ls=style, lw=1, label=f"{word} {value:.3f}")


def _cell_rows(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    table = cell_table(rows, keys)
    for line in table:
        group = [r for r in finished_runs(rows) if all(r[k] == line[k] for k in keys)]
        counts: dict[str, int] = {}
        for r in group:
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        line["outcomes"] = ", ".join(f"{o} {n}" for o, n in counts.items())
        for name in REFERENCE_STYLES:
            line[f"{name}_loss"] = group[0][f"{name}_loss"] if group else None
        stays = [r["stage_steps"] for r in group if r["stage_steps"] is not None]
        line["stage_steps_median"] = statistics.median(stays) if stays else None
    return table


def _stages(rows: list[dict], out: Path) -> tuple[dict, list]:
    fin = finished_runs(rows)
    priors = (False, True)
    fig, axes = figure_row(2)
    for ax, ds in zip(axes, priors, strict=True):
        sel = [r for r in fin if r["doubly_stochastic"] == ds]
        plot_loss_curves(ax, sel, lambda r: r["seed"], lambda s: (f"C{s % 10}", f"seed {s}"))
        if sel:
            in_context_reference_lines(ax, sel[0])
        prior = "doubly stochastic" if ds else "Dirichlet(1) rows"
        label_axes(
            ax, "step", EVAL_LOSS, f"stages: 2 layers, attention-only, {prior}", legend_size=7
        )
    figures = {"stages": save_figure(fig, out / "stages.png")}
    exits = [r["leave_step"] for r in fin if not r["doubly_stochastic"]]
    never = max((r.get("steps") or 0 for r in fin), default=0) + 1  # did not leave: after the end
    dirichlet_median = statistics.median([e if e is not None else never for e in exits or [never]])

    def dirichlet(r):
        return r["block"] == "stages" and not r["doubly_stochastic"]

    claims = [
        Claim(
            "stages, Dirichlet prior: sits on the in-context unigram stage (at least one "
            "evaluation there)",
            dirichlet,
            holds=lambda r: r.get("plateau_first_step") is not None,
        ),
        Claim(
            "stages, Dirichlet prior: leaves it and reaches the add-alpha loss (verdict bigram)",
            dirichlet,
            ("bigram",),
        ),
        Claim(
            "stages, doubly stochastic prior: leaves the unigram stage (r < 1/2) before the "
            f"Dirichlet seeds' median step ({dirichlet_median:g})",
            lambda r: r["block"] == "stages" and r["doubly_stochastic"],
            holds=lambda r: r["leave_step"] is not None and r["leave_step"] < dirichlet_median,
        ),
    ]
    return figures, claims


def _depth(rows: list[dict], out: Path) -> tuple[dict, list]:
    fin = finished_runs(rows)
    layers = sorted({r["layers"] for r in rows})
    title = "depth: one binary kernel per minibatch"
    fig = depth_figure(fin, title, lambda ax: in_context_reference_lines(ax, fin[0]))
    figures = {"depth": save_figure(fig, out / "depth.png")}
    claims = [
        Claim(
            "depth, 1 layer: does not compute the in-context bigram (no induction head)",
            lambda r: r["block"] == "depth" and r["layers"] == 1,
            ("unigram", "neither"),
        )
    ]
    claims += [
        Claim(
            f"depth, {L} layers: reaches the add-alpha loss (induction in context)",
            lambda r, L=L: r["block"] == "depth" and r["layers"] == L,
            ("bigram",),
        )
        for L in layers
        if L >= 2
    ]
    return figures, claims


def _constant_depth(rows: list[dict], out: Path) -> tuple[dict, list]:
    fin = finished_runs(rows)
    orders = sorted({r["order"] for r in rows})
    layers = sorted({r["layers"] for r in rows})
    fig, axes = figure_row(1)
    for i, L in enumerate(layers):
        errorbar_means(
            axes[0],
            [k + 0.05 * i for k in orders],
            [
                [r.get("final_kl") for r in fin if (r["order"], r["layers"]) == (k, L)]
                for k in orders
            ],
            marker="o",
            color=f"C{i}",
            label=f"{L} layers",
        )
    axes[0].set_xticks(orders, [str(k) for k in orders])
    label_axes(
        axes[0],
        "order k of the in-context chain",
        "final KL to the add-alpha predictor (nats)",
        "constant depth: a kernel per sequence",
        legend_size=8,
    )
    figures = {"constant_depth": save_figure(fig, out / "constant_depth.png")}
    claims = [
        Claim(
            f"constant depth, order {k}, {L} layers: reaches the add-alpha loss (verdict bigram, "
            "order k)",
            lambda r, k=k, L=L: (
                r["block"] == "constant-depth" and (r["order"], r["layers"]) == (k, L)
            ),
            ("bigram",),
        )
        for k in orders
        for L in layers
    ]
    return figures, claims


def in_context_report(rows: list[dict], out: Path) -> tuple[list, list, dict]:
    """(per-cell table, claims checked per seed, figures) of the three blocks (module doc)."""
    rows = [_with_summary(r) for r in rows]
    keys = ("block", "layers", "order", "doubly_stochastic")
    table = _cell_rows(rows, keys)
    figures: dict[str, Path] = {}
    claims: list[Claim] = []
    blocks = (("stages", _stages), ("depth", _depth), ("constant-depth", _constant_depth))
    for name, make in blocks:
        sel = [r for r in rows if r["block"] == name]
        if sel:
            f, c = make(sel, out)
            figures |= f
            claims += c
    return table, check_claims(rows, claims), figures
