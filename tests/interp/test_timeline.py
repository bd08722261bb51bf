"""Checkpoint timelines of a real tiny run: exact losses at each checkpoint, verdicts, head and
probe scores, distances and CKA to the final model."""

from __future__ import annotations

import json
import math

import pytest

from interp.timeline import TimelineConfig, timeline
from probes.activations import resolve_components
from tests.tiny_runs import SEQ_LEN
from training.runs import load_run

SMALL = dict(n_seqs=6, seq_len=SEQ_LEN, probe_seqs=24, probe_positions=8)


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def run_dir(tiny_untied_run):
    # untied: leaves the unigram plateau within a few tens of updates
    return tiny_untied_run


@pytest.fixture(scope="module")
def tl(run_dir):
    return timeline(run_dir, TimelineConfig(**SMALL), device="cpu")


def test_timeline_covers_every_checkpoint_with_exact_losses(run_dir, tl):
    run = load_run(run_dir)
    assert tl.steps == run.checkpoint_steps()
    metrics = {m["step"]: m for m in run.metrics()}
    shared = [r for r in tl.rows if r["step"] in metrics]
    assert len(shared) >= 5  # evaluations every 8 updates meet checkpoints at 0, 8, 16, 32, 64, 80
    for row in shared:
        m = metrics[row["step"]]
        # measured again on the run's own held-out batches: the logged values, not estimates
        assert row["eval_loss"] == pytest.approx(m["eval_loss"], rel=1e-6, abs=1e-9)
        assert row["kl"] == pytest.approx(m["kl"], rel=1e-5, abs=1e-9)
        assert row["gap_entropy"] == pytest.approx(row["eval_loss"] - tl.references["optimal_loss"])
    summary = run.summary()
    assert tl.rows[-1]["verdict"] == summary["verdict"]
    assert tl.plateau_exit_step == summary["plateau_exit_step"]


def test_timeline_distances_cka_heads_and_probes(run_dir, tl):
    resid = [c.name for c in resolve_components(load_run(run_dir).model_config, ["resid"])]
    first, last = tl.rows[0], tl.rows[-1]
    assert first["distance_from_start"] == 0 and last["distance_to_final"] == 0
    assert first["distance_to_final"] > 0
    for name, value in last["cka_to_final"].items():
        assert math.isnan(value) or value == pytest.approx(1.0, abs=1e-4), name
    for row in tl.rows:
        assert len(row["previous_token_excess"]) == 1 and len(row["induction"][0]) == 1
        assert list(row["probe"]) == resid
    assert first["verdict"] == "neither"  # the random init: near-uniform, above L_u

    assert tl.probe_target == "next_prob"
    # the trained model's output carries the kernel row; the untrained one's is random
    assert last["probe"]["ln_final"] > 0.9
    assert last["rel_excess"] < first["rel_excess"]


def test_timeline_outputs(tl, tmp_path):
    files = tl.save(tmp_path)
    assert set(files) == {"timeline.png", "timeline.md", "timeline.json"}
    md = (tmp_path / "timeline.md").read_text()
    assert md.count("\n| ") == len(tl.rows) + 1  # header + one line per checkpoint
    assert (
        f"Plateau exit (first evaluation below the midpoint after one above it): "
        f"{tl.plateau_exit_step if tl.plateau_exit_step is not None else '-'}" in md
    )
    data = json.loads((tmp_path / "timeline.json").read_text())
    assert [r["step"] for r in data["rows"]] == tl.steps
    with pytest.raises(FileExistsError):
        tl.save(tmp_path)


def test_timeline_step_selection(run_dir):
    last = load_run(run_dir).checkpoint_steps()[-1]
    tl = timeline(
        run_dir, TimelineConfig(**SMALL, steps=[0, last], probes=False, cka=False), device="cpu"
    )
    assert tl.steps == [0, last]
    assert "probe" not in tl.rows[0] and "cka_to_final" not in tl.rows[0]
    tl.figure()  # draws without the optional panels
    with pytest.raises(ValueError, match="no checkpoint at steps"):
        timeline(run_dir, TimelineConfig(**SMALL, steps=[3]), device="cpu")
