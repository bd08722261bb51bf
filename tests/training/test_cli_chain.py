"""``markov-lens chain``: JSON and table output, kernels from files, plots, input errors."""

import json

import pytest

from markov_lens.cli import main
from training.chains import KthOrderChain
from training.references import reference_losses


def run_json(capsys, *argv):
    assert main(["chain", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one JSON object


def test_binary_json(capsys):
    res = run_json(capsys, "--p", "0.5", "--q", "0.8")
    assert {"stationary", "entropy_rate", "unigram_loss", "order_losses", "chain"} <= res.keys()
    assert res["chain"] == {"family": "binary", "p": 0.5, "q": 0.8, "init": "stationary"}
    assert round(res["entropy_rate"], 3) == 0.619 and round(res["unigram_loss"], 3) == 0.666
    assert round(res["stationary"][1], 3) == 0.385 == round(res["pi_1"], 3)
    assert res["order_losses"] == [res["unigram_loss"], res["entropy_rate"]]


def test_table_output(capsys):
    assert main(["chain", "--p", "0.2", "--q", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "BinaryChain(p=0.2, q=0.3" in out and "0.5446" in out and "0.6730" in out


def test_lag_symmetric_and_random_chains(capsys):
    lag = run_json(capsys, "--lag", "2", "--p", "0.2", "--q", "0.3")
    assert [round(x, 3) for x in lag["order_losses"]] == [0.673, 0.673, 0.545]
    sym = run_json(capsys, "--states", "5", "--stay", "0.9")
    assert round(sym["entropy_rate"], 3) == 0.464 and len(sym["stationary"]) == 5
    rnd = run_json(capsys, "--random-kernel", "--states", "3", "--order", "2", "--seed", "1")
    expected = reference_losses(KthOrderChain.random(3, 2, seed=1))
    assert rnd["entropy_rate"] == pytest.approx(expected["entropy_rate"])
    assert rnd["chain"]["label"] == "random(states=3, order=2, alpha=1, seed=1)"


def test_kernel_file(capsys, tmp_path):
    path = tmp_path / "kernel.json"
    path.write_text(json.dumps(KthOrderChain.lag(2, 0.2, 0.3).kernel.tolist()))
    res = run_json(capsys, "--order", "2", "--kernel", str(path), "--init", "uniform")
    assert res["order"] == 2 and res["chain"]["init"] == "uniform"
    assert round(res["entropy_rate"], 3) == 0.545
    assert main(["chain", "--order", "3", "--kernel", str(path)]) == 2
    assert "--order 3 but the kernel has order 2" in capsys.readouterr().err


def test_in_context_json(capsys):
    res = run_json(
        capsys, "--in-context", "--states", "3", "--n-sequences", "300", "--length", "21"
    )
    assert res["chain"]["family"] == "in_context" and res["length"] == 21
    for name in ("uniform", "unigram", "bigram", "bayes", "oracle"):
        assert len(res[name]["per_position"]) == 20 and res[name]["se"] >= 0
    assert res["oracle"]["mean"] < res["uniform"]["mean"]
    ds = run_json(capsys, "--in-context", "--doubly-stochastic", "--n-sequences", "50")
    assert ds["stationary"] == [0.5, 0.5] and ds["chain"]["doubly_stochastic"] is True
    assert main(["chain", "--in-context", "--n-sequences", "50", "--length", "11"]) == 0
    assert "bayes" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--p", "0.5", "--q", "0.8", "--length", "32"],
        ["--random-kernel", "--states", "3", "--order", "2"],
        ["--in-context", "--n-sequences", "50", "--length", "40"],
    ],
)
def test_plot(capsys, tmp_path, argv):
    path = tmp_path / "chain.png"
    res = run_json(capsys, *argv, "--plot", str(path))
    assert res["plot"] == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--p", "1.5", "--q", "0.2"], r"p must be a probability in [0, 1], got 1.5"),
        (["--p", "0.5"], "needs both --p and --q"),
        (["--p", "0", "--q", "0"], "p + q must be > 0"),
        (["--p", "0.5", "--q", "0.5", "--states", "3"], "--states cannot be combined"),
        (["--p", "0.5", "--q", "0.5", "--order", "2"], "use --lag 2"),
        ([], "name a chain"),
        (["--stay", "0.9"], "--stay needs --states"),
        (["--states", "3", "--stay", "1.2"], "--stay must be a probability"),
        (["--states", "4", "--stay", "1.0"], "reducible"),
        (["--lag", "2", "--p", "0.2"], "--lag needs --q"),
        (["--lag", "0", "--p", "0.2", "--q", "0.3"], "k must be >= 1"),
        (["--in-context", "--p", "0.5"], "--p cannot be combined with --in-context"),
        (["--in-context", "--lag", "2"], "name one chain"),
        (["--random-kernel", "--order", "2"], "--random-kernel needs --states"),
        (["--random-kernel", "--states", "1"], "states must be >= 2"),
        (["--in-context", "--states", "2", "--alpha", "0"], "alpha must be a positive"),
        (["--kernel", "/no/such/kernel.json"], "kernel.json does not exist"),
        (["--p", "0.5", "--q", "0.5", "--plot", "x.png", "--length", "1"], "--length must be >= 2"),
    ],
)
def test_bad_input_exits_2(capsys, argv, message):
    assert main(["chain", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("markov-lens chain: error: ") and message in err


def test_bad_kernel_files(capsys, tmp_path):
    bad_json, bad_rows = tmp_path / "a.json", tmp_path / "b.json"
    bad_json.write_text("[[0.5, 0.5], [0.5")
    bad_rows.write_text("[[0.5, 0.6], [0.5, 0.5]]")
    assert main(["chain", "--kernel", str(bad_json)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["chain", "--kernel", str(bad_rows)]) == 2
    assert "kernel row [0] sums to 1.1" in capsys.readouterr().err


def test_plot_never_replaces_a_file_without_force(tmp_path, capsys):
    from markov_lens.cli import main

    target = tmp_path / "mine.png"
    target.write_bytes(b"a figure of mine")
    assert main(["chain", "--p", "0.5", "--q", "0.8", "--plot", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists; pass --force" in err[0]
    assert target.read_bytes() == b"a figure of mine"
    assert main(["chain", "--p", "0.5", "--q", "0.8", "--plot", str(target), "--force"]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
