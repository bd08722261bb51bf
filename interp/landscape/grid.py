"""theta_pi over a grid of binary chains (p, q) and architectures, and its markdown table.

``theta_pi_grid`` runs ``theta_pi_analysis`` per cell and flattens each result to one row;
``grid_table_markdown`` writes the rows as a table (``plots.plot_grid`` draws them).
"""

from __future__ import annotations

from typing import Any

import torch

from interp.landscape.sample import LandscapeConfig
from interp.landscape.theta_pi import theta_pi_analysis
from training.chains import BinaryChain
from training.config import ModelConfig


def theta_pi_grid(
    ps: list[float],
    qs: list[float],
    architectures: dict[str, ModelConfig],
    config: LandscapeConfig | None = None,
    model_seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """theta_pi_analysis over every (architecture, p, q): one flat row per cell with the
    architecture label, p, q, loss, gradient ratio, lambda_min (+- se), lambda_max,
    flat_tol, held-out curvature, verdict, proxy, prediction and agreement."""
    rows = []
    for label, mcfg in architectures.items():
        for p in ps:
            for q in qs:
                chain = BinaryChain(p, q)
                res = theta_pi_analysis(chain, mcfg, config, model_seed, device)
                h = res["hessian"]
                row = {
                    "architecture": label,
                    "tied": mcfg.tie_embeddings,
                    "n_layers": mcfg.n_layers,
                    "p": p,
                    "q": q,
                    "loss": res["loss"]["mean"],
                    "loss_se": res["loss"]["se"],
                    "unigram_loss": res["unigram_loss"],
                    "grad_ratio": res["gradient"]["ratio"],
                    "lambda_min": h["lambda_min"],
                    "lambda_min_se": h["lambda_min_se"],
                    "lambda_max": h["lambda_max"],
                    "flat_tol": h["flat_tol"],
                    "flat_band": h["flat_band"],
                    "heldout_curvature": h["heldout_curvature"],
                    "heldout_se": h["heldout_se"],
                    "n_flat": h["n_flat"],
                    "method": h["method"],
                    "n_params": h["n_params"],
                    "verdict": h["verdict"],
                    "proxy": res["proxy"],
                    "prediction": res["prediction"],
                    "agreement": res["agreement"],
                    "seconds": h["seconds"],
                }
                rows.append(row)
                if progress:
                    print(
                        f"{label} p={p} q={q}: lambda_min {row['lambda_min']:.3g}, "
                        f"verdict {row['verdict']} ({row['agreement']})",
                        flush=True,
                    )
    return rows


def grid_table_markdown(rows: list[dict[str, Any]]) -> str:
    """The grid as a markdown table (one line per cell)."""
    head = (
        "| architecture | p | q | p+q | lambda_min (+- se) | flat band | held-out curv. (+- se) "
        "| lambda_max | verdict | proxy | paper | agreement |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        proxy = "" if r["proxy"] is None else f"{r['proxy']:.3g}"
        lines.append(
            f"| {r['architecture']} | {r['p']:g} | {r['q']:g} | {r['p'] + r['q']:.2g} "
            f"| {r['lambda_min']:.3g} +- {r['lambda_min_se']:.2g} | {r['flat_band']:.2g} "
            f"| {r['heldout_curvature']:.3g} +- {r['heldout_se']:.2g} | {r['lambda_max']:.3g} "
            f"| {r['verdict']} | {proxy} | {r['prediction'] or '-'} | {r['agreement']} |"
        )
    return head + "\n".join(lines) + "\n"
