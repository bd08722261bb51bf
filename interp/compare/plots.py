"""Figures and the markdown summary of a comparison (``interp.compare.Comparison``).

Every figure is a matplotlib ``Figure`` built without pyplot (no global state, nothing to
close). ``plot_curves`` also serves single runs (reports, notebooks): metric curves with the
two reference losses (optimal L*, dashed; unigram L_u, dotted), the relative excess
r = KL / (L_u - L*) (0: the kernel, 1: the marginal) and, for binary first-order chains, the
estimated p and q against the true ones.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from training.stats import finite

PAIR_COLOURS = ("tab:blue", "tab:orange")
MAX_HEATMAP_POSITIONS = 32


def _series(metrics: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(m["step"], m[key]) for m in metrics if finite(m.get(key))]
    if not pts:
        return np.array([]), np.array([])
    steps, values = zip(*pts, strict=True)
    return np.asarray(steps, float), np.asarray(values, float)


def plot_curves(subjects: list, title: str | None = None) -> Figure:
    """Metric curves of one or more Subjects (``interp.compare``) overlaid: eval loss with
    each chain's optimal and unigram losses, relative excess, and p_hat / q_hat with the true
    p, q when the records have them. A checkpoint's step is a vertical line."""
    has_pq = any(any("p_hat" in m for m in s.metrics) for s in subjects)
    n_panels = 3 if has_pq else 2
    fig = Figure(figsize=(4.4 * n_panels, 3.6), layout="constrained")
    axes = fig.subplots(1, n_panels)
    ax_loss, ax_rel = axes[0], axes[1]
    drawn_refs: list[tuple[float, float]] = []
    for i, s in enumerate(subjects):
        colour = f"C{i}"
        x, y = _series(s.metrics, "eval_loss")
        if len(x):
            ax_loss.plot(x, y, color=colour, lw=1.4, label=s.label)
        x, y = _series(s.metrics, "rel_excess")
        if len(x):
            ax_rel.plot(x, y, color=colour, lw=1.4, label=s.label)
        refs = s.references
        if refs:
            pair = (round(refs["optimal_loss"], 9), round(refs["unigram_loss"], 9))
            same = pair in drawn_refs
            ref_colour = "k" if len(subjects) == 1 else colour
            if not same:
                drawn_refs.append(pair)
                ax_loss.axhline(
                    refs["optimal_loss"],
                    color=ref_colour,
                    ls="--",
                    lw=0.9,
                    label=f"optimal L* = {refs['optimal_loss']:.4f}",
                )
                ax_loss.axhline(
                    refs["unigram_loss"],
                    color=ref_colour,
                    ls=":",
                    lw=0.9,
                    label=f"unigram L_u = {refs['unigram_loss']:.4f}",
                )
        if s.kind == "checkpoint" and s.step is not None:
            for ax in axes:
                ax.axvline(s.step, color=colour, lw=0.8, alpha=0.6)
        if has_pq:
            ax_pq = axes[2]
            for key, ls in (("p_hat", "-"), ("q_hat", "--")):
                x, y = _series(s.metrics, key)
                if len(x):
                    ax_pq.plot(x, y, color=colour, ls=ls, lw=1.3, label=f"{s.label} {key}")
            if refs and "p" in refs:
                ax_pq.axhline(refs["p"], color="grey", ls="-", lw=0.8)
                ax_pq.axhline(refs["q"], color="grey", ls="--", lw=0.8)
    ax_rel.axhline(0.0, color="k", ls="--", lw=0.8)
    ax_rel.axhline(1.0, color="k", ls=":", lw=0.8)
    ax_rel.axhline(0.5, color="grey", lw=0.6, alpha=0.6)
    ax_loss.set_ylabel("eval loss (nats)")
    ax_rel.set_ylabel("relative excess KL / (L_u - L*)")
    ax_rel.set_title("0 = kernel, 1 = marginal", fontsize=9)
    if has_pq:
        axes[2].set_ylabel("estimated transition probability")
        axes[2].set_title("p_hat = P(1|0), q_hat = P(0|1); grey: true", fontsize=9)
    for ax in axes:
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_transitions(table, calib: dict[str, dict[str, list[float]]]) -> Figure:
    """Predicted transition probabilities against the truth for each model in ``calib``
    (label -> ``interp.compare.calibration``): the context-mean table (a ``TransitionTable``,
    fixed chains; bars: true and each model) and predicted-vs-true probabilities, binned."""
    labels = list(calib)
    n_panels = 2 if table is not None else 1
    fig = Figure(
        figsize=(5.2 * n_panels + (1.5 if table is not None else 0), 3.8), layout="constrained"
    )
    axes = np.atleast_1d(fig.subplots(1, n_panels))
    if table is not None:
        ax = axes[0]
        S = table.true.shape[1]
        names = [f"{c}->{s}" for c in table.contexts for s in range(S)]
        x = np.arange(len(names))
        width = 0.8 / (len(labels) + 1)
        ax.bar(
            x - width * len(labels) / 2,
            table.true.flatten().numpy(),
            width,
            color="grey",
            label="true kernel",
        )
        for i, lab in enumerate(labels):
            ax.bar(
                x + width * (i + 1 - len(labels) / 2),
                table.predicted[lab].flatten().numpy(),
                width,
                color=PAIR_COLOURS[i % 2] if len(labels) > 1 else "tab:blue",
                label=lab,
            )
        ax.set_xticks(x, names, rotation=90 if len(names) > 12 else 0, fontsize=7)
        ax.set_ylabel("P(next | last k tokens)")
        ax.set_ylim(0, 1)
        ax.set_title("mean predicted transition probabilities", fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[-1]
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for i, lab in enumerate(labels):
        c = calib[lab]
        ax.plot(c["true"], c["predicted"], marker="o", ms=3, color=PAIR_COLOURS[i % 2], label=lab)
    ax.set_xlabel("true probability (binned)")
    ax.set_ylabel("mean predicted probability")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("predicted vs true next-token probabilities", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def plot_attention_comparison(cmp) -> Figure:
    """Attention of A, B and A - B on the first input sequence, one row per (layer, head);
    the difference column only when both have the same layers and heads."""
    (la, lb) = cmp.labels
    pa, pb = cmp.patterns[la].float().numpy(), cmp.patterns[lb].float().numpy()
    same = pa.shape == pb.shape
    heads_a = [(layer, h) for layer in range(pa.shape[0]) for h in range(pa.shape[1])]
    heads_b = [(layer, h) for layer in range(pb.shape[0]) for h in range(pb.shape[1])]
    n_rows = max(len(heads_a), len(heads_b))
    n_cols = 3 if same else 2
    fig = Figure(figsize=(3.1 * n_cols + 0.6, 2.8 * n_rows + 0.5), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    n = pa.shape[-1]
    tokens = cmp.tokens[0, :n].tolist()
    mask = np.triu(np.ones((n, n), dtype=bool), k=1)
    im = im_diff = None
    for r in range(n_rows):
        for c, (pat, heads, lab) in enumerate(((pa, heads_a, la), (pb, heads_b, lb))):
            ax = axes[r, c]
            if r >= len(heads):
                ax.axis("off")
                continue
            layer, h = heads[r]
            im = ax.imshow(
                np.ma.masked_array(pat[layer, h], mask),
                vmin=0,
                vmax=1,
                cmap="viridis",
                interpolation="nearest",
            )
            ax.set_title(f"{lab}: L{layer}H{h}", fontsize=8)
        if same:
            layer, h = heads_a[r]
            diff = pa[layer, h] - pb[layer, h]
            im_diff = axes[r, 2].imshow(
                np.ma.masked_array(diff, mask),
                vmin=-1,
                vmax=1,
                cmap="RdBu_r",
                interpolation="nearest",
            )
            axes[r, 2].set_title(f"A - B: L{layer}H{h}", fontsize=8)
        for ax in axes[r]:
            if ax.axison and n <= MAX_HEATMAP_POSITIONS:
                ax.set_xticks(range(n), [str(t) for t in tokens], fontsize=5)
                ax.set_yticks(range(n), [str(t) for t in tokens], fontsize=5)
    if im is not None:
        fig.colorbar(im, ax=axes[:, :2], shrink=0.6, label="attention weight")
    if im_diff is not None:
        fig.colorbar(im_diff, ax=axes[:, 2], shrink=0.6, label="difference")
    fig.suptitle(
        "attention on the first input sequence (query rows, key columns; token values)", fontsize=9
    )
    return fig


PAIR_STYLES = (("-", "o"), ("--", "s"))  # A: solid, circles; B: dashed, squares


def plot_offsets(cmp) -> Figure:
    """Mean attention weight against offset d = i - j (interp.attention.attention_summary):
    A in blues, solid with circles, B in oranges, dashed with squares (a shade per (layer,
    head)); each model's uniform attention over the same keys dotted in its colour (one line
    when they agree); the y range fits the data."""
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    from interp.attention import draw_uniform_profile

    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    uniforms = []
    for i, lab in enumerate(cmp.labels):
        s = cmp.attention[lab]
        prof = np.asarray(s["offset_profile"])  # [layer, head, offset]
        n_lines = prof.shape[0] * prof.shape[1]
        shades = colormaps["Blues" if i == 0 else "Oranges"](np.linspace(0.95, 0.5, n_lines))
        ls, marker = PAIR_STYLES[i]
        for k, (layer, h) in enumerate(np.ndindex(prof.shape[:2])):
            ax.plot(
                s["offsets"],
                prof[layer, h],
                ls=ls,
                marker=marker,
                ms=3,
                color=shades[k],
                label=f"{lab} L{layer}H{h}",
            )
        if s.get("uniform_profile") is not None:
            uniforms.append((lab, np.asarray(s["uniform_profile"])))
    same = len(uniforms) == 2 and uniforms[0][1].shape == uniforms[1][1].shape
    same = same and np.allclose(uniforms[0][1], uniforms[1][1], rtol=0, atol=1e-12)
    for i, (lab, u) in enumerate(uniforms[:1] if same else uniforms):
        n_before = len(ax.lines)
        draw_uniform_profile(ax, u, colour="k" if same else PAIR_COLOURS[i])
        if not same:
            for line in ax.lines[n_before:]:
                line.set_label(f"{lab}: {line.get_label()}")
    ax.set_xlabel("offset d = i - j (0 = the token itself)")
    ax.set_ylabel("mean attention weight")
    ax.margins(y=0.08)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(
        f"attention by relative offset ({cmp.labels[0]} solid, {cmp.labels[1]} dashed)",
        fontsize=9,
    )
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return fig


def plot_cka(cka, labels: tuple[str, str]) -> Figure:
    """Heatmap of linear CKA between every hook point of A (rows) and B (columns)."""
    m = cka.matrix.numpy()
    fig = Figure(
        figsize=(1.6 + 0.5 * len(cka.names_b), 1.4 + 0.4 * len(cka.names_a)), layout="constrained"
    )
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(m), vmin=0, vmax=1, cmap="magma", interpolation="nearest")
    ax.set_xticks(range(len(cka.names_b)), cka.names_b, rotation=70, fontsize=7)
    ax.set_yticks(range(len(cka.names_a)), cka.names_a, fontsize=7)
    if m.size <= 400:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if math.isfinite(m[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{m[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=5,
                        color="white" if m[i, j] < 0.6 else "black",
                    )
    ax.set_ylabel(labels[0])
    ax.set_xlabel(labels[1])
    ax.set_title(f"linear CKA on {cka.n_inputs} (sequence, position) inputs", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def plot_distances(distances) -> Figure | None:
    """Two panels, one quantity each, per parameter and for the totals: the relative distance
    ||A - B|| / (||A|| + ||B||) (y from 0) and the cosine (y from 0, or from the lowest
    cosine when one is negative; nan: no bar). LayerNorm parameters hatched, the total
    (without LayerNorm) and LayerNorm together as the last two bars. None when the shapes
    differ."""
    from interp.compare.distances import is_layernorm

    if not distances.comparable:
        return None
    rows = list(distances.rows)
    names = [r["name"] for r in rows]
    hatch = ["//" if is_layernorm(n) else "" for n in names]
    rows.append(distances.total)
    names.append("total (no LayerNorm)")
    hatch.append("")
    if distances.layernorm is not None:
        rows.append(distances.layernorm)
        names.append("LayerNorm, all")
        hatch.append("//")
    x = np.arange(len(names))
    colours = ["tab:blue"] * len(distances.rows) + ["0.25"] * (len(names) - len(distances.rows))
    fig = Figure(figsize=(max(6.0, 0.42 * len(names) + 1.5), 5.6), layout="constrained")
    ax_rel, ax_cos = fig.subplots(2, 1, sharex=True)
    for ax, key, label in (
        (ax_rel, "relative", "relative distance ||A-B|| / (||A||+||B||)"),
        (ax_cos, "cosine", "cosine(A, B)"),
    ):
        values = np.array([r[key] if finite(r[key]) else np.nan for r in rows], float)
        bars = ax.bar(x, np.nan_to_num(values, nan=0.0), 0.7, color=colours, edgecolor="w")
        for bar, h, v in zip(bars, hatch, values, strict=True):
            bar.set_hatch(h)
            if not np.isfinite(v):
                bar.set_visible(False)
        shown = values[np.isfinite(values)]
        top = float(shown.max()) if shown.size else 1.0
        bottom = min(0.0, float(shown.min())) if shown.size else 0.0
        span = (top - bottom) or 1.0
        ax.set_ylim(bottom - (0.05 * span if bottom < 0 else 0.0), top + 0.08 * span)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    ax_cos.set_xticks(x, names, rotation=70, fontsize=7)
    ax_rel.set_title(
        "distance per parameter (HookedTransformer names; hatched: LayerNorm); no symmetry aligned",
        fontsize=9,
    )
    return fig


def plot_probe_comparison(rows: list[dict[str, Any]], labels: tuple[str, str]) -> Figure | None:
    """Held-out probe score per (component, target), A and B side by side; crosses: the
    random-model score of the same probe."""
    if not rows:
        return None
    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig = Figure(figsize=(4.6 * len(targets), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(targets)))
    for ax, target in zip(axes, targets, strict=True):
        sel = [r for r in rows if r["target"] == target]
        comps = list(dict.fromkeys(r["component"] for r in sel))
        x = np.arange(len(comps))
        for i, lab in enumerate(labels):
            by = {r["component"]: r for r in sel if r["run"] == lab}
            vals = [by[c]["score"] if c in by and finite(by[c]["score"]) else np.nan for c in comps]
            rnd = [by[c].get("random_score", np.nan) if c in by else np.nan for c in comps]
            ax.bar(x + (i - 0.5) * 0.4, vals, 0.4, color=PAIR_COLOURS[i], label=lab)
            ax.plot(x + (i - 0.5) * 0.4, [v if finite(v) else np.nan for v in rnd], "kx", ms=4)
        ax.set_xticks(x, comps, rotation=60, fontsize=7)
        ax.set_ylim(
            min(0.0, np.nanmin([r["score"] for r in sel if finite(r["score"])] or [0])), 1.02
        )
        ax.set_title(f"probe {target} (x: random model)", fontsize=9)
        ax.set_ylabel("held-out score (R^2 or accuracy)", fontsize=8)
        ax.legend(fontsize=7)
    return fig


def plot_patching_comparison(
    patching: dict[str, Any] | None, labels: tuple[str, ...]
) -> Figure | None:
    """Normalised patching effects [layer, pos] of each model side by side (one row per
    activation kind), when the comparison holds patching tables."""
    if not patching or not patching.get("tables"):
        return None
    kinds = list(patching["tables"][labels[0]])
    fig = Figure(figsize=(4.6 * len(labels) + 0.6, 2.2 * len(kinds) + 0.8), layout="constrained")
    axes = fig.subplots(len(kinds), len(labels), squeeze=False)
    im = None
    for r, kind in enumerate(kinds):
        for c, lab in enumerate(labels):
            ax = axes[r, c]
            table = patching["tables"][lab].get(kind)
            if table is None:
                ax.axis("off")
                continue
            data = np.asarray(table, float)
            if data.ndim == 1:
                data = data[None]
            im = ax.imshow(
                data, vmin=-1, vmax=1, cmap="RdBu", aspect="auto", interpolation="nearest"
            )
            ax.set_title(f"{lab}: {kind}", fontsize=8)
            ax.set_xlabel("position", fontsize=7)
            ax.set_ylabel("layer", fontsize=7)
            ax.set_yticks(range(data.shape[0]))
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.7, label="normalised effect")
    fig.suptitle("denoising activation patching: normalised logit difference", fontsize=9)
    return fig


def comparison_figures(cmp) -> dict[str, Figure]:
    """Every figure of a comparison by file stem (figures that do not apply are left out)."""
    subjects = [cmp.a, cmp.b]
    figs: dict[str, Figure | None] = {}
    if any(s.metrics for s in subjects):
        figs["curves"] = plot_curves(subjects, title="training curves")
    figs["transitions"] = plot_transitions(cmp.transitions, cmp.calibration)
    figs["attention"] = plot_attention_comparison(cmp)
    figs["offsets"] = plot_offsets(cmp)
    figs["cka"] = plot_cka(cmp.cka, cmp.labels)
    figs["distances"] = plot_distances(cmp.distances)
    figs["probes"] = plot_probe_comparison(cmp.probe_rows, cmp.labels)
    figs["patching"] = plot_patching_comparison(cmp.patching, cmp.labels)
    return {k: v for k, v in figs.items() if v is not None}


# ------------------------------------------------------------------------------ markdown


def fmt(x: Any, digits: int = 4) -> str:
    """A number for a table: ``digits`` decimals, 3 significant digits for very small or large
    magnitudes, "-" for None/nan."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, (bool, int)):
        return str(x)
    if isinstance(x, float):
        if x != 0 and (abs(x) < 10 ** (-digits + 1) or abs(x) >= 1e5):
            return f"{x:.3g}"
        return f"{x:.{digits}f}"
    return str(x)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(out)


BEHAVIOUR_KEYS = (
    "eval_loss",
    "gap_entropy",
    "kl",
    "rel_excess",
    "rel_unigram",
    "dependence",
    "accuracy",
    "p_hat",
    "q_hat",
    "verdict",
)


def comparison_markdown(cmp, figure_names: list[str] | None = None) -> str:
    """The comparison as markdown: subjects, config differences, behaviour on the same inputs,
    transitions, head scores, distances, CKA per hook, probes, patching, notes, figures."""
    la, lb = cmp.labels
    lines = [f"# {la} vs {lb}", ""]
    lines.append(
        md_table(
            ["", "A", "B"],
            [
                ["label", la, lb],
                ["kind", cmp.a.kind, cmp.b.kind],
                ["path", str(cmp.a.path or "-"), str(cmp.b.path or "-")],
                ["step", fmt(cmp.a.step), fmt(cmp.b.step)],
            ],
        )
    )
    diffs = cmp.config_differences()
    lines += ["", "## Configuration differences", ""]
    lines.append(
        md_table(["field", "A", "B"], [[k, repr(a), repr(b)] for k, a, b in diffs])
        if diffs
        else "None: same model, chain and training settings."
    )
    refs = cmp.references
    lines += [
        "",
        "## Behaviour on the same inputs",
        "",
        f"{cmp.tokens.shape[0]} held-out sequences of {cmp.tokens.shape[1]} tokens from "
        f"the {cmp.input_chain.to_dict()['family']} chain (seed {cmp.config.seed}); "
        f"optimal loss L* = {refs['optimal_loss']:.4f}, unigram loss L_u = "
        f"{refs['unigram_loss']:.4f} nats.",
        "",
    ]
    keys = [k for k in BEHAVIOUR_KEYS if any(k in cmp.behaviour[lab] for lab in (la, lb))]
    lines.append(
        md_table(
            ["metric", la, lb],
            [[k, cmp.behaviour[la].get(k), cmp.behaviour[lb].get(k)] for k in keys],
        )
    )
    if cmp.transitions is not None:
        t = cmp.transitions
        S = t.true.shape[1]
        lines += ["", "## Transition probabilities", ""]
        rows = [
            [
                f"P({s} | {c})",
                float(t.true[i, s]),
                float(t.predicted[la][i, s]),
                float(t.predicted[lb][i, s]),
            ]
            for i, c in enumerate(t.contexts)
            for s in range(S)
        ]
        lines.append(md_table(["transition", "true", la, lb], rows))
    lines += ["", "## Head scores (excess over the shuffled baseline)", ""]
    rows = []
    for lab in (la, lb):
        h = cmp.heads[lab]
        for layer in range(h.previous_token.shape[0]):
            for head in range(h.previous_token.shape[1]):
                rows.append(
                    [
                        lab,
                        f"L{layer}H{head}",
                        float(h.previous_token[layer, head]),
                        float(h.previous_token_excess[layer, head]),
                        float(h.induction[layer, head]),
                        float(h.induction_excess[layer, head]),
                    ]
                )
    lines.append(
        md_table(
            ["model", "head", "prev-token", "prev excess", "induction", "induction excess"], rows
        )
    )
    lines += ["", "## Parameter distances", ""]
    d = cmp.distances
    if d.comparable:
        rows = [
            [
                r["name"],
                "x".join(map(str, r["shape"])),
                r["norm_a"],
                r["norm_b"],
                r["diff_norm"],
                r["relative"],
                r["cosine"],
            ]
            for r in d.rows
        ]
        keys = ("norm_a", "norm_b", "diff_norm", "relative", "cosine")
        for label, t in (("**total (no LayerNorm)**", d.total), ("**LayerNorm**", d.layernorm)):
            if t is not None:
                rows.append([label, ""] + [t[k] for k in keys])
        lines.append(
            md_table(
                ["parameter", "shape", "||A||", "||B||", "||A-B||", "relative", "cosine"], rows
            )
        )
        grows = [
            [g["group"], g["norm_a"], g["norm_b"], g["diff_norm"], g["relative"], g["cosine"]]
            for g in d.groups
        ]
        lines += ["", "By module:", ""]
        lines.append(md_table(["module", "||A||", "||B||", "||A-B||", "relative", "cosine"], grows))
        lines += [
            "",
            "The total leaves the LayerNorm weights out (they start at 1 and stay near it, so "
            "they would make any two models look alike); they have their own row. The "
            "distances compare coordinates as they are and align none of the model's "
            "symmetries, so models computing the same function can be far apart: "
            + "; ".join(d.symmetries)
            + ".",
        ]
    else:
        lines.append(
            f"Not computed: {d.reason}. Behaviour, CKA and predictions are compared instead."
        )
    lines += ["", "## Representation similarity (linear CKA per hook point)", ""]
    per = cmp.cka.per_hook()
    if per:
        lines.append(md_table(["hook point", "CKA(A, B)"], [[k, v] for k, v in per.items()]))
    else:
        lines.append("The models share no hook point; see cka.png for every pair.")
    for name, reason in cmp.cka.undefined.items():
        lines.append(f"\nCKA undefined (nan) for {name}: {reason}.")
    for note in cmp.cka.notes:
        lines.append(f"\nNote: {note}.")
    if cmp.probe_rows:
        lines += ["", "## Probes (held-out score; random-model score in brackets)", ""]
        keyed = {(r["run"], r["component"], r["target"]): r for r in cmp.probe_rows}
        cells = list(dict.fromkeys((r["component"], r["target"]) for r in cmp.probe_rows))
        rows = []
        for comp, target in cells:
            row = [comp, target]
            for lab in (la, lb):
                r = keyed.get((lab, comp, target))
                row.append(
                    "-" if r is None else f"{fmt(r['score'], 3)} ({fmt(r.get('random_score'), 3)})"
                )
            rows.append(row)
        lines.append(md_table(["component", "target", la, lb], rows))
    if cmp.patching and cmp.patching.get("summary"):
        lines += ["", "## Activation patching", "", cmp.patching.get("title", ""), ""]
        p = cmp.patching
        s = p["summary"]
        kinds = list(dict.fromkeys(k for lab in (la, lb) for k in s.get(lab, {})))
        rows = [
            ["model effect M_clean - M_corrupt"]
            + [p["clean"][lab] - p["corrupt"][lab] for lab in (la, lb)],
            ["mechanistic verdict (effect / true effect)"]
            + [f"{p['verdict'][lab]} ({fmt(p['ratio'][lab], 3)})" for lab in (la, lb)],
        ]
        rows += [[f"strongest {k} patch", s[la].get(k, "-"), s[lb].get(k, "-")] for k in kinds]
        lines.append(md_table(["", la, lb], rows))
    if cmp.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in cmp.notes]
    if figure_names:
        lines += ["", "## Figures", ""] + [f"![{n}]({n}.png)" for n in figure_names]
    return "\n".join(lines) + "\n"
