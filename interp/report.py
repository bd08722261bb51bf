"""A one-page, self-contained HTML report of a run.

``write_report(run_dir)`` writes RUN_DIR/report.html: the run's configuration, training
curves with the reference losses, the verdict, predicted transition probabilities, attention
patterns and head scores, activation patching with the mechanistic verdict, probes, and a
landscape summary (Hessian verdicts at the trained checkpoint and at theta_pi).
Every figure is embedded as a base64 PNG and the page holds no script and no link, so it
renders offline from a single file (``markov-lens report RUN_DIR``).

Each analysis calls the module that owns it: ``interp.compare`` (behaviour and transitions on
held-out inputs), ``interp.attention`` / ``interp.heads``, ``interp.explain`` (patching,
direct paths), ``probes.sweeps`` and ``interp.landscape``; a section whose analysis does not apply (e.g.
theta_pi of an in-context chain) says so instead of failing the whole page.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.compare import (
    Subject,
    behaviour,
    calibration,
    default_device,
    load_subject,
    predicted_probs,
    shared_inputs,
    transition_table,
)
from interp.compare_plots import BEHAVIOUR_KEYS, fmt, plot_curves, plot_transitions
from training.chains import InContextChain
from training.recipe import TrainConfig
from training.runs import load_run
from training.trainer import run_references

REPORT = "report.html"
PATCH_POSITIONS = 32  # positions of the patching sweeps (every position is patched)
CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em;
       margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 10px; color: white;
         font-weight: bold; }
.bigram { background: #2e7d32; } .unigram { background: #c62828; }
.neither { background: #757575; } .note { color: #555; font-size: 0.9em; }
.grid { display: flex; flex-wrap: wrap; gap: 1.5em; } .grid > div { flex: 1 1 300px; }
"""


