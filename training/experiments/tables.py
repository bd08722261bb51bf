"""Per-cell tables of a reproduction's runs, and the row helpers the claims and figures
share: the finished runs, the runs grouped by cell, mean and standard deviation."""

from __future__ import annotations

import statistics
from typing import Any

from training.stats import bootstrap_interval, fmt_fraction, fmt_interval, quartiles


def finished_runs(rows: list[dict]) -> list[dict]:
    """The rows of the runs that finished."""
    return [r for r in rows if r.get("status") == "finished"]


def group_cells(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    """The rows grouped by their values of `keys`, cells in order of first appearance."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return out


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value) of the numbers among `values`;
    (None, None) when there are none."""
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
    for key, group in group_cells(rows, keys).items():
        fin = finished_runs(group)
        mean, std = mean_std([r.get("final_eval_loss") for r in fin])
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
            # the verdicts that withhold a label (training.verdicts): still moving, too few tokens
            "not_converged": sum(r.get("verdict") == "not converged" for r in fin),
            "undecided": sum(r.get("verdict") == "undecided" for r in fin),
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
            "plateau_steps_mean": mean_std([r.get("plateau_steps") for r in fin])[0],
            "plateau_steps_median_iqr": (
                f"{stay[1]:g} [{stay[0]:g}, {stay[2]:g}]" if stay is not None else ""
            ),
            "wall_s_mean": statistics.fmean(walls) if walls else None,
        }
        table.append(row)
    return table
