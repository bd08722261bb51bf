"""`markov-lens probe` on run directories (barely trained runs: the CLI's plumbing, outputs,
refusals and errors; the science is tested in test_probe_trained.py)."""

import json

import pytest

from markov_lens.cli import main
from probes.sweeps import COLUMNS, ProbeConfig, pivot, read_csv, select_steps, write_csv
from tests.figures import assert_drawn
from training.chains import BinaryChain
from training.config import ModelConfig
from training.recipe import TrainConfig
from training.trainer import train

FAST = ["--n-seqs", "24", "--positions", "8", "--targets", "x_n", "next_prob",
        "--components", "embed", "resid_final", "--no-random-baseline", "--device", "cpu"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_runs")
    tc = TrainConfig(
        iters=3, batch=4, seq_len=16, schedule="constant", eval_every=3, eval_batches=1,
        save_every=0, device="cpu",
    )  # fmt: skip
    out = {}
    for name, layers, window in (("depth1", 1, None), ("depth2", 2, 2)):
        cfg = ModelConfig.paper(n_ctx=16, n_layers=layers, attn_window=window)
        train(cfg, BinaryChain(0.5, 0.8), tc, seed=1, out_dir=root / name, progress=False)
        out[name] = root / name
    return out


def test_probe_writes_csv_config_and_figures(runs, tmp_path, capsys):
    out = tmp_path / "p"
    argv = ["probe", str(runs["depth1"]), "--out", str(out), *FAST]
    assert main(argv) == 0
    rows = read_csv(out / "probes.csv")
    assert len(rows) == 4 and set(rows[0]) == set(COLUMNS)
    assert {r["step"] for r in rows} == {3} and rows[0]["run"] == "depth1"
    meta = json.loads((out / "probe_config.json").read_text())
    assert meta["probe"]["n_seqs"] == 24 and meta["checkpoints"] == "last"
    assert_drawn(out / "heatmap_score.png")
    assert_drawn(out / "heatmap_selectivity.png")
    # a figure left from an earlier run is not overwritten either
    (out / "probes.csv").unlink()
    (out / "probe_config.json").unlink()
    capsys.readouterr()
    assert main(argv) == 2
    assert "heatmap_score.png" in capsys.readouterr().err
    assert not (out / "probes.csv").exists()


def test_probe_defaults_to_run_dir_and_refuses_to_overwrite(runs, capsys):
    run = runs["depth1"]
    assert main(["probe", str(run), *FAST, "--no-plots"]) == 0
    csv = run / "probes" / "probes.csv"
    before = csv.read_bytes()
    capsys.readouterr()
    assert main(["probe", str(run), *FAST, "--no-plots", "--seed", "5"]) == 2
    assert "already exist" in capsys.readouterr().err
    assert csv.read_bytes() == before  # untouched
    assert main(["probe", str(run), *FAST, "--no-plots", "--seed", "5", "--force"]) == 0
    assert csv.read_bytes() != before


def test_probe_across_runs_and_checkpoints(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["probe", str(runs["depth1"]), str(runs["depth2"]), "--checkpoints", "0,3"]
    assert main(argv + FAST) == 2
    assert "need --out" in capsys.readouterr().err
    assert main(argv + FAST + ["--out", str(out)]) == 0
    rows = read_csv(out / "probes.csv")
    assert {(r["run"], r["n_layers"], str(r["window"])) for r in rows} == {
        ("depth1", 1, ""),
        ("depth2", 2, "2"),
    }
    assert {r["step"] for r in rows} == {0, 3}
    for name in ("runs_x_n.png", "runs_next_prob.png", "steps_x_n.png"):
        assert (out / name).stat().st_size > 0
    # resid_final lines up the last residual stream of both depths
    last = [r for r in rows if r["step"] == 3]
    runs_, comps, matrix = pivot(
        [r for r in last if r["target"] == "x_n"], "score", "run", "component"
    )
    assert comps == ["embed", "resid_final"] and len(matrix) == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--targets", "kernel"], "unknown target 'kernel'"),
        (["--components", "resid_post.7"], "layer 7 outside"),
        (["--checkpoints", "99"], "no checkpoint at steps [99]"),
        (["--checkpoints", "first"], "checkpoints must be 'all', 'last'"),
        (["--positions", "none"], "--positions must be"),
        (["--control", "word"], "control must be one of"),
        (["--seq-len", "64"], "longer than the model's n_ctx=16"),
    ],
)
def test_probe_bad_input_is_a_clear_error(runs, tmp_path, capsys, extra, message):
    argv = ["probe", str(runs["depth1"]), "--out", str(tmp_path / "x"), *FAST, *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("markov-lens probe: error:") and message in err


def test_probe_missing_run_dir(tmp_path, capsys):
    assert main(["probe", str(tmp_path / "nope"), *FAST]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_select_steps_and_csv_round_trip(tmp_path):
    assert select_steps([0, 1, 4], "last") == [4]
    assert select_steps([0, 1, 4], "all") == [0, 1, 4]
    assert select_steps([0, 1, 4], "4,0") == [0, 4]
    row = {c: "" for c in COLUMNS} | {
        "component": "embed",
        "target": "x_n",
        "score": 0.5,
        "step": 3,
    }
    path = write_csv([row], tmp_path / "t.csv")
    with pytest.raises(FileExistsError):
        write_csv([row], path)
    back = read_csv(path)[0]
    assert back["score"] == 0.5 and back["step"] == 3
    with pytest.raises(ValueError, match="unknown probe config keys"):
        ProbeConfig.from_dict({"n_seq": 3})
