"""`markov-lens train | sweep | reproduce` end to end, in process."""

from __future__ import annotations

import json

import pytest

from markov_lens.cli import main
from training.runs import load_run

TINY = [
    "--iters",
    "12",
    "--seq-len",
    "16",
    "--batch",
    "4",
    "--eval-every",
    "4",
    "--eval-batches",
    "1",
    "--no-progress",
    "--threads",
    "1",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--p",
        "0.5",
        "--q",
        "0.8",
        "--layers",
        "1",
        "--d-model",
        "8",
        "--no-tie",
        "--window",
        "none",
        "--seed",
        "3",
        *TINY,
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| verdict |" in text and f"run directory: {out}" in text
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoints"):
        assert (out / name).exists(), name
    run = load_run(out)
    assert (
        run.seed == 3
        and not run.model_config.tie_embeddings
        and run.model_config.attn_window is None
    )
    assert run.train_config.iters == 12 and run.model_config.n_ctx == 16
    summary = run.summary()
    for key in (
        "final_eval_loss",
        "entropy_rate",
        "unigram_loss",
        "verdict",
        "steps",
        "seed",
        "wall_seconds",
    ):
        assert key in summary
    before = (out / "summary.json").read_text()
    # a finished RUN_DIR is never overwritten without --force
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "markov-lens train: error:" in err and "finished run" in err and "--force" in err
    assert (out / "summary.json").read_text() == before
    assert main([*argv, "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 3


def test_train_config_file_flags_pause_and_resume(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "chain: {p: 0.2, q: 0.3}\nmodel: {layers: 2, heads: 2, d_model: 8, mlp: false}\n"
        "train: {iters: 12, seq_len: 16, batch: 4, eval_every: 4}\nseed: 1\n"
    )
    out = tmp_path / "r"
    assert (
        main(
            [
                "train",
                "--config",
                str(cfg),
                "--seed",
                "4",
                "--window",
                "2",
                "--no-progress",
                "--threads",
                "1",
                "--stop-at",
                "5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "paused at step 5" in capsys.readouterr().out
    run = load_run(out)
    assert run.seed == 4 and run.model_config.n_layers == 2 and run.model_config.n_heads == 2
    assert run.model_config.attn_only and run.model_config.attn_window == 2
    assert main(["train", "--resume", "--out", str(out), "--iters", "20", "--threads", "1"]) == 2
    assert "config differs: train.iters: saved 12, now 20" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    assert load_run(out).summary()["steps"] == 12
    # a run's own config.json reproduces it elsewhere
    assert (
        main(
            [
                "train",
                "--config",
                str(out / "config.json"),
                "--out",
                str(tmp_path / "copy"),
                "--no-progress",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert (
        load_run(tmp_path / "copy").summary()["final_eval_loss"]
        == load_run(out).summary()["final_eval_loss"]
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--p", "1.5", "--q", "0.3"], "p must be a probability"),
        (["--q", "0.3"], "name a chain"),
        (["--p", "0.5", "--q", "0.3", "--lr", "-1"], "lr must be"),
        (["--p", "0.5", "--q", "0.3", "--alpha", "2"], "needs in_context"),
    ],
)
def test_train_bad_input_is_a_clear_error(tmp_path, capsys, extra, message):
    assert main(["train", *extra, *TINY, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err


def test_sweep_and_reproduce_commands(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "chain: {p: [0.2, 0.5], q: 0.8}\nmodel: {layers: 1}\n"
        "train: {iters: 6, seq_len: 12, batch: 2, eval_every: 3, eval_batches: 1}\nseeds: 1\n"
    )
    assert main(["sweep", str(spec), "--out", str(tmp_path / "s"), "--dry-run"]) == 0
    assert "2 runs in 2 cells" in capsys.readouterr().out
    assert main(["sweep", str(spec), "--out", str(tmp_path / "s"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "# Sweep aggregate" in out and "results:" in out
    assert (tmp_path / "s" / "results.csv").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("chain: {p: 0.5, q: 0.8}\nmodels: {layers: 1}\n")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert (
        "unknown key 'models'; allowed keys: chain, model, train, seeds" in capsys.readouterr().err
    )

    assert (
        main(
            ["reproduce", "depth", "--size", "test", "--workers", "1", "--out", str(tmp_path / "d")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "outputs in" in out and "final_loss_vs_depth.png" in out and "held for" in out
    assert (
        main(["reproduce", "depth", "--quick", "--size", "test", "--out", str(tmp_path / "d")]) == 2
    )
