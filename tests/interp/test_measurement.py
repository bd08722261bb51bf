"""One measurement spec per quantity (interp.measurement): ``explain``, ``report`` and
``landscape RUN_DIR`` draw the same sample for the same quantity, so with their defaults they
report the same flip ratio, head scores and Hessian verdict on one checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch

from interp.compare import load_subject
from interp.compare.plots import fmt
from interp.explain import explain_run, mechanistic_verdict
from interp.measurement import MeasurementSpec, Sample, classify_interval, ratio_interval
from interp.report import ReportConfig
from interp.report.optional_sections import hessian_sample, section_patching, trained_hessian
from interp.report.sections import analysis_sample, section_attention
from markov_lens.cli import main

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_samples_use_the_training_length_not_a_fixed_32():
    spec = MeasurementSpec()
    assert spec.flip_sample(128, 128) == Sample(64, 128, 0)
    assert spec.flip_sample(512, 512) == Sample(64, 128, 0)  # patching sweeps every position
    assert spec.hessian_sample(128, 128) == Sample(256, 128, 0)
    assert spec.hessian_sample(512, 256) == Sample(128, 256, 0)  # capped at n_ctx
    assert spec.hessian_sample(32, 32, n_seqs=40).describe() == "40 sequences x 32 tokens, seed 0"
    with pytest.raises(ValueError, match="flip_seqs"):
        MeasurementSpec(flip_seqs=1)


def test_ratio_interval_is_the_delta_method_and_straddling_is_undecided():
    gen = torch.Generator().manual_seed(0)
    t = torch.where(torch.rand(4000, generator=gen) < 0.4, 1.2, 0.3).double()
    e = 0.8 * t + 0.1 * torch.randn(4000, generator=gen, dtype=torch.float64)
    rho, se = ratio_interval(e, t)
    assert rho == pytest.approx(0.8, abs=0.01)
    # independent check: the spread of rho over 200 resamples of 4000 pairs
    idx = torch.randint(0, 4000, (200, 4000), generator=gen)
    boots = e[idx].mean(1) / t[idx].mean(1)
    assert se == pytest.approx(float(boots.std()), rel=0.25)
    assert classify_interval(0.55, 0.01, 1.96, [("bigram", 0.5, math.inf)]) == "bigram"
    assert classify_interval(0.55, 0.05, 1.96, [("bigram", 0.5, math.inf)]) == "undecided"
    assert mechanistic_verdict(0.52, 1.0, 0.03)[0] == "undecided"
    assert mechanistic_verdict(0.52, 1.0, 0.001)[0] == "bigram"
    assert mechanistic_verdict(0.3, 1.0, 0.01)[0] == "partial"


def test_explain_and_report_give_the_same_flip_ratio_and_head_scores(tiny_tied_run, tmp_path):
    _, expl = explain_run(tiny_tied_run, tmp_path / "explain", device="cpu")
    s = expl.summary
    subject = load_subject(tiny_tied_run, device="cpu")
    config = ReportConfig()
    sample = analysis_sample(subject, config)
    assert s["sample"] == sample.to_dict() and sample.seq_len == 32  # the run's length
    html = section_patching(subject, config, sample.seq_len)
    assert f"Sample: {s['sample_text']}" in html
    assert f"<b>{s['verdict']}</b>" in html and s["verdict"] in ("unigram", "undecided")
    ratio = f"{s['flip_ratio']:.3g}"
    assert f"by {ratio}" in html, (ratio, html[:400])
    changed = s["corruptions"]["resample"]["n_changed"]
    assert 0 < changed < s["sample"]["n_seqs"]  # resample leaves some pairs identical
    assert f"{changed} of {s['sample']['n_seqs']}" in html
    att = section_attention(subject, config)
    prev = s["head_scores"]["previous_token"][0][0]
    assert f"<td>{fmt(prev)}</td>" in att and s["sample_text"] in att
    report_md = (tmp_path / "explain" / "report.md").read_text()
    assert s["sample_text"] in report_md and "changed pairs" in report_md


def test_report_and_landscape_measure_the_same_hessian(tiny_tied_run, tmp_path, monkeypatch):
    subject = load_subject(tiny_tied_run, device="cpu")
    # with every default: the same tokens and the same LandscapeConfig reach hessian_report
    seen = []

    class Stop(Exception):
        pass

    def capture(model, tokens, cfg, *args, **kwargs):
        seen.append((tokens.clone(), cfg.to_dict()))
        raise Stop

    import interp.landscape as landscape_pkg
    import markov_lens.cli.landscape as cli_landscape

    monkeypatch.setattr(landscape_pkg, "hessian_report", capture)
    monkeypatch.setattr(cli_landscape, "hessian_report", capture)
    with pytest.raises(Stop):
        trained_hessian(subject, ReportConfig(), "cpu")
    with pytest.raises(Stop):
        main(["landscape", str(tiny_tied_run), "--out", str(tmp_path / "d"), "--device", "cpu"])
    (tok_r, cfg_r), (tok_l, cfg_l) = seen
    assert torch.equal(tok_r, tok_l) and tok_r.shape == (1024, 32)
    cfg_r.pop("n_groups"), cfg_l.pop("n_groups")  # theta_pi's gradient noise, not the Hessian
    assert cfg_r == cfg_l
    assert hessian_sample(subject, ReportConfig()) == Sample(1024, 32, 0)
    monkeypatch.undo()
    # and, computed on a smaller common sample, the same numbers and verdict
    sample, _, report = trained_hessian(subject, ReportConfig(landscape_sequences=32), "cpu")
    out = tmp_path / "l"
    args = ["landscape", str(tiny_tied_run), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--n-sequences", "32", "--points", "2"]) == 0
    h = json.loads((out / "landscape.json").read_text())["hessian"]
    assert h["verdict"] == report.verdict and h["lambda_min"] == report.lambda_min
    assert h["heldout_curvature"] == report.heldout_curvature
    assert sample.describe() == "32 sequences x 32 tokens, seed 0"
