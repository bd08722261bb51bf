"""The sections a ``ReportConfig`` can turn off, each a heavier analysis that may not apply
to a run (``build_report`` then says so): activation patching and the mechanistic verdict
(``interp.explain``), probes (``probes.sweeps``) and the landscape (``interp.landscape``)."""

from __future__ import annotations

import html

from interp.compare import Subject
from interp.compare.plots import fmt
from interp.measurement import MeasurementSpec, Sample
from interp.report.config import ReportConfig
from interp.report.html import img, table
from training.chains import InContextChain


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
            r.get("chance"),
            r.get("control_score"),
            r.get("control_chance"),
            r.get("selectivity"),
            r.get("shuffled_score"),
            r.get("random_score"),
        ]
        for r in rows
    ]
    out = img(plot_heatmap(rows, "score", title="probe held-out score"), "probe scores")
    out += table(
        [
            "component",
            "target",
            "score",
            "chance",
            "control",
            "control chance",
            "selectivity",
            "shuffled",
            "random model",
        ],
        trows,
    )
    out += (
        '<p class="note">Ridge (R^2) or logistic (accuracy) probes split by sequence, with '
        "control tasks, shuffled targets and a random-init model (probes.sweeps). Chance: the "
        "majority class (accuracy) or 0 (R^2); selectivity is shown only where the score is "
        "above chance (- otherwise).</p>"
    )
    return out


def section_landscape(subject: Subject, config: ReportConfig, device) -> str:
    """Hessian verdicts (interp.landscape) at the trained checkpoint and at theta_pi (fixed
    chains), with the paper's prediction for theta_pi and both spectra."""
    from matplotlib.figure import Figure

    from interp.landscape import (
        HessianReport,
        plot_spectrum,
        theta_pi_analysis,
    )

    cfg = subject.model.cfg
    sample, lc, trained = trained_hessian(subject, config, device)
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
        ["flat band (sampling error)"]
        + [h.get("flat_band", h["flat_tol"]) for h in reports.values()],
        ["Weyl bound on it"] + [h["flat_tol"] for h in reports.values()],
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
        f"<p>Hessian of the population loss (sample: {sample.describe()}, the sample "
        "<code>markov-lens landscape RUN_DIR</code> uses by default, interp.measurement; "
        "interp.landscape) at the trained checkpoint and at theta_pi, the unigram stationary "
        "point of this architecture and chain. Intervals are +- one standard error.</p>"
    )
    return intro + note + table(["quantity"] + names, rows) + img(fig, "Hessian spectra")


def hessian_sample(subject: Subject, config: ReportConfig) -> Sample:
    """The Hessian's sample: MeasurementSpec's (the training length, 32768 tokens' worth)
    unless config sets landscape_sequences or landscape_seq_len."""
    train_len = subject.train_config.seq_len if subject.train_config is not None else None
    n_ctx = subject.model.cfg.n_ctx
    spec = MeasurementSpec(seed=config.seed)
    if config.landscape_seq_len is not None:
        train_len = min(config.landscape_seq_len, n_ctx)
    return spec.hessian_sample(train_len, n_ctx, config.landscape_sequences)


def trained_hessian(subject: Subject, config: ReportConfig, device):
    """(sample, LandscapeConfig, HessianReport) at the subject's checkpoint: the measurement
    ``markov-lens landscape RUN_DIR`` makes with the same sample (``hessian_sample``)."""
    from interp.landscape import hessian_report, sample_tokens

    sample = hessian_sample(subject, config)
    lc = MeasurementSpec(seed=config.seed).hessian_config(
        sample, n_groups=config.landscape_groups, lanczos_iters=config.landscape_iters
    )
    tokens = sample_tokens(subject.chain, lc.n_sequences, sample.seq_len, lc.seed, device)
    return sample, lc, hessian_report(subject.model, tokens, lc)


def _carrier_text(carrier: str | None) -> str:
    """Which component carries the dependence on x_n to the output, in words."""
    if carrier is None:
        return "no single component carries the dependence on x_n"
    return f"carried mainly by {html.escape(str(carrier))}"


def section_patching(subject: Subject, config: ReportConfig, seq_len: int) -> str:
    """Patching, direct paths and the mechanistic verdict (``interp.explain.explain_model``)."""
    from interp.explain import ExplainConfig, explain_model
    from interp.patching.plots import plot_direct_paths, plot_patching_result

    ec = ExplainConfig(
        n_seqs=config.patching_seqs or ExplainConfig.n_seqs, seq_len=seq_len, seed=config.seed
    )
    expl = explain_model(subject.model, subject.chain, ec)
    s = expl.summary
    se = s["flip_ratio_se"]
    interval = f" +- {fmt(se, 2)}" if se is not None else ""
    out = (
        f"<p>Mechanistic verdict <b>{html.escape(s['verdict'])}</b> (flipping x_n changes the "
        f"logit difference by {fmt(s['flip_ratio'], 3)}{interval} (se) times what it changes "
        f"for a perfect predictor; {_carrier_text(s['carrier'])}). Sample: "
        f"{s['sample_text']}, the one <code>markov-lens explain</code> uses by default "
        "(interp.explain, interp.measurement).</p>"
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
                c["ratio_se"],
                f"{c['n_changed']} of {c['n_pairs']}",
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
            "ratio se",
            "changed pairs",
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
