"""A run's checkpoint timeline: what the model is at every saved step.

``timeline(run_dir)`` loads each checkpoint of a run (``training.runs``) and measures, on
fixed inputs shared by all steps:

- loss gap and verdict: ``training.trainer.evaluate`` on the run's own held-out batches
  (``EvalSet(chain, train_config, seed)``, the batches its metrics.jsonl was measured on),
  so eval_loss, gap_entropy = eval_loss - L*, rel_excess, dependence (nats) and the verdict
  (``training.verdicts.verdict``) are exact at every checkpoint, not interpolated (equal to
  the logged values when measured on the device type the run was trained on: CPU and CUDA
  generators draw different held-out batches);
- head scores: previous-token and induction scores minus their shuffled baselines
  (``interp.heads.head_scores``) per layer and head;
- probe scores: one target (default ``next_prob``, the kernel row; ``icl_bigram`` for
  in-context chains) on the ``resid`` components, with the same sequences, split and
  random-model baseline at every step (``probes.sweeps.probe_steps``);
- how far the model is from where it ends: relative parameter distance to the first and to
  the last checkpoint (``interp.compare.parameter_distances``) and linear CKA to the last
  checkpoint per hook point (``interp.compare.cka_matrix``).

The plateau exit (``training.verdicts``: first evaluation with relative excess < 1/2 after one
>= 1/2) is read from the run's full metric records, whose evaluations are denser than the
log-spaced checkpoints; the figure marks it so the moment the model leaves the unigram
plateau is visible against the head and probe scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from interp.attention import attention_patterns
from interp.compare import (
    Subject,
    behaviour,
    cka_matrix,
    default_device,
    dumps,
    load_subject,
    parameter_distances,
    representations,
    run_name,
    shared_inputs,
    write_outputs,
)
from interp.compare.plots import fmt, md_table
from interp.heads import head_scores
from training.chains import InContextChain
from training.jsonconfig import JsonConfig
from training.runs import Run, display_name, load_run
from training.trainer import EvalSet
from training.verdicts import summarise_metrics

VERDICT_COLOURS = {"bigram": "tab:green", "unigram": "tab:red", "neither": "tab:grey"}


@dataclass
class TimelineConfig(JsonConfig):
    """What the timeline measures (JSON-able).

    steps: "all", "last" or a list of checkpoint steps. n_seqs sequences of seq_len tokens
    (None: min(128, the run's seq_len)) drawn with ``seed`` feed the head scores and CKA.
    probes: probe ``probe_target`` (None: next_prob, or icl_bigram for in-context chains) on
    ``probe_components`` (None: the "resid" group) with probe_seqs sequences and
    probe_positions positions each. cka: CKA and parameter distances to the last checkpoint.
    """

    config_name = "timeline config"

    steps: str | list[int] = "all"
    n_seqs: int = 16
    seq_len: int | None = None
    seed: int = 0
    probes: bool = True
    probe_target: str | None = None
    probe_components: list[str] | None = None
    probe_seqs: int = 64
    probe_positions: int = 16
    cka: bool = True

    def __post_init__(self) -> None:
        for name in ("n_seqs", "probe_seqs", "probe_positions"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or self.seq_len < 2):
            raise ValueError(f"seq_len must be an integer >= 2 or None, got {self.seq_len!r}")


@dataclass
class Timeline:
    """Per-checkpoint measurements of one run (module docstring). rows: one dict per step
    with step, eval_loss, gap_entropy, gap_unigram, kl, rel_excess, rel_unigram, dependence,
    verdict, previous_token[_excess] and induction[_excess] ([layer][head]), and when
    measured probe ({component: score}), probe_random ({component: score}),
    distance_from_start, distance_to_final, cka_to_final ({component: CKA})."""

    path: Path
    label: str
    references: dict[str, Any]
    rows: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    plateau_exit_step: int | None
    probe_target: str | None
    probe_rows: list[dict[str, Any]] = field(default_factory=list)
    config: TimelineConfig = field(default_factory=TimelineConfig)

    @property
    def steps(self) -> list[int]:
        return [r["step"] for r in self.rows]

    def first_step_with_verdict(self, name: str = "bigram") -> int | None:
        """The first checkpoint whose verdict is ``name`` (None if none)."""
        return next((r["step"] for r in self.rows if r["verdict"] == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "label": self.label,
            "config": self.config.to_dict(),
            "references": self.references,
            "plateau_exit_step": self.plateau_exit_step,
            "first_bigram_checkpoint": self.first_step_with_verdict("bigram"),
            "probe_target": self.probe_target,
            "rows": self.rows,
        }

    def figure(self) -> Figure:
        return plot_timeline(self)

    def markdown(self, figure_names: list[str] | None = None) -> str:
        return timeline_markdown(self, figure_names)

    def save(self, out_dir: str | os.PathLike, force: bool = False) -> dict[str, Path]:
        """Write timeline.png, timeline.md and timeline.json into ``out_dir`` (FileExistsError
        for existing files unless force)."""
        texts = {"timeline.md": self.markdown(["timeline"]), "timeline.json": dumps(self.to_dict())}
        return write_outputs(out_dir, {"timeline.png": self.figure()}, texts, force)


def _probe_target(run: Run, config: TimelineConfig) -> str:
    if config.probe_target is not None:
        return config.probe_target
    return "icl_bigram" if isinstance(run.chain, InContextChain) else "next_prob"


def _select_steps(available: list[int], spec: str | list[int]) -> list[int]:
    from probes.sweeps import select_steps

    return select_steps(available, spec)


def timeline(
    run: str | os.PathLike | Run,
    config: TimelineConfig | None = None,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Timeline:
    """Measure every selected checkpoint of ``run`` (module docstring). progress: a line
    (or a bar) per checkpoint on stderr."""
    from training.progress import Stages

    config = config or TimelineConfig()
    device = torch.device(device) if device is not None else default_device()
    run = run if isinstance(run, Run) else load_run(run)
    steps = _select_steps(run.checkpoint_steps(), config.steps)
    final: Subject = load_subject(run, device=device)  # last checkpoint, references, metrics
    refs = final.references
    gap = refs["unigram_loss"] - refs["optimal_loss"]
    eval_set = EvalSet(run.chain, run.train_config, run.seed, device)
    seq_len = config.seq_len or min(128, run.train_config.seq_len)
    if seq_len > run.model_config.n_ctx:
        raise ValueError(f"seq_len={seq_len} exceeds the model's n_ctx={run.model_config.n_ctx}")
    tokens = shared_inputs(run.chain, config.n_seqs, seq_len, config.seed, device).tokens[0]
    final_reps = representations(final.model, tokens) if config.cka else None
    start_model = run.model(steps[0], device=device) if config.cka else None

    rows = []
    with Stages("markov-lens compare (timeline)", len(steps), enabled=progress) as stage:
        for step in steps:
            stage(f"checkpoint at step {step}")
            model = run.model(step, device=device)
            row: dict[str, Any] = {"step": step}
            measured = behaviour(model, eval_set, refs)
            row |= {k: v for k, v in measured.items() if k != "kernel_hat"}
            patterns = attention_patterns(model, tokens)
            hs = head_scores(patterns, tokens, run.chain.n_states, model.cfg.windows())
            row |= {k: v for k, v in hs.to_dict().items() if k != "layout"}
            if config.cka:
                row["distance_from_start"] = parameter_distances(start_model, model).total[
                    "relative"
                ]
                row["distance_to_final"] = parameter_distances(model, final.model).total["relative"]
                row["cka_to_final"] = cka_matrix(
                    representations(model, tokens), final_reps
                ).per_hook()
            rows.append(row)

        target = _probe_target(run, config) if config.probes else None
        probe_rows: list[dict[str, Any]] = []
        if config.probes:
            probe_rows = probe_timeline(run, steps, target, config, seq_len, device)
            by_step: dict[int, dict] = {}
            for r in probe_rows:
                by_step.setdefault(r["step"], {})[r["component"]] = r
            for row in rows:
                cells = by_step.get(row["step"], {})
                row["probe"] = {c: r["score"] for c, r in cells.items()}
                row["probe_random"] = {c: r.get("random_score") for c, r in cells.items()}

        metrics = run.metrics()
        if run.finished:
            plateau_exit = run.summary().get("plateau_exit_step")
        else:
            plateau_exit = summarise_metrics(metrics, gap)["plateau_exit_step"] if metrics else None
    return Timeline(
        path=run.path,
        label=run_name(run.path),
        references=refs,
        rows=rows,
        metrics=metrics,
        plateau_exit_step=plateau_exit,
        probe_target=target,
        probe_rows=probe_rows,
        config=config,
    )


def probe_timeline(
    run: Run,
    steps: list[int],
    target: str,
    config: TimelineConfig,
    seq_len: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Probe rows of ``target`` at every step (``probes.sweeps.probe_steps``: the same
    sequences, split and random-model baseline for all steps)."""
    from probes.sweeps import ProbeConfig, probe_steps

    pc = ProbeConfig(
        targets=[target],
        components=config.probe_components or ["resid"],
        n_seqs=config.probe_seqs,
        seq_len=seq_len,
        n_positions=min(config.probe_positions, seq_len),
        cv_folds=3,
        control=None,
        seed=config.seed,
        device=str(device),
    )
    loaders = [(s, (lambda s=s: run.model(s, device=device))) for s in steps]
    return probe_steps(loaders, run.chain, pc, run=display_name(run.path.name))


# ------------------------------------------------------------------------------ figures


def _symlog(ax) -> None:
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)


def plot_timeline(tl: Timeline) -> Figure:
    """Four panels against training step: eval loss (every evaluation, checkpoints coloured by
    verdict) with L* and L_u; head-score excess per head; probe score per component (with the
    random-model score); CKA to the last checkpoint and parameter distance to it. The dashed
    vertical line is the plateau exit."""
    fig = Figure(figsize=(11, 7.2), layout="constrained")
    (ax_loss, ax_heads), (ax_probe, ax_cka) = fig.subplots(2, 2)
    steps = np.array(tl.steps, float)
    m = [r for r in tl.metrics if r.get("eval_loss") is not None]
    if m:
        ax_loss.plot(
            [r["step"] for r in m],
            [r["eval_loss"] for r in m],
            color="0.4",
            lw=1.1,
            label="eval loss (every evaluation)",
        )
    for verdict_name, colour in VERDICT_COLOURS.items():
        sel = [r for r in tl.rows if r["verdict"] == verdict_name]
        if sel:
            ax_loss.scatter(
                [r["step"] for r in sel],
                [r["eval_loss"] for r in sel],
                color=colour,
                s=22,
                zorder=3,
                label=f"checkpoint: {verdict_name}",
            )
    ax_loss.axhline(tl.references["optimal_loss"], color="k", ls="--", lw=0.9, label="optimal L*")
    ax_loss.axhline(tl.references["unigram_loss"], color="k", ls=":", lw=0.9, label="unigram L_u")
    ax_loss.set_ylabel("eval loss (nats)")
    ax_loss.set_title(f"{tl.label}: loss and verdict", fontsize=9)

    first = tl.rows[0]
    n_layers, n_heads = np.asarray(first["previous_token_excess"]).shape
    k = 0
    for layer in range(n_layers):
        for h in range(n_heads):
            prev = [r["previous_token_excess"][layer][h] for r in tl.rows]
            ind = [r["induction_excess"][layer][h] for r in tl.rows]
            ax_heads.plot(
                steps, prev, color=f"C{k}", marker="o", ms=3, label=f"L{layer}H{h} prev-token"
            )
            ax_heads.plot(
                steps,
                ind,
                color=f"C{k}",
                ls="--",
                marker="s",
                ms=3,
                label=f"L{layer}H{h} induction",
            )
            k += 1
    ax_heads.axhline(0, color="k", lw=0.6)
    ax_heads.set_ylabel("score - shuffled baseline")
    ax_heads.set_title("head scores (solid: previous token, dashed: induction)", fontsize=9)

    if tl.probe_rows:
        comps = list(first.get("probe", {}))
        for i, comp in enumerate(comps):
            ax_probe.plot(
                steps,
                [r["probe"].get(comp, np.nan) for r in tl.rows],
                color=f"C{i}",
                marker="o",
                ms=3,
                label=comp,
            )
            rnd = [r["probe_random"].get(comp) for r in tl.rows]
            if any(v is not None for v in rnd):
                ax_probe.axhline(
                    float(np.nanmax([v if v is not None else np.nan for v in rnd])),
                    color=f"C{i}",
                    ls=":",
                    lw=0.8,
                )
        ax_probe.set_ylabel("held-out score (dotted: random model)")
        ax_probe.set_title(f"probe: {tl.probe_target}", fontsize=9)
    else:
        ax_probe.text(
            0.5, 0.5, "probes not run", ha="center", va="center", transform=ax_probe.transAxes
        )

    if "cka_to_final" in first:
        comps = list(first["cka_to_final"])
        for i, comp in enumerate(comps):
            ax_cka.plot(
                steps,
                [r["cka_to_final"].get(comp, np.nan) for r in tl.rows],
                color=f"C{i % 10}",
                lw=1,
                label=comp,
            )
        ax_cka.plot(
            steps,
            [r["distance_to_final"] for r in tl.rows],
            color="k",
            lw=2.2,
            label="param distance to last",
        )
        ax_cka.set_ylim(-0.02, 1.02)
        ax_cka.set_ylabel("CKA to last checkpoint / relative distance")
        ax_cka.set_title("similarity to the final model", fontsize=9)
    else:
        ax_cka.text(0.5, 0.5, "CKA not run", ha="center", va="center", transform=ax_cka.transAxes)

    for ax in (ax_loss, ax_heads, ax_probe, ax_cka):
        _symlog(ax)
        if tl.plateau_exit_step is not None:
            ax.axvline(
                tl.plateau_exit_step,
                color="tab:purple",
                ls="--",
                lw=1.1,
                label="plateau exit" if ax is ax_loss else None,
            )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=2 if ax is not ax_loss else 1)
    return fig


