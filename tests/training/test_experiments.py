"""The paper's experiments: their settings, and a test-size reproduction writing its outputs."""

from __future__ import annotations

import csv

import pytest

from training.experiments import (
    EXPERIMENTS,
    depth_specs,
    phase_specs,
    reproduce,
    second_order_specs,
    tying_specs,
)
from training.experiments.presets import EVAL_SEED
from training.sweeps import expand

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_full_settings_are_the_papers(tmp_path):
    tying = tying_specs("full", 3)
    assert [s["chain"] for s in tying] == [{"p": 0.2, "q": 0.3}, {"p": 0.5, "q": 0.8}]
    paper = {"iters": 400, "seq_len": 1024, "batch": 16, "eval_seed": EVAL_SEED}
    assert all(s["train"] == paper for s in tying)
    assert all(s["model"] == {"layers": 1, "d_model": 8, "tie": [True, False]} for s in tying)
    assert len(expand(tying, tmp_path)) == 12
    (depth,) = depth_specs("full", 3)
    assert depth["model"]["layers"] == [1, 2, 4, 8] and depth["model"]["d_model"] == 8
    assert depth["train"] == {"iters": 500, "seq_len": 512, "batch": 16, "eval_seed": EVAL_SEED}
    assert depth["chain"] == {"p": 0.5, "q": 0.8}
    windows, depths = second_order_specs("full", 3)
    assert windows["chain"] == {"p": 0.2, "q": 0.3, "order": 2}
    assert windows["model"] == {
        "layers": 1,
        "d_model": 32,
        "window": [None, 2, 8, 32, 40, 80, 100],  # the paper's {2, 8, 32, 40, 80, 100} + full
    }
    assert depths["model"] == {"layers": [4, 8], "d_model": 32, "window": None}
    assert windows["train"] == {"iters": 800, "seq_len": 1024, "batch": 16, "eval_seed": EVAL_SEED}
    phase = phase_specs("full", 3)
    pairs = {(s["chain"]["p"], s["chain"]["q"]) for s in phase}
    assert len(pairs) == 25 - 5 and not any(abs(p + q - 1) < 1e-9 for p, q in pairs)
    assert all(s["model"]["tie"] == [True, False] for s in phase)
    quick = tying_specs("quick", 3)
    assert quick[0]["train"]["seq_len"] < 1024


def test_every_preset_evaluates_all_seeds_on_the_same_batches(tmp_path):
    """Cells and seeds are compared pair-wise: every run of every experiment at every size is
    evaluated on the batches of one eval_seed, so the true predictor's loss is one number."""
    for name, (make_specs, _, _) in EXPERIMENTS.items():
        for size in ("full", "quick", "test"):
            tasks = expand(make_specs(size, 2), tmp_path / name / size)
            assert {t.options["train"]["eval_seed"] for t in tasks} == {EVAL_SEED}, (name, size)
            assert len({t.seed for t in tasks}) == 2


def test_tying_reproduction_writes_figures_csv_and_markdown(tmp_path):
    rep = reproduce("tying", tmp_path / "t", size="test", workers=1, progress=False)
    for name in ("loss_curves.png", "estimates.png"):
        assert (tmp_path / "t" / name).read_bytes()[:8] == PNG
    table = list(csv.DictReader(open(tmp_path / "t" / "summary.csv")))
    assert len(table) == 4
    assert {(r["p"], r["q"], r["tie"]) for r in table} == {
        ("0.2", "0.3", "True"),
        ("0.2", "0.3", "False"),
        ("0.5", "0.8", "True"),
        ("0.5", "0.8", "False"),
    }
    for r in table:
        labels = ("bigram", "unigram", "neither", "not_converged", "undecided")
        assert sum(int(r[v]) for v in labels) == int(r["finished"]) == 1
    md = (tmp_path / "t" / "summary.md").read_text()
    assert "tied, p=0.5, q=0.8 (p+q>1): ends at the unigram point" in md
    assert "seeds |" in md and "![loss_curves](loss_curves.png)" in md
    assert len(rep.claims) == 6 and all(c["runs"] == 1 for c in rep.claims)
    assert (tmp_path / "t" / "sweep" / "results.csv").exists()
    # a second call resumes: nothing is retrained, the same numbers come out
    again = reproduce("tying", tmp_path / "t", size="test", workers=1, progress=False)
    assert [r["loss_mean"] for r in again.table] == [r["loss_mean"] for r in rep.table]


@pytest.mark.parametrize(
    "name, figures",
    [
        ("depth", ["final_loss_vs_depth.png"]),
        ("second-order", ["final_loss_vs_window.png"]),
        (
            "phase-diagram",
            [
                "phase_unigram_fraction.png",
                "phase_plateau_fraction.png",
                "phase_plateau_steps.png",
                "phase_plateau_exit.png",
            ],
        ),
    ],
)
def test_other_reproductions_at_test_size(tmp_path, name, figures):
    rep = reproduce(name, tmp_path, size="test", workers=1, progress=False)
    for fig in figures:
        assert (tmp_path / fig).read_bytes()[:8] == PNG
    assert (tmp_path / "summary.csv").exists() and (tmp_path / "summary.md").exists()
    assert rep.claims and all(c["runs"] >= 1 for c in rep.claims)
    assert all(c["status"] in ("held", "not held", "undecided") for c in rep.claims)
    if name == "second-order":  # which order each run reached, per cell
        labels = {r["order_labels"] for r in rep.table}
        assert all(
            lbl.split(" ")[0] in ("order-2", "order-1", "marginal", "neither") for lbl in labels
        )


def test_reproduce_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment 'tie'; available: tying"):
        reproduce("tie", tmp_path)
    with pytest.raises(ValueError, match="size"):
        reproduce("tying", tmp_path, size="huge")
    with pytest.raises(ValueError, match="seeds"):
        reproduce("tying", tmp_path, seeds=0)
    assert set(EXPERIMENTS) == {"tying", "depth", "second-order", "phase-diagram", "in-context"}


def test_claims_and_cells_carry_intervals_and_a_status():
    from training.experiments import Claim, cell_table, check_claims

    rows = [
        {"status": "finished", "p": 0.5, "verdict": "bigram", "final_kl": 0.001 * i}
        for i in range(7)
    ] + [
        {
            "status": "finished",
            "p": 0.5,
            "verdict": "unigram",
            "final_kl": 0.05,
            "plateau_first_step": 10,
            "plateau_steps": 40,
        }
        for _ in range(3)
    ]
    (claim,) = check_claims(rows, [Claim("ends unigram", lambda r: True, ("unigram",))])
    assert (claim["held"], claim["runs"], claim["status"]) == (3, 10, "undecided")
    assert claim["interval"][0] == pytest.approx(0.1078, abs=1e-3)
    (never,) = check_claims(rows, [Claim("ends neither", lambda r: True, ("neither",))])
    assert never["status"] == "not held"
    (cell,) = cell_table(rows, ("p",))
    assert cell["unigram_fraction"] == "3/10 [0.11, 0.60]"
    mean = (sum(0.001 * i for i in range(7)) + 0.15) / 10
    assert cell["excess_loss"].startswith(f"{mean:.5f} [")
    assert cell["on_plateau"] == 3 and cell["plateau_steps_median_iqr"] == "40 [40, 40]"
