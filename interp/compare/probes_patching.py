"""Probe and activation-patching tables of both models on the same data.

``compare_probes`` (``probes.sweeps.probe_model`` on the same sequences, split and controls);
``patching_data``, ``patching_tables`` and ``compare_patching`` (denoising patching,
``interp.patching``, on the same clean/corrupted batches). The probe, patching and
explanation modules are imported when these run.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from interp.compare.config import ComparisonConfig
from interp.compare.subjects import Subject
from training.chains import InContextChain, MarkovChain
from training.model import MarkovTransformer


def compare_probes(
    a: Subject, b: Subject, chain: MarkovChain, config: ComparisonConfig, seq_len: int
) -> list[dict[str, Any]]:
    """Probe tables of both models on the same sequences, split and controls
    (``probes.sweeps.probe_model``), rows tagged run = the subject's label."""
    from probes.sweeps import ProbeConfig, probe_model

    targets = config.probe_targets or (
        ["x_n", "next_prob"] + (["icl_bigram"] if isinstance(chain, InContextChain) else [])
    )
    pc = ProbeConfig(
        targets=targets,
        components=config.probe_components or ["resid"],
        n_seqs=config.probe_seqs,
        seq_len=seq_len,
        n_positions=min(config.probe_positions, seq_len),
        cv_folds=3,
        seed=config.seed,
        device=str(a.model.W_E.device),
    )
    rows = []
    for s in (a, b):
        rows += probe_model(s.model, chain, pc, run=s.label, step=s.step)
    return rows


PATCH_ACTS = ("resid_pre", "attn_out", "mlp_out")
MAX_PATCH_POSITIONS = 32


def patching_data(chain: MarkovChain, n_seqs: int, seq_len: int, seed: int, corruption=None):
    """Clean/corrupted batches (``interp.corruptions.make_patching_data``): "flip" of the last
    token for fixed chains, "kernel_swap" for in-context chains by default; seq_len capped at
    MAX_PATCH_POSITIONS (every position is patched)."""
    from interp.corruptions import make_patching_data

    corruption = corruption or ("kernel_swap" if isinstance(chain, InContextChain) else "flip")
    gen = torch.Generator().manual_seed(seed)
    return make_patching_data(chain, corruption, n_seqs, min(seq_len, MAX_PATCH_POSITIONS), gen)


@torch.no_grad()
def patching_tables(model: MarkovTransformer, data) -> dict[str, Any]:
    """Denoising patching of ``model`` on ``data`` (``interp.patching.run_patching``, logit
    difference answer - foil at the last position): clean activations patched one (layer,
    position) at a time into the corrupted run, normalised (M - M_corrupt) / (M_clean -
    M_corrupt), 1 = the clean prediction restored. Also the mechanistic verdict of the
    model's reaction against a perfect predictor's (``interp.explain.mechanistic_verdict``).

    Returns {"title", "corruption", "clean", "corrupt", "true_clean", "true_corrupt",
    "verdict", "ratio", "tables": {act: [layer][pos]}, "summary": {act: "x at L.. pos .."}}.
    """
    from interp.explain import mechanistic_verdict
    from interp.patching import run_patching

    acts = [a for a in PATCH_ACTS if not (model.cfg.attn_only and a == "mlp_out")]
    res = run_patching(model, data, acts, "denoise", "logit_diff")
    mech, ratio = mechanistic_verdict(res.effect, res.true_effect)
    tables, summary = {}, {}
    for act in acts:
        norm = res.normalised(act)
        tables[act] = norm.tolist()
        if torch.isfinite(norm).any():
            layer, pos = divmod(int(norm.nan_to_num(-math.inf).flatten().argmax()), norm.shape[1])
            summary[act] = f"{float(norm[layer, pos]):.3f} at L{layer} pos {pos}"
        else:
            summary[act] = "undefined (the model does not react to the corruption)"
    n_seqs, seq_len = data.clean.shape
    return {
        "title": (
            f"Denoising patching: clean activations into the '{data.corruption}'-corrupted run, "
            f"one (layer, position) at a time; {n_seqs} sequences of {seq_len} tokens; "
            "normalised logit difference (1 = clean behaviour restored, 0 = corrupted)."
        ),
        "corruption": data.corruption,
        "clean": res.clean,
        "corrupt": res.corrupt,
        "true_clean": res.true_clean,
        "true_corrupt": res.true_corrupt,
        "verdict": mech,
        "ratio": ratio,
        "tables": tables,
        "summary": summary,
    }


def compare_patching(
    a: Subject,
    b: Subject,
    chain: MarkovChain,
    config: ComparisonConfig,
    seq_len: int,
) -> dict[str, Any]:
    """``patching_tables`` of both models on the very same clean/corrupted batches."""
    data = patching_data(chain, config.n_seqs, seq_len, config.seed)
    per = {s.label: patching_tables(s.model, data) for s in (a, b)}
    first = per[a.label]
    out = {"title": first["title"], "corruption": first["corruption"]}
    for key in ("tables", "summary", "clean", "corrupt", "verdict", "ratio"):
        out[key] = {lab: r[key] for lab, r in per.items()}
    return out
