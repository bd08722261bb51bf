"""The verdict in one call, on real trained tiny runs (training.trainer.train), and the
``markov-lens attention | patch | explain`` commands."""

import json

import pytest

from interp.explain import (
    ExplainConfig,
    explain_model,
    explain_run,
    mechanistic_verdict,
    write_report,
)
from markov_lens.cli import main
from training.chains import BinaryChain, InContextChain
from training.config import ModelConfig
from training.recipe import TrainConfig
from training.runs import load_run
from training.trainer import train

CHAIN = BinaryChain(0.5, 0.8)  # p + q > 1: the paper's trap


def _train(path, model_cfg, chain, iters, batch=16, lr=1e-2, per_octave=0, seed=0):
    cfg = TrainConfig(
        iters=iters,
        batch=batch,
        seq_len=32,
        lr=lr,
        eval_every=iters,
        eval_batches=1,
        save_every=0,
        checkpoints_per_octave=per_octave,
        device="cpu",
    )
    train(model_cfg, chain, cfg, seed=seed, out_dir=path, progress=False)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread_module):
    """Three real runs: an untied 1-layer model that learns the kernel, a tied model
    initialised at theta_pi (the unigram stationary point), and a 2-layer attention-only model
    on a doubly stochastic in-context chain (whose unigram loss is log 2, so beating it needs
    x_n)."""
    root = tmp_path_factory.mktemp("runs")
    out = {
        "bigram": _train(
            root / "untied",
            ModelConfig.paper(n_ctx=32, tie_embeddings=False),
            CHAIN,
            80,
            per_octave=1,
        ),
        "theta_pi": _train(
            root / "theta_pi", ModelConfig.paper(n_ctx=32, init="theta_pi"), CHAIN, 5
        ),
        "in_context": _train(
            root / "in_context",
            ModelConfig.paper(
                n_ctx=32, n_layers=2, d_model=16, attn_only=True, tie_embeddings=False
            ),
            InContextChain(states=2, doubly_stochastic=True),
            150,
            batch=32,
        ),
    }
    return out


def _explain(run_dir, **kw):
    run = load_run(run_dir)
    config = ExplainConfig(n_seqs=32, seq_len=24, **kw)
    return explain_model(run.model(device="cpu"), run.chain, config)


def test_untied_model_is_a_bigram_solution_through_the_mlp_and_direct_path(runs):
    summary = load_run(runs["bigram"]).summary()
    assert summary["final_eval_loss"] < summary["unigram_loss"]
    s = _explain(runs["bigram"]).summary
    assert s["verdict"] == "bigram" and 0.7 < s["flip_ratio"] < 1.3
    shares = s["direct_paths"]["flip"]["shares"]
    # one layer, the current token: nothing to look up elsewhere, attention carries ~nothing
    assert abs(shares["attention"]) < 0.1 and shares["mlp"] + shares["direct"] > 0.85
    assert s["carrier"] in ("mlp", "direct")
    assert s["corruptions"]["resample"]["ratio"] > 0.7
    readout = s["corruptions"]["flip"]["readout"]
    assert readout["L0.resid_pre"]["denoise"] == pytest.approx(1.0, abs=1e-4)


def test_theta_pi_model_is_a_unigram_solution(runs):
    s = _explain(runs["theta_pi"]).summary
    assert s["verdict"] == "unigram"
    flip = s["corruptions"]["flip"]
    assert abs(flip["model_effect"]) < 0.1 * flip["true_effect"]  # the output ignores x_n
    assert flip["true_effect"] > 1.0


def test_in_context_model_reads_x_n_through_attention(runs):
    summary = load_run(runs["in_context"]).summary()
    assert summary["final_eval_loss"] < summary["unigram_loss"] - 0.02
    expl = _explain(runs["in_context"])
    s = expl.summary
    assert set(s["corruptions"]) == {"flip", "resample", "kernel_swap"}
    assert s["verdict"] in ("partial", "bigram") and s["flip_ratio"] > 0.15
    assert s["carrier"] == "attention"
    swap = s["corruptions"]["kernel_swap"]
    assert swap["true_effect"] > 0.3 and swap["model_effect"] > 0.1
    # kernel swap keeps x_n: the embedding at the readout carries none of its effect
    assert s["direct_paths"]["kernel_swap"]["shares"]["direct"] == pytest.approx(0.0, abs=1e-6)
    assert (
        len(s["head_scores"]["induction"]) == 2
        and "mlp_out" not in expl.patching["flip"]["denoise"].raw
    )


def test_report_files(runs, tmp_path):
    config = ExplainConfig(n_seqs=16, seq_len=12, corruptions=["flip"])
    report, expl = explain_run(runs["theta_pi"], tmp_path / "r", config=config, device="cpu")
    text = report.read_text()
    assert "**unigram**" in text and "![offset profile](offset_profile.png)" in text
    names = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"report.md", "explain.json", "attention_example.png", "patch_flip_noise.png"} <= names
    record = json.loads((tmp_path / "r" / "explain.json").read_text())
    assert record["verdict"] == "unigram" and "patching" in record
    with pytest.raises(FileExistsError, match="--force"):
        write_report(expl, tmp_path / "r", "theta_pi")


