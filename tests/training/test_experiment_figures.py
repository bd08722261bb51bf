"""The reproductions' loss curves: reference lines on the runs' own held-out batches."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_runs import CHAIN
from training.experiments.figures import (
    figure_row,
    plot_loss_curves,
    reference_lines,
    sample_references,
)
from training.references import entropy_rate, unigram_loss
from training.runs import load_run
from training.trainer.evaluation import EvalSet, PrecomputedLogits, evaluate


def test_sample_references_are_the_true_predictors_eval_loss(tiny_tied_run):
    """evaluate() of the true kernel on the run's held-out batches gives exactly the "true"
    line: the same tokens, the same positions; the entropy rate is off by the sample."""
    run = load_run(tiny_tied_run)
    refs = sample_references({"run_dir": str(tiny_tied_run)})
    eval_set = EvalSet(run.chain, run.train_config, run.seed, torch.device("cpu"))
    kernel = torch.tensor([[0.5, 0.5], [0.8, 0.2]], dtype=torch.float64)
    logits = [kernel[t].log() for t in eval_set.tokens]  # the law of x_{n+1} given x_n
    truth = PrecomputedLogits(eval_set.tokens, logits)
    gap = {"optimal_loss": entropy_rate(CHAIN), "unigram_loss": unigram_loss(CHAIN)}
    got = evaluate(truth, eval_set, gap, _no_autocast)
    assert refs["true"] == pytest.approx(got["eval_loss"], rel=1e-12, abs=0)
    pi = torch.tensor([0.8, 0.5], dtype=torch.float64) / 1.3
    uniform = [pi.log().expand(*t.shape, 2) for t in eval_set.tokens]
    marginal = evaluate(PrecomputedLogits(eval_set.tokens, uniform), eval_set, gap, _no_autocast)
    assert refs["unigram"] == pytest.approx(marginal["eval_loss"], rel=1e-12, abs=0)
    assert refs["true"] != entropy_rate(CHAIN)  # a finite sample: its own optimum


def _no_autocast():
    import contextlib

    return contextlib.nullcontext()


def test_loss_curves_draw_the_sample_optimum_not_the_entropy_rate(tiny_tied_run):
    row = {"run_dir": str(tiny_tied_run)}
    refs = sample_references(row)
    fig, (ax,) = figure_row(1)
    plot_loss_curves(ax, [row], lambda r: "tied", lambda g: ("tab:red", g))
    reference_lines(ax, entropy_rate(CHAIN), unigram_loss(CHAIN), runs=[row])
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    (true,) = [ln for name, ln in lines.items() if name.startswith("true predictor on these")]
    assert list(true.get_ydata()) == [refs["true"]] * 2
    (uni,) = [ln for name, ln in lines.items() if name.startswith("unigram predictor on these")]
    assert list(uni.get_ydata()) == [refs["unigram"]] * 2
    assert not any(name.startswith("entropy rate") for name in lines)
    fig, (ax,) = figure_row(1)  # no run directory to rebuild the batches from: the expectation
    reference_lines(ax, 0.6, 0.67, runs=[{"run_dir": "/nonexistent"}])
    assert [ln.get_label() for ln in ax.get_lines()] == ["entropy rate 0.600", "unigram loss 0.670"]
