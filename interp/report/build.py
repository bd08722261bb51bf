"""The whole page of a run: ``build_report`` (the HTML string) and ``write_report`` (the file,
by default RUN_DIR/report.html)."""

from __future__ import annotations

import html
import os
from pathlib import Path

import torch

from interp.compare import default_device, load_subject
from interp.compare.plots import plot_curves
from interp.report.config import ReportConfig
from interp.report.html import error_note, img, page, plain
from interp.report.optional_sections import section_landscape, section_patching, section_probes
from interp.report.sections import (
    analysis_sample,
    section_attention,
    section_behaviour,
    section_config,
    section_verdict,
)
from training.runs import display_name, load_run, write_text_atomic

REPORT = "report.html"


def build_report(
    run_dir: str | os.PathLike,
    config: ReportConfig | None = None,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> str:
    """The report of ``run_dir`` as one HTML string (module docstring). progress: a line
    (or a bar) per section on stderr."""
    from training.progress import Stages

    config = config or ReportConfig()
    device = torch.device(device) if device is not None else default_device()
    subject = load_subject(load_run(run_dir), device=device)
    n_optional = sum(bool(x) for x in (config.patching, config.probes, config.landscape))
    with Stages("markov-lens report", 3 + n_optional, enabled=progress) as stage:
        verdict_name = (subject.summary or {}).get("verdict")
        badge = (
            f'<span class="badge {html.escape(verdict_name)}">{html.escape(verdict_name)}</span>'
            if verdict_name in ("bigram", "unigram", "neither")
            else ""
        )
        refs = subject.references
        head = (
            f"<p>{badge} run directory <code>{html.escape(display_name(subject.path))}</code>, "
            f"checkpoint step {subject.step}; optimal loss L* = {refs['optimal_loss']:.4f}, "
            f"unigram loss L_u = {refs['unigram_loss']:.4f} nats.</p>"
        )
        stage("configuration, training curves, verdict")
        sections: list[tuple[str, str]] = [("Configuration", section_config(subject))]
        if subject.metrics:
            sections.append(("Training curves", img(plot_curves([subject]), "training curves")))
        sections.append(("Verdict", section_verdict(subject)))
        stage("predictions")
        sections.append(("Predictions", section_behaviour(subject, config, device)))
        stage("attention")
        sections.append(("Attention", section_attention(subject, config)))
        seq_len = analysis_sample(subject, config).seq_len
        optional = [
            (
                "Activation patching",
                config.patching,
                lambda: section_patching(subject, config, seq_len),
            ),
            ("Probes", config.probes, lambda: section_probes(subject, config, seq_len, device)),
            (
                "Landscape",
                config.landscape,
                lambda: section_landscape(subject, config, device),
            ),
        ]
        for name, wanted, build in optional:
            if not wanted:
                continue
            stage(name.lower())
            try:
                sections.append((name, build()))
            except ValueError as err:  # the analysis does not apply to this run: say so
                sections.append((name, error_note(name, err)))
        settings = "; ".join(
            f"{html.escape(str(k))} = {html.escape(plain(v))}" for k, v in config.to_dict().items()
        )
        footer = (
            '<p class="note">Written by <code>markov-lens report</code>. Analysis settings: '
            + settings
            + ".</p>"
        )
        sections.append(("About this page", footer))
    return page(f"markov-lens report: {subject.label}", sections, head)


def write_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    config: ReportConfig | None = None,
    force: bool = False,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Path:
    """Write ``build_report(run_dir)`` to ``out`` (default RUN_DIR/report.html). An existing
    file is only replaced with force=True (FileExistsError otherwise)."""
    path = Path(out) if out is not None else Path(run_dir) / REPORT
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"the report is an HTML file: --out must end in .html, got {path}")
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists; pass --force to replace it")
    text = build_report(run_dir, config, device=device, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, text)