def test_verdict_thresholds():
    assert mechanistic_verdict(1.0, 1.1)[0] == "bigram"
    assert mechanistic_verdict(0.05, 1.0)[0] == "unigram"
    assert mechanistic_verdict(0.3, 1.0)[0] == "partial"
    assert mechanistic_verdict(0.3, 0.0)[0] == "undetermined"
    with pytest.raises(ValueError, match="corruption"):
        ExplainConfig(corruptions=["noise"])


def test_cli_commands(runs, tmp_path, capsys):
    run_dir = runs["bigram"]
    common = ["--n-seqs", "8", "--seq-len", "12", "--device", "cpu"]
    assert main(["explain", str(run_dir), *common]) == 0
    out_dir = run_dir / "interp" / "explain"
    assert "verdict: bigram" in capsys.readouterr().out
    assert (out_dir / "report.md").exists() and (out_dir / "direct_paths.png").exists()
    # refuses to overwrite (before computing anything); --force is exercised on patch below
    assert main(["explain", str(run_dir), *common]) == 2
    assert "already holds" in capsys.readouterr().err

    steps = load_run(run_dir).checkpoint_steps()
    assert main(["attention", str(run_dir), *common, "--step", str(steps[1])]) == 0
    att_dir = run_dir / "interp" / f"attention-step_{steps[1]:06d}"
    html = (att_dir / "attention.html").read_text()
    assert "CircuitsVis.render(" in html and "unpkg" not in html
    record = json.loads((att_dir / "attention.json").read_text())
    assert record["step"] == steps[1] and record["seq_len"] == 12

    out = tmp_path / "patch"
    args = ["patch", str(run_dir), *common, "--out", str(out), "--acts", "resid_pre,attn_out"]
    capsys.readouterr()
    import training.progress

    training.progress.DEFAULT_DELAY, delay = 0.0, training.progress.DEFAULT_DELAY
    try:
        assert main([*args, "--direction", "noise"]) == 0
    finally:
        training.progress.DEFAULT_DELAY = delay
    assert [ln.split(" (")[0] for ln in capsys.readouterr().err.splitlines()] == [
        "markov-lens patch: [1/2] noise: resid_pre, attn_out",
        "markov-lens patch: [2/2] direct paths",
    ]
    record = json.loads((out / "patching.json").read_text())
    assert list(record["results"]) == ["noise"] and (out / "patch_flip_noise.png").exists()
    assert set(record["results"]["noise"]["raw"]) == {"resid_pre", "attn_out"}
    assert main([*args, "--direction", "noise"]) == 2
    assert main([*args, "--direction", "noise", "--force", "--metric", "logprob"]) == 0
    assert (
        json.loads((out / "patching.json").read_text())["results"]["noise"]["metric"] == "logprob"
    )
    capsys.readouterr()
    assert (
        main(["patch", str(run_dir), *common, "--out", str(tmp_path / "p2"), "--acts", "resid"])
        == 2
    )
    assert "unknown activation" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["attention", str(run_dir), "--step", "3", "--out", str(tmp_path / "a")]) == 2
    assert "no checkpoint at step 3" in capsys.readouterr().err
    assert (
        main(["patch", str(run_dir), "--corruption", "kernel_swap", "--out", str(tmp_path / "k")])
        == 2
    )
    assert "in-context chain" in capsys.readouterr().err


def test_patching_and_attention_figures_show_their_data(runs):
    """The patch_* heatmaps keep only the positions the corruption touches (v1: one informative
    column of 32, the rest a flat field) and the attention heatmaps use a scale relative to
    uniform attention (v1: linear 0-1, uniformly dark): tests.figures.assert_fills_axes."""
    import matplotlib.pyplot as plt

    from interp.attention import plot_patterns
    from interp.patching.plots import plot_patching_result
    from tests.figures import assert_fills_axes

    run = load_run(runs["bigram"])
    expl = explain_model(run.model(device="cpu"), run.chain, ExplainConfig(n_seqs=32))
    for by_direction in expl.patching.values():
        for res in by_direction.values():
            fig = plot_patching_result(res, "t")
            assert_fills_axes(fig)
            assert fig.axes[0].get_images()[0].get_array().shape[1] == 1  # only x_n is touched
            assert f"{res.n_changed} of {res.n_pairs} pairs changed" in fig.axes[0].get_title()
            plt.close(fig)
    for patterns in (expl.patterns_example, expl.patterns_mean):
        fig = plot_patterns(patterns, None)
        assert_fills_axes(fig)
        plt.close(fig)