@dataclass
class ReportConfig:
    """What the report computes (JSON-able). seed, n_seqs, seq_len (None: min(128, n_ctx)):
    the held-out analysis inputs; attention_positions: positions in the attention heatmap;
    probes (probe_seqs x probe_positions); patching (patching_seqs sequences of the analysis
    length, at most 32 tokens); landscape: Hessian verdicts at the trained checkpoint and at
    theta_pi from landscape_sequences sequences of landscape_seq_len tokens (None:
    min(32, n_ctx)), landscape_groups groups and landscape_iters Lanczos steps: a summary
    sized to take seconds; ``markov-lens landscape`` runs the full analysis."""

    seed: int = 0
    n_seqs: int = 32
    seq_len: int | None = None
    attention_positions: int = 24
    probes: bool = True
    probe_seqs: int = 64
    probe_positions: int = 16
    patching: bool = True
    patching_seqs: int = 64
    landscape: bool = True
    landscape_sequences: int = 128
    landscape_seq_len: int | None = None
    landscape_groups: int = 8
    landscape_iters: int = 20

    def __post_init__(self) -> None:
        for name in (
            "n_seqs",
            "attention_positions",
            "probe_seqs",
            "probe_positions",
            "patching_seqs",
            "landscape_sequences",
            "landscape_groups",
            "landscape_iters",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("seq_len", "landscape_seq_len"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 2):
                raise ValueError(f"{name} must be an integer >= 2 or None, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReportConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ReportConfig keys {unknown}; allowed: {sorted(names)}")
        return cls(**d)


# ------------------------------------------------------------------------------- HTML


def figure_data_uri(fig, dpi: int = 100) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI (closed when from pyplot)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    if getattr(fig, "number", None) in plt.get_fignums():  # made by pyplot: release it
        plt.close(fig)


def img(fig, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{figure_data_uri(fig)}">'


def table(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; numbers through ``compare_plots.fmt``, text escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(fmt(v) if not isinstance(v, str) else v)}</td>" for v in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def plain(v: Any) -> str:
    """A config value in words: "-" for unset (None), JSON for lists and dicts."""
    if v is None:
        return "-"
    if isinstance(v, (list, dict, tuple)):
        return json.dumps(v)
    return fmt(v) if isinstance(v, float) else str(v)


def kv_table(d: dict[str, Any]) -> str:
    return table(["field", "value"], [[k, plain(v)] for k, v in d.items()])


def page(title: str, sections: list[tuple[str, str]], header: str = "") -> str:
    """A complete HTML document: inline CSS, no script, no external resource."""
    body = "\n".join(
        f'<section id="{html.escape(_anchor(name))}"><h2>{html.escape(name)}</h2>\n{content}</section>'
        for name, content in sections
    )
    nav = " | ".join(f'<a href="#{_anchor(n)}">{html.escape(n)}</a>' for n, _ in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n{header}\n<p class="note">{nav}</p>\n{body}\n'
        "</body>\n</html>\n"
    )


def _anchor(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def _error_note(what: str, err: Exception) -> str:
    return f'<p class="note">{html.escape(what)} not available: {html.escape(str(err))}</p>'


# --------------------------------------------------------------------------- sections


def section_config(subject: Subject) -> str:
    d = subject.describe()
    parts = ['<div class="grid">']
    for name in ("model", "chain", "train"):
        if d[name]:
            parts.append(f"<div><h3>{name}</h3>{kv_table(d[name])}</div>")
    parts.append("</div>")
    parts.append(
        f"<p>seed {subject.seed}; checkpoint steps "
        f"{html.escape(str(load_run(subject.path).checkpoint_steps()))}</p>"
    )
    return "\n".join(parts)


def section_verdict(subject: Subject) -> str:
    s = subject.summary or {}
    keys = [
        "status",
        "verdict",
        "final_eval_loss",
        "entropy_rate",
        "unigram_loss",
        "gap",
        "final_kl",
        "final_rel_excess",
        "final_rel_unigram",
        "final_dependence",
        "final_accuracy",
        "plateau_first_step",
        "plateau_exit_step",
        "plateau_steps",
        "p",
        "p_hat",
        "q",
        "q_hat",
        "steps",
        "wall_seconds",
        "tokens_per_s",
        "device",
        "n_params",
    ]
    rows = [
        [k, s[k] if isinstance(s[k], (int, float, str)) or s[k] is None else repr(s[k])]
        for k in keys
        if k in s
    ]
    if not rows:
        return '<p class="note">The run has not finished: no summary.json yet.</p>'
    note = (
        "<p>Verdict rule (training.verdicts): bigram if the relative excess r = KL / (L_u - "
        "L*) &le; 0.2 and the dependence on the context &ge; 0.5; unigram if the distance to "
        "the marginal &le; 0.1 and dependence &le; 0.2; otherwise neither.</p>"
    )
    return table(["summary", "value"], rows) + note


def section_behaviour(subject: Subject, config: ReportConfig, device) -> tuple[str, Any]:
    """Behaviour on fresh held-out inputs and the transition figure; returns (html, tokens)."""
    cfg = subject.model.cfg
    seq_len = config.seq_len or min(128, cfg.n_ctx)
    inputs = shared_inputs(subject.chain, config.n_seqs, seq_len, config.seed, device)
    tokens = inputs.tokens[0]
    refs = run_references(subject.chain, TrainConfig(seq_len=seq_len))
    measured = behaviour(subject.model, inputs, refs)
    probs = {subject.label: predicted_probs(subject.model, tokens)}
    tab = transition_table(inputs, probs)
    calib = {subject.label: calibration(inputs.true[0], probs[subject.label])}
    rows = [[k, measured[k]] for k in BEHAVIOUR_KEYS if k in measured]
    out = (
        f"<p>{config.n_seqs} fresh held-out sequences of {seq_len} tokens (seed "
        f"{config.seed}); L* = {refs['optimal_loss']:.4f}, L_u = {refs['unigram_loss']:.4f} "
        "nats.</p>" + table(["metric", "value"], rows)
    )
    if tab is not None:
        S = tab.true.shape[1]
        trows = [
            [f"{c} -> {s}", float(tab.true[i, s]), float(tab.predicted[subject.label][i, s])]
            for i, c in enumerate(tab.contexts)
            for s in range(S)
        ]
        out += table(["transition (last k tokens -> next)", "true", "model"], trows)
    out += img(plot_transitions(tab, calib), "predicted vs true transition probabilities")
    return out, tokens


def section_attention(subject: Subject, tokens, config: ReportConfig) -> str:
    from interp.attention import (
        attention_patterns,
        attention_summary,
        plot_offset_profile,
        plot_patterns,
    )
    from interp.heads import head_scores

    model = subject.model
    n = min(config.attention_positions, tokens.shape[1])
    first = attention_patterns(model, tokens[:1, :n])[:, 0]
    full = attention_patterns(model, tokens)
    summary = attention_summary(full)
    hs = head_scores(full, tokens, subject.chain.n_states, model.cfg.windows())
    rows = []
    for layer in range(hs.previous_token.shape[0]):
        for h in range(hs.previous_token.shape[1]):
            rows.append(
                [
                    f"L{layer}H{h}",
                    float(hs.previous_token[layer, h]),
                    float(hs.previous_token_baseline[layer, h]),
                    float(hs.induction[layer, h]),
                    float(hs.induction_baseline[layer, h]),
                    summary["self_weight"][layer][h],
                    summary["mean_distance"][layer][h],
                ]
            )
    out = img(
        plot_patterns(first, tokens[0, :n].cpu(), title="attention on one held-out sequence"),
        "attention patterns",
    )
    out += img(
        plot_offset_profile(torch.tensor(summary["offset_profile"])), "attention by relative offset"
    )
    out += table(
        [
            "head",
            "prev-token",
            "baseline",
            "induction",
            "baseline",
            "self weight",
            "mean distance (tokens)",
        ],
        rows,
    )
    out += (
        '<p class="note">Scores are attention mass on the previous token / on keys whose '
        "previous token equals the current one, against exact shuffled baselines "
        "(interp.heads).</p>"
    )
    return out


def section_probes(subject: Subject, config: ReportConfig, seq_len: int, device) -> str:
    from probes.plots import plot_heatmap
    from probes.sweeps import ProbeConfig, probe_model

    targets = ["x_n", "x_n-1", "next_prob"] + (
        ["icl_bigram"] if isinstance(subject.chain, InContextChain) else []
    )
    pc = ProbeConfig(
        targets=targets,
        components=["resid"],
        n_seqs=config.probe_seqs,
        seq_len=seq_len,
        n_positions=min(config.probe_positions, seq_len),
        cv_folds=3,
        seed=config.seed,
        device=str(device),
    )
    rows = probe_model(subject.model, subject.chain, pc, run=subject.label, step=subject.step)
    trows = [
        [
            r["component"],
            r["target"],
            r["score"],
            r.get("control_score"),
            r.get("selectivity"),
            r.get("shuffled_score"),
            r.get("random_score"),
        ]
        for r in rows
    ]
    out = img(plot_heatmap(rows, "score", title="probe held-out score"), "probe scores")
    out += table(
        ["component", "target", "score", "control", "selectivity", "shuffled", "random model"],
        trows,
    )
    out += (
        '<p class="note">Ridge (R^2) or logistic (accuracy) probes split by sequence, with '
        "control tasks, shuffled targets and a random-init model (probes.sweeps).</p>"
    )
    return out


def section_landscape(subject: Subject, config: ReportConfig, device) -> str:
    """Hessian verdicts (interp.landscape) at the trained checkpoint and at theta_pi (fixed
    chains), with the paper's prediction for theta_pi and both spectra."""
    from matplotlib.figure import Figure

    from interp.landscape import (
        HessianReport,
        LandscapeConfig,
        hessian_report,
        plot_spectrum,
        sample_tokens,
        theta_pi_analysis,
    )

    cfg = subject.model.cfg
    seq_len = config.landscape_seq_len or min(32, cfg.n_ctx)
    lc = LandscapeConfig(
        n_sequences=config.landscape_sequences,
        seq_len=seq_len,
        seed=config.seed,
        n_groups=config.landscape_groups,
        lanczos_iters=config.landscape_iters,
        noise_draws=4,
        noise_iters=max(2, config.landscape_iters // 3),
    )
    tokens = sample_tokens(subject.chain, lc.n_sequences, seq_len, lc.seed, device)
    trained = hessian_report(subject.model, tokens, lc)
    reports = {f"trained (step {subject.step})": trained.to_dict()}
    res = None
    if isinstance(subject.chain, InContextChain):
        note = (
            '<p class="note">theta_pi (the unigram stationary point) is defined for fixed '
            "chains; this run trains on in-context chains.</p>"
        )
    else:
        res = theta_pi_analysis(subject.chain, cfg, lc, model_seed=subject.seed or 0, device=device)
        reports["theta_pi"] = res["hessian"]
        note = ""

    def pm(h: dict, key: str, se: str) -> str:
        return f"{h[key]:.4g} +- {h[se]:.2g}"

    names = list(reports)
    rows = [
        ["method (parameters)"] + [f"{h['method']} ({h['n_params']})" for h in reports.values()],
        ["lambda_min (+- se)"] + [pm(h, "lambda_min", "lambda_min_se") for h in reports.values()],
        ["lambda_max"] + [h["lambda_max"] for h in reports.values()],
        ["flat band (sampling error)"] + [h["flat_tol"] for h in reports.values()],
        ["held-out curvature (+- se)"]
        + [pm(h, "heldout_curvature", "heldout_se") for h in reports.values()],
        ["verdict"] + [h["verdict"] for h in reports.values()],
    ]
    if res is not None:
        pad = [""] * (len(names) - 1)
        rows += [
            ["loss (nats)"] + pad + [f"{res['loss']['mean']:.4f} +- {res['loss']['se']:.4f}"],
            ["unigram loss H(pi)"] + pad + [res["unigram_loss"]],
            ["gradient norm / its noise"] + pad + [res["gradient"]["ratio"]],
            ["paper code's proxy"] + pad + [res["proxy"]],
            ["paper's prediction"] + pad + [res["prediction"] or "-"],
            ["agreement"] + pad + [res["agreement"]],
        ]
    fig = Figure(figsize=(5.2 * len(reports), 3.2), layout="constrained")
    axes = fig.subplots(1, len(reports), squeeze=False)[0]
    for ax, (name, h) in zip(axes, reports.items(), strict=True):
        plot_spectrum(HessianReport(**h), ax=ax, title=f"{name}: {h['verdict']}")
    intro = (
        f"<p>Hessian of the population loss ({config.landscape_sequences} sequences of "
        f"{seq_len} tokens, interp.landscape) at the trained checkpoint and at theta_pi, the "
        "unigram stationary point of this architecture and chain.</p>"
    )
    return intro + note + table(["quantity"] + names, rows) + img(fig, "Hessian spectra")


def _carrier_text(carrier: str | None) -> str:
    """Which component carries the dependence on x_n to the output, in words."""
    if carrier is None:
        return "no single component carries the dependence on x_n"
    return f"carried mainly by {html.escape(str(carrier))}"


def section_patching(subject: Subject, config: ReportConfig, seq_len: int) -> str:
    """Patching, direct paths and the mechanistic verdict (``interp.explain.explain_model``)."""
    from interp.explain import ExplainConfig, explain_model
    from interp.patching_plots import plot_direct_paths, plot_patching_result

    ec = ExplainConfig(
        n_seqs=config.patching_seqs, seq_len=min(seq_len, PATCH_POSITIONS), seed=config.seed
    )
    expl = explain_model(subject.model, subject.chain, ec)
    s = expl.summary
    out = (
        f"<p>Mechanistic verdict <b>{html.escape(s['verdict'])}</b> (flipping x_n changes the "
        f"logit difference by {fmt(s['flip_ratio'], 3)} times what it changes for a perfect "
        f"predictor; {_carrier_text(s['carrier'])}). {ec.n_seqs} sequences of "
        f"{s['seq_len']} tokens (interp.explain).</p>"
    )
    rows = []
    for name, c in s["corruptions"].items():
        shares = s["direct_paths"][name]["shares"]
        rows.append(
            [
                name,
                c["model_clean"],
                c["model_corrupt"],
                c["model_effect"],
                c["true_effect"],
                c["ratio"],
                shares.get("direct"),
                shares.get("attention"),
                shares.get("mlp"),
            ]
        )
    out += table(
        [
            "corruption",
            "M_clean",
            "M_corrupt",
            "model effect",
            "true effect",
            "ratio",
            "direct share",
            "attention share",
            "MLP share",
        ],
        rows,
    )
    out += img(
        plot_direct_paths(s["direct_paths"], "which component carries the effect to the output"),
        "direct-path shares",
    )
    first = next(iter(expl.patching))
    for direction, res in expl.patching[first].items():
        title = f"{first}, {direction}: normalised {res.metric}"
        out += img(plot_patching_result(res, title), f"patching {first} {direction}")
    out += (
        '<p class="note">Denoising patches clean activations into the corrupted run '
        "(sufficiency: 1 = restored); noising patches corrupted ones into the clean run "
        "(necessity: 0 = destroyed). Logit difference answer - foil at the last position.</p>"
    )
    return out


# ------------------------------------------------------------------------------ build


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
            f"<p>{badge} run directory <code>{html.escape(str(subject.path))}</code>, "
            f"checkpoint step {subject.step}; optimal loss L* = {refs['optimal_loss']:.4f}, "
            f"unigram loss L_u = {refs['unigram_loss']:.4f} nats.</p>"
        )
        stage("configuration, training curves, verdict")
        sections: list[tuple[str, str]] = [("Configuration", section_config(subject))]
        if subject.metrics:
            sections.append(("Training curves", img(plot_curves([subject]), "training curves")))
        sections.append(("Verdict", section_verdict(subject)))
        stage("predictions")
        beh, tokens = section_behaviour(subject, config, device)
        sections.append(("Predictions", beh))
        stage("attention")
        sections.append(("Attention", section_attention(subject, tokens, config)))
        seq_len = tokens.shape[1]
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
                sections.append((name, _error_note(name, err)))
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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