def timeline_markdown(tl: Timeline, figure_names: list[str] | None = None) -> str:
    """Per-checkpoint table (loss gap, verdict, strongest head scores, the probe score at the
    component nearest the output, distance and CKA to the last checkpoint) with the plateau
    exit."""
    lines = [f"# Timeline of {tl.label}", ""]
    lines.append(
        f"Optimal loss L* = {tl.references['optimal_loss']:.4f}, unigram loss L_u = "
        f"{tl.references['unigram_loss']:.4f} nats. Plateau exit (first evaluation below the "
        f"midpoint after one above it): {fmt(tl.plateau_exit_step)}. First checkpoint with "
        f"verdict bigram: {fmt(tl.first_step_with_verdict('bigram'))}."
    )
    header = [
        "step",
        "eval loss",
        "gap to L*",
        "rel. excess",
        "verdict",
        "max prev-token exc.",
        "max induction exc.",
    ]
    probe = bool(tl.probe_rows)
    cka = "cka_to_final" in tl.rows[0]
    if probe:
        output_side = list(tl.rows[0].get("probe", {}))[-1:]  # the component nearest the output
        header.append(f"probe {tl.probe_target} @ {output_side[0]}" if output_side else "probe")
    if cka:
        header += ["distance to last", "CKA to last (output)"]
    rows = []
    for r in tl.rows:
        row = [
            r["step"],
            r["eval_loss"],
            r["gap_entropy"],
            r.get("rel_excess"),
            r["verdict"],
            float(np.max(r["previous_token_excess"])),
            float(np.max(r["induction_excess"])),
        ]
        if probe:
            row.append(r.get("probe", {}).get(output_side[0]) if output_side else None)
        if cka:
            row += [r["distance_to_final"], r["cka_to_final"].get("log_probs")]
        rows.append(row)
    lines += ["", md_table(header, rows)]
    if figure_names:
        lines += ["", *[f"![{n}]({n}.png)" for n in figure_names]]
    return "\n".join(lines) + "\n"
