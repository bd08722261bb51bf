"""``compare``: two models side by side on the same inputs, as a ``Comparison``.

``compare`` loads both sides (``subjects``), draws the shared inputs and runs every
measurement (``predictions``, attention and heads, ``distances``, ``cka``,
``probes_patching``); ``Comparison`` holds the results, and its ``figures``, ``markdown`` and
``save`` present them (``plots``, ``outputs``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.attention import attention_patterns, attention_summary
from interp.compare.cka import CKAResult, cka_matrix, representations
from interp.compare.config import ComparisonConfig
from interp.compare.distances import ParameterDistances, parameter_distances
from interp.compare.outputs import dumps, write_outputs
from interp.compare.predictions import (
    TransitionTable,
    behaviour,
    calibration,
    predicted_probs,
    shared_inputs,
    transition_table,
)
from interp.compare.probes_patching import compare_patching, compare_probes
from interp.compare.subjects import SourceLike, Subject, default_device, load_subject
from interp.heads import HeadScores, head_scores
from training.chains import MarkovChain
from training.recipe import TrainConfig
from training.trainer import run_references


@dataclass
class Comparison:
    """Everything ``compare`` measured (``interp.compare`` package docstring); ``figures()``,
    ``markdown()`` and ``save()`` present it."""

    a: Subject
    b: Subject
    config: ComparisonConfig
    tokens: Int[Tensor, "seq pos"]
    input_chain: MarkovChain
    references: dict[str, Any]
    behaviour: dict[str, dict[str, Any]]
    transitions: TransitionTable | None
    calibration: dict[str, dict[str, list[float]]]
    patterns: dict[str, Float[Tensor, "layer head query key"]]
    attention: dict[str, dict[str, Any]]
    heads: dict[str, HeadScores]
    distances: ParameterDistances
    cka: CKAResult
    probe_rows: list[dict[str, Any]] = field(default_factory=list)
    patching: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> tuple[str, str]:
        return self.a.label, self.b.label

    def config_differences(self) -> list[tuple[str, Any, Any]]:
        """(field, value in A, value in B) for every model/chain/train/seed field that differs."""
        da, db = self.a.describe(), self.b.describe()
        out = []
        for section in ("model", "chain", "train"):
            sa, sb = da[section] or {}, db[section] or {}
            for key in sorted(set(sa) | set(sb)):
                if sa.get(key) != sb.get(key):
                    out.append((f"{section}.{key}", sa.get(key), sb.get(key)))
        for key in ("seed", "step"):
            if da[key] != db[key]:
                out.append((key, da[key], db[key]))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary of every result (tensors as nested lists)."""
        return {
            "subjects": {"a": self.a.describe(), "b": self.b.describe()},
            "config": self.config.to_dict(),
            "input_chain": self.input_chain.to_dict(),
            "inputs": {"n_seqs": self.tokens.shape[0], "seq_len": self.tokens.shape[1]},
            "references": self.references,
            "config_differences": [list(d) for d in self.config_differences()],
            "behaviour": self.behaviour,
            "transitions": None if self.transitions is None else self.transitions.to_dict(),
            "calibration": self.calibration,
            "attention": self.attention,
            "heads": {k: v.to_dict() for k, v in self.heads.items()},
            "distances": self.distances.to_dict(),
            "cka": self.cka.to_dict(),
            "probes": self.probe_rows,
            "patching": self.patching,
            "notes": self.notes,
        }

    def figures(self) -> dict:
        from interp.compare.plots import comparison_figures

        return comparison_figures(self)

    def markdown(self, figure_names: list[str] | None = None) -> str:
        from interp.compare.plots import comparison_markdown

        return comparison_markdown(self, figure_names)

    def save(self, out_dir: str | os.PathLike, force: bool = False) -> dict[str, Path]:
        """Write the figures (PNG), summary.md and comparison.json into ``out_dir``; an
        existing file is only replaced with force=True (FileExistsError otherwise)."""
        figures = self.figures()
        files = {f"{name}.png": fig for name, fig in figures.items()}
        texts = {
            "summary.md": self.markdown(list(figures)),
            "comparison.json": dumps(self.to_dict()),
        }
        return write_outputs(out_dir, files, texts, force)


def _input_chain(a: Subject, b: Subject, which: str, notes: list[str]) -> MarkovChain:
    first, second = (a, b) if which == "a" else (b, a)
    chain = first.chain or second.chain
    if chain is None:
        raise ValueError(
            "neither model has a chain to draw inputs from: pass chain=... for a bare model"
        )
    if first.chain is None:
        notes.append(f"{first.label} has no chain; inputs come from {second.label}'s chain")
    if a.chain is not None and b.chain is not None and a.chain.to_dict() != b.chain.to_dict():
        notes.append(
            f"the two models were trained on different chains; both are evaluated on "
            f"{'A' if chain is a.chain else 'B'}'s chain ({chain.to_dict()['family']})"
        )
    return chain


