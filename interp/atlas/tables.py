"""The atlas's tables: cells.csv (one row per chain x depth x window x tying x MLP cell),
atlas.csv (one row per run) and atlas.md (settings, label rules, per-chain cell tables and
the pooled tables behind the README's findings).

Fractions come with Wilson 95% intervals, means with percentile-bootstrap 95% intervals over
seeds (training.stats).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from interp.atlas.claims import check_claims, is_true
from interp.atlas.labels import INDUCTION_THRESHOLDS, THRESHOLDS
from training.machine import cpu_model, vector_isa
from training.runs import write_text_atomic
from training.stats import bootstrap_interval, finite, fmt_fraction, fmt_interval, wilson_interval
from training.sweeps import markdown_table, write_csv

AXES = ("chain", "layers", "window", "tie", "mlp")
CARRIER_ORDER = ("attention", "mlp", "direct", "distributed", "none")
CARRIER_NAMES = {
    "attention": "attention",
    "mlp": "MLP",
    "direct": "embedding/direct",
    "distributed": "distributed",
    "none": "marginal only",
}
MEANS = (
    "final_kl",
    "rho_main",
    "share_attention",
    "share_mlp",
    "share_direct",
    "in_context_index",
    "previous_token_excess",
    "induction_excess",
)
N_BOOT = 2000
# In-context runs: when the loss leaves the in-context unigram stage and when each head forms
# (interp.atlas.runner.head_steps); medians over the runs where it happened.
STEPS = ("plateau_exit_step", "previous_token_step", "induction_step")


def is_in_context(row: dict) -> bool:
    """Is the row's training chain in-context (atlas chain names in-context-s*-k*)?"""
    return str(row.get("chain", "")).startswith("in-context")


def in_context_rows(rows: list[dict]) -> list[dict]:
    """The rows whose training chain is in-context."""
    return [r for r in rows if is_in_context(r)]


def _measured(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("carrier") in CARRIER_ORDER]


def summarise(group: list[dict]) -> dict[str, Any]:
    """Counts, fractions with intervals and means with intervals of one group of runs."""
    measured = _measured(group)
    n = len(measured)
    out: dict[str, Any] = {"runs": len(group), "measured": n}
    for c in CARRIER_ORDER:
        k = sum(r["carrier"] == c for r in measured)
        lo, hi = wilson_interval(k, n)
        out[f"n_{c}"], out[f"frac_{c}"], out[f"frac_{c}_lo"], out[f"frac_{c}_hi"] = (
            k,
            k / n if n else math.nan,
            lo,
            hi,
        )
    for flag in ("reached", "in_context", "induction"):
        k = sum(is_true(r.get(flag)) for r in measured)
        lo, hi = wilson_interval(k, n)
        out[f"n_{flag}"], out[f"frac_{flag}"] = k, k / n if n else math.nan
        out[f"frac_{flag}_lo"], out[f"frac_{flag}_hi"] = lo, hi
    labels = Counter(r["label"] for r in group)
    if labels:
        label, k = labels.most_common(1)[0]
        out["majority_label"], out["majority_count"] = label, k
    out["labels"] = dict(labels)
    for key in STEPS:
        steps = [r[key] for r in measured if finite(r.get(key))]
        out[f"{key}_median"] = statistics.median(steps) if steps else math.nan
        out[f"n_{key}"] = len(steps)
    for key in MEANS:
        stat = bootstrap_interval(
            [r.get(key) for r in measured if finite(r.get(key))], n_boot=N_BOOT
        )
        out[f"{key}_mean"], out[f"{key}_lo"], out[f"{key}_hi"] = stat or (math.nan,) * 3
    return out


def _key(row: dict, axes: tuple[str, ...]) -> tuple:
    return tuple(str(row.get(a)) for a in axes)


def group_rows(rows: list[dict], axes: tuple[str, ...]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_key(r, axes), []).append(r)
    return groups


def cell_rows(rows: list[dict]) -> list[dict[str, Any]]:
    """cells.csv: one row per (chain, layers, window, tie, mlp) with ``summarise``'s columns."""
    out = []
    for _, group in group_rows(rows, AXES).items():
        first = group[0]
        out.append({a: first.get(a) for a in AXES} | summarise(group))
    return out


def pooled(rows: list[dict], axis: str) -> list[dict[str, Any]]:
    """Per chain and value of ``axis``, pooled over the other axes."""
    out = []
    for _, group in group_rows(rows, ("chain", axis)).items():
        out.append({"chain": group[0]["chain"], axis: group[0].get(axis)} | summarise(group))
    return out


def _frac(row: dict, name: str) -> str:
    n = row["measured"]
    return fmt_fraction(row[f"n_{name}"], n) if n else "-"


def _mean(row: dict, key: str, digits: int = 3) -> str:
    m = row.get(f"{key}_mean")
    if not finite(m):
        return "-"
    return fmt_interval((m, row[f"{key}_lo"], row[f"{key}_hi"]), digits)


