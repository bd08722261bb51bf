"""The Ray backend: a sweep on a local Ray instance gives the local backend's results and
aggregate table; Ray stays optional (imported only when used) and a node without the shared
output directory fails its runs with an error that says so."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys

import pytest

from markov_lens.cli import build_parser, main
from training.runs import load_run
from training.sweeps import expand, run_sweep
from training.sweeps.ray import MARKER_PREFIX, RayBackend, _run_unit, import_ray

build_parser()  # every CLI module imported, as `markov-lens` does
RAY_IMPORTED_BY_THE_PACKAGE = "ray" in sys.modules  # at collection, before any test runs

TINY = {
    "iters": 6,
    "seq_len": 12,
    "batch": 2,
    "eval_every": 3,
    "eval_batches": 1,
    "checkpoints_per_octave": 1,
    "device": "cpu",
}
SPEC = {
    "chain": {"p": [0.2, 0.5], "q": 0.8},
    "model": {"layers": 1, "d_model": 8, "tie": False},
    "train": TINY,
    "seeds": 1,
}
TIMING = ("wall_seconds", "wall_seconds_mean", "tokens_per_s", "run_dir")


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_sweep_on_a_local_ray_instance_matches_the_local_backend(tmp_path, monkeypatch, one_thread):
    """The test starts a short-lived 2-CPU Ray instance, runs the sweep there with a
    relative output directory (Ray workers do not share the driver's cwd), and gets the
    local backend's rows and aggregate.md, byte for byte apart from timings; the runs'
    checkpoints are in the shared output directory; a re-run on Ray trains nothing; with
    ensemble=True one Ray task trains both runs as an ensemble."""
    ray = pytest.importorskip("ray")  # installed in CI by the `ray` extra: this test runs
    monkeypatch.chdir(tmp_path)
    local = run_sweep(SPEC, "local", workers=1, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="markov-test")
    try:
        on_ray = run_sweep(SPEC, "on_ray", backend=RayBackend(), workers=2, progress=False)
        again = run_sweep(SPEC, "on_ray", backend=RayBackend(), workers=2, progress=False)
        ensembled = run_sweep(
            SPEC, "ensembled", backend=RayBackend(ensemble=True), workers=2, progress=False
        )
    finally:
        ray.shutdown()
    assert [r["status"] for r in on_ray.rows] == ["finished", "finished"]
    assert without_timing(on_ray.rows) == without_timing(local.rows)
    assert without_timing(on_ray.aggregate) == without_timing(local.aggregate)
    md = (tmp_path / "on_ray" / "aggregate.md").read_text()
    assert md == (tmp_path / "local" / "aggregate.md").read_text()
    assert [r["run_dir"] for r in on_ray.rows] == [t.run_dir for t in expand(SPEC, "on_ray")]
    for row in on_ray.rows:
        run = load_run(tmp_path / row["run_dir"])
        assert run.checkpoint_steps() == [0, 1, 2, 4, 6]
        assert run.summary()["final_eval_loss"] == row["final_eval_loss"]
    assert without_timing(again.rows) == without_timing(on_ray.rows)
    assert [r["wall_seconds"] for r in again.rows] == [r["wall_seconds"] for r in on_ray.rows]
    assert not list((tmp_path / "on_ray").rglob(f"{MARKER_PREFIX}*")), "marker left behind"
    with open(tmp_path / "on_ray" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    # ensemble=True: the two runs (one architecture and recipe) trained as one Ray task, the
    # trainer's runs up to float rounding (training.sweeps.ensemble)
    assert [r["verdict"] for r in ensembled.rows] == [r["verdict"] for r in local.rows]
    for row, ref in zip(ensembled.rows, local.rows, strict=True):
        assert row["final_eval_loss"] == pytest.approx(ref["final_eval_loss"], rel=1e-4)
        assert load_run(tmp_path / row["run_dir"]).summary()["ensemble_members"] == 2


def test_a_node_without_the_shared_directory_fails_its_runs_clearly(tmp_path):
    """What a Ray task does on a node that cannot see the output directory (no Ray needed:
    the task function is called directly with a marker path it cannot read)."""
    task = expand(SPEC, tmp_path)[0].to_dict()

    def never(_task):
        raise AssertionError("trained on a node without the shared directory")

    rows = _run_unit(never, [task], 1, str(tmp_path / "elsewhere" / "marker"), "token")
    assert rows[0]["status"] == "failed" and rows[0]["run_dir"] == task["run_dir"]
    assert "is not shared with Ray node" in rows[0]["error"]
    assert "mount the output directory at the same path" in rows[0]["error"]


def test_ray_is_optional_and_imported_lazily(tmp_path, monkeypatch):
    assert not RAY_IMPORTED_BY_THE_PACKAGE, "importing the package imported ray"
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(ValueError, match=r"pip install 'markov-lens\[ray\]'"):
        import_ray()
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--backend", "ray"])
    assert rc == 2 and "markov-lens sweep: error: the ray backend needs Ray" in err.getvalue()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--address", "auto"])
    assert rc == 2 and "--address needs --backend ray" in err.getvalue()
    with pytest.raises(ValueError, match="cpus_per_task must be an integer >= 1"):
        RayBackend(cpus_per_task=0)
    with pytest.raises(ValueError, match="max_in_flight"):
        RayBackend(max_in_flight=0)


def test_an_atlas_on_ray_measures_in_the_workers(tmp_path, one_thread):
    """The atlas's run function (train, then measure) travels to Ray workers: every run of a
    tiny atlas comes back measured (atlas.json written by the worker) and labelled, with the
    same labels as the local backend gives."""
    pytest.importorskip("ray")
    from interp.atlas import AtlasConfig, load_atlas, preset_spec, run_atlas

    spec = preset_spec("test")
    for s in spec:  # two runs are enough to cross the process boundary
        s["model"] = s["model"] | {"layers": 1, "window": None}
    config = AtlasConfig(n_seqs=16, probes=False)
    run_atlas(spec, tmp_path / "ray", config, workers=2, backend="ray", progress=False)
    run_atlas(spec, tmp_path / "local", config, workers=1, progress=False)
    ray_rows, local_rows = load_atlas(tmp_path / "ray"), load_atlas(tmp_path / "local")
    assert len(ray_rows) == 2 and all(r["status"] == "finished" for r in ray_rows)
    assert [r["label"] for r in ray_rows] == [r["label"] for r in local_rows]
    rho = pytest.approx([r["rho_lag0"] for r in local_rows], nan_ok=True)
    assert [r["rho_lag0"] for r in ray_rows] == rho
