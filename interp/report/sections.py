"""The sections every report has: the run's configuration, its verdict, its predictions on
held-out inputs (``interp.compare``) and its attention (``interp.attention`` / ``interp.heads``)."""

from __future__ import annotations

import html

import torch

from interp.compare import (
    Subject,
    behaviour,
    calibration,
    predicted_probs,
    shared_inputs,
    transition_table,
)
from interp.compare.plots import BEHAVIOUR_KEYS, plot_transitions
from interp.measurement import MeasurementSpec, Sample, sample_sequences
from interp.report.config import ReportConfig
from interp.report.html import img, kv_table, table
from training.recipe import TrainConfig
from training.runs import load_run
from training.trainer import run_references


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


def analysis_sample(subject: Subject, config: ReportConfig) -> Sample:
    """The report's predictions / attention / patching sample: MeasurementSpec's flip sample
    (the one ``explain`` uses) unless config sets n_seqs or seq_len."""
    train_len = subject.train_config.seq_len if subject.train_config is not None else None
    spec = MeasurementSpec(seed=config.seed)
    default = spec.flip_sample(train_len, subject.model.cfg.n_ctx, config.n_seqs)
    return Sample(default.n_seqs, config.seq_len or default.seq_len, config.seed)


def section_behaviour(subject: Subject, config: ReportConfig, device) -> str:
    """Behaviour on fresh held-out inputs (``analysis_sample``) and the transition figure."""
    sample = analysis_sample(subject, config)
    seq_len = sample.seq_len
    inputs = shared_inputs(subject.chain, sample.n_seqs, seq_len, config.seed, device)
    tokens = inputs.tokens[0]
    refs = run_references(subject.chain, TrainConfig(seq_len=seq_len))
    measured = behaviour(subject.model, inputs, refs)
    probs = {subject.label: predicted_probs(subject.model, tokens)}
    tab = transition_table(inputs, probs)
    calib = {subject.label: calibration(inputs.true[0], probs[subject.label])}
    rows = [[k, measured[k]] for k in BEHAVIOUR_KEYS if k in measured]
    out = (
        f"<p>Fresh held-out sample: {sample.describe()}; L* = {refs['optimal_loss']:.4f}, L_u = {refs['unigram_loss']:.4f} "
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
    return out


def section_attention(subject: Subject, config: ReportConfig) -> str:
    """Attention patterns, offset profile and head scores on ``analysis_sample``'s sequences."""
    from interp.attention import (
        attention_patterns,
        attention_summary,
        plot_offset_profile,
        plot_patterns,
    )
    from interp.heads import head_scores

    model = subject.model
    sample = analysis_sample(subject, config)
    # the sequences explain's head scores are measured on (interp.measurement)
    tokens = sample_sequences(subject.chain, sample).to(model.W_E.device)
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
        plot_offset_profile(
            torch.tensor(summary["offset_profile"]),
            uniform=torch.tensor(summary["uniform_profile"]),
        ),
        "attention by relative offset",
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
        f"(interp.heads); sample: {sample.describe()}.</p>"
    )
    return out