def compare(
    a: SourceLike | Subject,
    b: SourceLike | Subject,
    config: ComparisonConfig | None = None,
    *,
    device: str | torch.device | None = None,
    chain: MarkovChain | None = None,
    labels: tuple[str, str] | None = None,
    progress: bool = False,
) -> Comparison:
    """Compare two models (run dirs, checkpoint dirs, Runs, models or Subjects) on the same
    inputs: behaviour, transitions, attention, heads, probes, patching, parameter distances
    and CKA (``interp.compare`` package docstring). ``chain`` supplies the chain for bare
    models; ``labels`` names the two sides (default: run names, name@step for checkpoints)."""
    from training.progress import Stages

    config = config or ComparisonConfig()
    device = torch.device(device) if device is not None else default_device()
    with Stages(
        "markov-lens compare", 3 + config.probes + config.patching, enabled=progress
    ) as stage:
        la, lb = labels if labels is not None else (None, None)
        sa = a if isinstance(a, Subject) else load_subject(a, chain=chain, device=device, label=la)
        sb = b if isinstance(b, Subject) else load_subject(b, chain=chain, device=device, label=lb)
        if sa.label == sb.label:
            sa.label, sb.label = f"A: {sa.label}", f"B: {sb.label}"
        sa.model.to(device).eval()
        sb.model.to(device).eval()
        notes: list[str] = []
        ca, cb = sa.model.cfg, sb.model.cfg
        if ca.d_vocab != cb.d_vocab:
            raise ValueError(
                f"the models read different vocabularies (d_vocab {ca.d_vocab} vs {cb.d_vocab}); "
                "they cannot be run on the same inputs"
            )
        in_chain = _input_chain(sa, sb, config.input_chain, notes)
        if in_chain.n_states != ca.d_vocab:
            raise ValueError(
                f"the input chain has {in_chain.n_states} states but the models read {ca.d_vocab}"
            )
        seq_len = config.seq_len or min(128, ca.n_ctx, cb.n_ctx)
        if seq_len > min(ca.n_ctx, cb.n_ctx):
            raise ValueError(
                f"seq_len={seq_len} is longer than a model's context (n_ctx {ca.n_ctx} / {cb.n_ctx})"
            )
        inputs = shared_inputs(in_chain, config.n_seqs, seq_len, config.seed, device)
        tokens = inputs.tokens[0]
        refs = run_references(in_chain, TrainConfig(seq_len=seq_len))
        subjects = {sa.label: sa, sb.label: sb}

        stage("behaviour, transitions, attention and heads on shared inputs")
        beh, probs, calib, patterns, attn, heads = {}, {}, {}, {}, {}, {}
        n_attn = min(config.attention_positions, seq_len)
        for label, s in subjects.items():
            beh[label] = behaviour(s.model, inputs, refs)
            probs[label] = predicted_probs(s.model, tokens)
            calib[label] = calibration(inputs.true[0], probs[label])
            full = attention_patterns(s.model, tokens)  # [L, B, H, q, k]
            heads[label] = head_scores(full, tokens, in_chain.n_states, s.model.cfg.windows())
            attn[label] = attention_summary(full)
            patterns[label] = attention_patterns(s.model, tokens[:1, :n_attn])[:, 0].cpu()
        table = transition_table(inputs, probs)

        stage("parameter distances")
        distances = parameter_distances(sa.model, sb.model)
        if not distances.comparable:
            notes.append(distances.reason)
        reps = {label: representations(s.model, tokens) for label, s in subjects.items()}
        n_rows = tokens.numel()
        if n_rows > config.cka_rows:
            gen = torch.Generator().manual_seed(config.seed)
            keep = torch.randperm(n_rows, generator=gen)[: config.cka_rows].sort().values
            reps = {lab: {n: r[keep] for n, r in rr.items()} for lab, rr in reps.items()}
        stage("CKA")
        cka = cka_matrix(reps[sa.label], reps[sb.label])

        result = Comparison(
            a=sa,
            b=sb,
            config=config,
            tokens=tokens.cpu(),
            input_chain=in_chain,
            references=refs,
            behaviour=beh,
            transitions=table,
            calibration=calib,
            patterns=patterns,
            attention=attn,
            heads=heads,
            distances=distances,
            cka=cka,
            notes=notes,
        )
        if config.probes:
            stage("probes")
            result.probe_rows = compare_probes(sa, sb, in_chain, config, seq_len)
        if config.patching:
            stage("patching")
            result.patching = compare_patching(sa, sb, in_chain, config, seq_len)
    return result