def _display(rows: list[dict], lead: tuple[str, ...]) -> list[dict[str, str]]:
    table = []
    for r in rows:
        line = {a: str(r.get(a)) for a in lead}
        line["runs"] = f"{r['measured']}/{r['runs']}"
        line["majority label"] = (
            f"{r.get('majority_label', '-')} ({r.get('majority_count', 0)} of {r['runs']})"
        )
        line["kernel reached"] = _frac(r, "reached")
        for c in CARRIER_ORDER:
            line[CARRIER_NAMES[c]] = _frac(r, c)
        line["in-context"] = _frac(r, "in_context")
        if is_in_context(r):
            line["in-context (induction)"] = _frac(r, "induction")
        line["excess KL (nats)"] = _mean(r, "final_kl", 4)
        line["in-context index"] = _mean(r, "in_context_index", 2)
        table.append(line)
    return table


def atlas_markdown(
    rows: list[dict], cells: list[dict], settings: str = "", wall: float | None = None
) -> str:
    """atlas.md: settings, label rules, pooled tables, then every cell by chain."""
    measured = _measured(rows)
    seconds = [r.get("wall_seconds") for r in rows if finite(r.get("wall_seconds"))]
    lines = [
        "# The atlas: where the kernel lives, as depth and masking change",
        "",
        f"{len(rows)} runs in {len(cells)} cells; {len(measured)} measured. "
        + (f"Wall time of this invocation {wall:.0f} s. " if wall is not None else "")
        + (f"Training {sum(seconds):.0f} s summed over runs. " if seconds else "")
        + f"Machine: {cpu_model()} ({vector_isa()}).",
        "",
    ]
    if settings:
        lines += [settings, ""]
    lines += [
        "Each run is labelled by interp/atlas/labels.py (thresholds fixed before any atlas ran: "
        + ", ".join(f"{k} = {v}" for k, v in THRESHOLDS.items())
        + "). Columns give k/n [Wilson 95% interval] over the measured seeds; means [bootstrap "
        "95% interval]. Carrier columns: where the dependence on the token the kernel reads "
        "enters the output (direct-path shares, confirmed by mean ablation); 'marginal only': "
        "the prediction ignores the context.",
        "",
    ]
    lines += [
        "## The paper's claims, per seed",
        "",
        "Held when the whole Wilson 95% interval of the fraction of seeds lies above 1/2, not "
        "held when below, undecided otherwise (interp/atlas/claims.py).",
        "",
        markdown_table(check_claims(rows), ["claim", "held for", "status"]),
    ]
    lines += in_context_section(rows)
    for axis in ("layers", "window", "tie", "mlp"):
        lines += [f"## Pooled by {axis} (over the other axes)", ""]
        lines.append(markdown_table(_display(pooled(rows, axis), ("chain", axis))))
    lines += ["## Every cell", ""]
    for chain, group in group_rows(cells, ("chain",)).items():
        lines += [f"### {chain[0]}", ""]
        lines.append(markdown_table(_display(group, ("tie", "mlp", "layers", "window"))))
    return "\n".join(lines)


def _median(row: dict, key: str) -> str:
    m = row.get(f"{key}_median")
    return f"{m:g} ({row[f'n_{key}']} runs)" if finite(m) else "-"


def in_context_section(rows: list[dict]) -> list[str]:
    """atlas.md's section on in-context chains: per chain, depth, tying and MLP at full
    attention, the induction label, the add-alpha loss reached, and the medians of the step
    the loss leaves the unigram stage and of the steps the heads form."""
    ic = [r for r in in_context_rows(rows) if str(r.get("window")) == "full"]
    if not ic:
        return []
    table = []
    for _, group in group_rows(ic, ("chain", "layers", "tie", "mlp")).items():
        r = {a: group[0].get(a) for a in ("chain", "layers", "tie", "mlp")} | summarise(group)
        line = {a: str(r[a]) for a in ("chain", "layers", "tie", "mlp")}
        line["runs"] = f"{r['measured']}/{r['runs']}"
        line["in-context (induction)"] = _frac(r, "induction")
        line["add-alpha reached"] = _frac(r, "reached")
        line["KL to add-alpha (nats)"] = _mean(r, "final_kl", 4)
        line["leaves unigram stage (median step)"] = _median(r, "plateau_exit_step")
        line["previous-token head forms"] = _median(r, "previous_token_step")
        line["induction head forms"] = _median(r, "induction_step")
        table.append(line)
    return [
        "## In-context chains (a kernel per sequence), full attention",
        "",
        "`in-context (induction)`: rule 5 of interp/atlas/labels.py (thresholds "
        + ", ".join(f"{k} = {v}" for k, v in INDUCTION_THRESHOLDS.items())
        + "); 'add-alpha reached': the loss verdict against the add-alpha (Bayes) predictor; "
        "a head forms at the first checkpoint from which on its excess over the shuffled "
        "baseline stays >= 0.2.",
        "",
        markdown_table(table),
    ]


def write_tables(
    out: Path, rows: list[dict], cells: list[dict], settings: str = "", wall: float | None = None
) -> dict[str, Path]:
    """atlas.csv, cells.csv and atlas.md in ``out``."""
    out = Path(out)
    files = {
        "atlas_csv": write_csv(out / "atlas.csv", rows),
        "cells_csv": write_csv(out / "cells.csv", cells),
    }
    md = out / "atlas.md"
    write_text_atomic(md, atlas_markdown(rows, cells, settings, wall))
    files["atlas_md"] = md
    return files
