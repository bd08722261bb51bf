"""Escaping the unigram basin: how often training leaves it under each initialisation.

``init_escape_study`` trains one run per (init, seed) in memory and counts the trainer's
verdicts per init (the trainer is imported when the study runs).
"""

from __future__ import annotations

from typing import Any

from training.chains import MarkovChain
from training.config import ModelConfig


def init_escape_study(
    chain: MarkovChain,
    model_config: ModelConfig,
    train_config,
    seeds: list[int],
    inits: tuple[str, ...] = ("paper", "good"),
    progress: bool = False,
) -> dict[str, Any]:
    """Train one run per (init, seed) with `training.trainer.train` (in memory) and count
    the trainer's verdicts: the fraction of seeds that escape the unigram basin ("bigram")
    under each named initialisation (training.inits). Returns {"rows": one dict per run
    (init, seed, verdict, final_eval_loss, plateau_exit_step, plateau_steps, wall_seconds),
    "fractions": {init: {verdict: share}}, "n_seeds", "chain", "model", "train"}."""
    from training.trainer import train

    if not seeds:
        raise ValueError("seeds must name at least one seed")
    rows = []
    for init in inits:
        mcfg = ModelConfig.from_dict({**model_config.to_dict(), "init": init})
        for seed in seeds:
            res = train(mcfg, chain, train_config, seed=seed, progress=False)
            row = {
                "init": init,
                "seed": seed,
                "verdict": res["verdict"],
                "final_eval_loss": res["final_eval_loss"],
                "plateau_exit_step": res.get("plateau_exit_step"),
                "plateau_steps": res.get("plateau_steps"),
                "wall_seconds": res.get("wall_seconds"),
            }
            rows.append(row)
            if progress:
                print(f"init {init} seed {seed}: {row['verdict']}", flush=True)
    fractions = {}
    for init in inits:
        verdicts = [r["verdict"] for r in rows if r["init"] == init]
        fractions[init] = {v: verdicts.count(v) / len(verdicts) for v in dict.fromkeys(verdicts)}
    return {
        "rows": rows,
        "fractions": fractions,
        "n_seeds": len(seeds),
        "chain": chain.to_dict(),
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
    }
