"""Sweeps: grid expansion, spec validation, skipping finished runs, results and aggregate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import training.sweeps as sweeps
from training.chains import BinaryChain, KthOrderChain
from training.options import build_run_config
from training.sweeps import expand, load_spec, register_backend, run_sweep, validate_spec
from training.verdicts import VERDICTS

TINY = {
    "iters": 6,
    "seq_len": 12,
    "batch": 2,
    "eval_every": 3,
    "eval_batches": 1,
    "checkpoints_per_octave": 0,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def spec(**over):
    base = {
        "chain": {"p": [0.2, 0.5], "q": 0.8},
        "model": {"layers": 1, "d_model": 8, "tie": [True, False]},
        "train": dict(TINY),
        "seeds": [0, 1],
    }
    return base | over


def test_grid_expansion(tmp_path):
    tasks = expand(spec(), tmp_path)
    assert len(tasks) == 8  # 2 p x 2 tie x 2 seeds
    assert {t.cell for t in tasks} == {t.cell for t in tasks[::2]} and len(
        {t.cell for t in tasks}
    ) == 4
    first = tasks[0]
    assert first.axes == {"p": 0.2, "tie": True}
    assert first.options["chain"] == {"p": 0.2, "q": 0.8}
    assert first.options["train"] == TINY
    assert first.run_dir == str(tmp_path / "runs" / first.cell / "seed0")
    assert first.cell.startswith("p0.2-tieT-")
    rc = build_run_config(first.options | {"seed": first.seed})
    assert rc.chain == BinaryChain(0.2, 0.8) and rc.model.tie_embeddings and rc.model.n_ctx == 12
    # seeds as an int, several specs united, duplicates dropped
    two = [spec(seeds=3), spec(seeds=[2, 5])]
    runs = expand(two, tmp_path)
    assert sorted({t.seed for t in runs}) == [0, 1, 2, 5] and len(runs) == 4 * 4
    # a one-element list of a list is a fixed per-layer value
    windows = expand(
        {
            "chain": {"p": 0.2, "q": 0.3, "order": 2},
            "model": {"layers": 2, "window": [[2, None]]},
            "train": TINY,
        },
        tmp_path,
    )
    assert len(windows) == 1 and windows[0].axes == {}
    assert build_run_config(windows[0].options).model.attn_window == [2, None]
    assert build_run_config(windows[0].options).chain == KthOrderChain.lag(2, 0.2, 0.3)


def test_spec_validation_errors(tmp_path):
    with pytest.raises(
        ValueError, match="unknown key 'seed'; allowed keys: chain, model, train, seeds"
    ):
        validate_spec({"chain": {"p": 0.5, "q": 0.8}, "seed": 1})
    with pytest.raises(ValueError, match="unknown model option 'n_layer'.*layers"):
        validate_spec({"model": {"n_layer": 2}})
    with pytest.raises(ValueError, match="unknown chain option 'P'.*p, q, order"):
        validate_spec({"chain": {"P": 0.5}})
    with pytest.raises(ValueError, match="unknown train option 'steps'.*iters"):
        validate_spec({"train": {"steps": 5}})
    with pytest.raises(ValueError, match="empty list"):
        validate_spec({"chain": {"p": [], "q": 0.5}})
    with pytest.raises(ValueError, match="seeds"):
        validate_spec({"chain": {"p": 0.5, "q": 0.5}, "seeds": [0, 0]})
    with pytest.raises(ValueError, match="p must be a probability"):
        expand({"chain": {"p": [0.5, 1.5], "q": 0.5}, "train": TINY}, tmp_path)  # cells are built
    with pytest.raises(ValueError, match="name a chain"):
        expand({"model": {"layers": 1}}, tmp_path)
    with pytest.raises(ValueError, match="unknown backend 'slurm'; available: .*'ensemble'"):
        run_sweep(spec(), tmp_path, backend="slurm")


def test_load_spec_yaml_and_json(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text("chain: {p: [0.2, 0.5], q: 0.8}\nmodel: {tie: [true, false]}\nseeds: 2\n")
    assert load_spec(y) == {
        "chain": {"p": [0.2, 0.5], "q": 0.8},
        "model": {"tie": [True, False]},
        "seeds": 2,
    }
    j = tmp_path / "s.json"
    j.write_text(json.dumps(spec()))
    assert load_spec(j) == spec()
    with pytest.raises(FileNotFoundError):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_spec(tmp_path / "bad.json")


def test_sweep_runs_writes_results_and_skips_finished_runs(tmp_path, monkeypatch):
    result = run_sweep(spec(), tmp_path, workers=1, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == len(result.rows) == 8
    assert {r["status"] for r in rows} == {"finished"}
    for col in (
        "cell",
        "seed",
        "p",
        "q",
        "tie",
        "iters",
        "verdict",
        "final_eval_loss",
        "entropy_rate",
        "unigram_loss",
        "plateau_exit_step",
        "wall_seconds",
        "run_dir",
    ):
        assert col in rows[0], col
    agg = list(csv.DictReader(open(tmp_path / "aggregate.csv")))
    assert len(agg) == 4
    for a in agg:
        assert int(a["runs"]) == 2 and int(a["finished"]) == 2
        fracs = [float(a[f"frac_{v}"]) for v in VERDICTS]
        assert sum(fracs) == pytest.approx(1.0)
        assert "plateau_exit_median" in a and "plateau_steps_mean" in a
    assert "| p | tie | runs |" in (tmp_path / "aggregate.md").read_text()
    assert json.loads((tmp_path / "sweep.json").read_text())["spec"] == spec()

    # re-running trains nothing; a crashed run (no summary) is resumed, the others skipped
    import training.trainer as trainer

    real_train = trainer.train
    calls = []

    def counting_train(*args, **kwargs):
        calls.append(kwargs["out_dir"])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(trainer, "train", counting_train)
    again = run_sweep(spec(), tmp_path, workers=1, progress=False)
    assert calls == [] and [r["final_eval_loss"] for r in again.rows] == [
        r["final_eval_loss"] for r in result.rows
    ]
    victim = result.rows[3]["run_dir"]
    (Path(victim) / "summary.json").unlink()
    third = run_sweep(spec(), tmp_path, workers=1, progress=False)
    assert [str(c) for c in calls] == [victim]
    assert third.rows[3]["final_eval_loss"] == result.rows[3]["final_eval_loss"]  # same seed


def test_failed_runs_become_rows_and_backends_plug_in(tmp_path, monkeypatch):
    import training.trainer as trainer

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(trainer, "train", broken)
    seen = {}

    def recording_backend(run_fn, tasks, workers):
        seen["workers"], seen["n"] = workers, len(tasks)
        for task in tasks:
            yield run_fn(task)

    register_backend("recording", recording_backend)
    try:
        result = run_sweep(spec(seeds=1), tmp_path, workers=3, backend="recording", progress=False)
    finally:
        sweeps.BACKENDS.pop("recording")
    assert seen == {"workers": 3, "n": 4}
    again = run_sweep(
        spec(seeds=1), tmp_path / "obj", workers=1, backend=recording_backend, progress=False
    )  # a backend object works too
    assert len(again.rows) == 4 and seen["workers"] == 1
    assert {r["status"] for r in result.rows} == {"failed"}
    assert all("RuntimeError: boom" in r["error"] for r in result.rows)
    assert all(a["failed"] == 1 and a["frac_bigram"] is None for a in result.aggregate)


@pytest.mark.slow
def test_worker_processes_give_the_same_results_as_one_process(tmp_path):
    one = run_sweep(spec(seeds=1), tmp_path / "one", workers=1, progress=False)
    two = run_sweep(spec(seeds=1), tmp_path / "two", workers=2, progress=False)
    assert [r["final_eval_loss"] for r in one.rows] == [r["final_eval_loss"] for r in two.rows]


def test_a_directory_of_another_spec_is_refused_without_force(tmp_path, capsys):
    """v1 replaced results.csv and the aggregate when a second spec ran in the same
    directory; now: same spec resumes, another spec is refused unless forced."""
    from markov_lens.cli import main

    small = spec(chain={"p": 0.5, "q": 0.8}, model={"layers": 1, "d_model": 8}, seeds=[0])
    out = tmp_path / "s"
    run_sweep(small, out, workers=1, progress=False)
    before = (out / "results.csv").read_text()
    again = run_sweep(small, out, workers=1, progress=False)  # same spec: resumed, nothing new
    assert len(again.rows) == 1 and (out / "results.csv").read_text() == before
    other = small | {"seeds": [0, 1]}
    with pytest.raises(FileExistsError, match="another spec"):
        run_sweep(other, out, workers=1, progress=False)
    assert (out / "results.csv").read_text() == before
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    assert main(["sweep", str(path), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another spec" in err[0] and "--force" in err[0]
    forced = run_sweep(other, out, workers=1, progress=False, force=True)
    assert len(forced.rows) == 2
    assert json.loads((out / "sweep.json").read_text())["previous_specs"] == [small]


def test_a_reproduction_at_another_size_is_refused(tmp_path):
    from training.experiments import reproduce

    reproduce("depth", tmp_path / "d", size="test", seeds=1, workers=1, progress=False)
    summary = (tmp_path / "d" / "summary.md").read_text()
    with pytest.raises(FileExistsError, match="another spec"):
        reproduce("depth", tmp_path / "d", size="test", seeds=2, workers=1, progress=False)
    assert (tmp_path / "d" / "summary.md").read_text() == summary


def test_a_repeated_key_in_a_spec_is_an_error(tmp_path):
    """v1 accepted `seeds` twice (the last won, silently)."""
    y = tmp_path / "s.yaml"
    y.write_text("chain: {p: 0.5, q: 0.8}\nseeds: [0, 1]\nmodel: {d_model: 8}\nseeds: [5]\n")
    with pytest.raises(ValueError, match=r"key 'seeds' appears twice in one mapping \(line 4\)"):
        load_spec(y)
    j = tmp_path / "s.json"
    j.write_text('{"chain": {"p": 0.5, "p": 0.6, "q": 0.8}}')
    with pytest.raises(ValueError, match="key 'p' appears twice"):
        load_spec(j)
    ok = tmp_path / "ok.yaml"
    ok.write_text("chain: {p: [0.2, 0.5], q: 0.8}\nmodel: {tie: [true, false]}\nseeds: 2\n")
    assert load_spec(ok) == {
        "chain": {"p": [0.2, 0.5], "q": 0.8},
        "model": {"tie": [True, False]},
        "seeds": 2,
    }
