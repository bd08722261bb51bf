"""The run's arithmetic (precision, grad scaler, TF32) and the authors' target count (#26)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from markov_lens.cli import main
from training.chains import BinaryChain
from training.config import ModelConfig
from training.experiments.presets import (
    ARITHMETICS,
    EVAL_SEED,
    phase_specs,
    tying_specs,
    with_arithmetic,
)
from training.recipe import TrainConfig
from training.runs import load_run, read_json
from training.stacked import Member
from training.sweeps import expand, load_spec
from training.sweeps.ensemble import plan_groups
from training.trainer import (
    Arithmetic,
    member_batches,
    tf32_matmuls,
    train,
    train_ensemble,
)
from training.trainer.loop import initial_model
from training.trainer.rundir import _config_differences

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
PRECISION_DIR = ROOT / "docs" / "results" / "paper" / "precision"
ZOO_CONFIG = ROOT / "markov_lens" / "zoo" / "trained-runs" / "tied-p0.5-q0.8" / "config.json"
CHAIN = BinaryChain(0.5, 0.8)
TINY = [
    "--p", "0.5", "--q", "0.8", "--layers", "1", "--d-model", "8",
    "--iters", "8", "--seq-len", "16", "--batch", "4", "--eval-every", "4",
    "--eval-batches", "1", "--no-progress", "--threads", "1",
]  # fmt: skip


def tiny(**kw) -> TrainConfig:
    base = dict(iters=8, seq_len=16, batch=4, eval_every=4, eval_batches=1, device="cpu")
    return TrainConfig(**(base | kw))


def model_config(seq_len: int = 16) -> ModelConfig:
    return ModelConfig.paper(n_ctx=seq_len)


@pytest.mark.parametrize(
    "precision, dtype", [("fp16", "torch.float16"), ("bf16", "torch.bfloat16")]
)
def test_train_low_precision_on_cpu_records_it(tmp_path, capsys, precision, dtype):
    out = tmp_path / precision
    assert main(["train", *TINY, "--precision", precision, "--out", str(out)]) == 0
    assert main(["train", *TINY, "--out", str(tmp_path / "fp32")]) == 0
    capsys.readouterr()
    assert read_json(out / "config.json")["train"]["precision"] == precision
    summary = load_run(out).summary()
    assert summary["arithmetic"]["precision"] == precision
    assert summary["arithmetic"]["autocast"] == f"cpu {dtype}"
    assert summary["arithmetic"]["grad_scaler"] is False and summary["arithmetic"]["tf32"] is False
    # autocast really ran: the same seed in float32 ends at another loss
    fp32 = load_run(tmp_path / "fp32").summary()
    assert fp32["arithmetic"]["autocast"] is None
    assert summary["final_eval_loss"] != fp32["final_eval_loss"]


def test_fp16_with_grad_scaler_trains_records_and_resumes_exactly(tmp_path, capsys):
    argv = ["train", *TINY, "--precision", "fp16", "--grad-scaler", "--save-every", "2"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    assert main([*argv, "--stop-at", "5", "--out", str(tmp_path / "cut")]) == 0
    assert main(["train", "--resume", "--no-progress", "--out", str(tmp_path / "cut")]) == 0
    capsys.readouterr()
    whole, cut = load_run(tmp_path / "whole"), load_run(tmp_path / "cut")
    assert whole.train_config.grad_scaler and whole.train_config.precision == "fp16"
    rec = whole.summary()["arithmetic"]
    assert rec["grad_scaler"] is True and rec["grad_scaler_skipped_steps"] == 0
    assert rec["grad_scaler_final_scale"] == 65536.0  # torch's initial scale, no overflow
    assert cut.summary()["arithmetic"] == rec
    assert [m["eval_loss"] for m in cut.metrics()] == [m["eval_loss"] for m in whole.metrics()]
    for name, p in whole.model().state_dict().items():
        assert torch.equal(p, cut.model().state_dict()[name]), name


def test_grad_scaler_skips_an_overflowing_update_and_counts_it():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1)
    arith = Arithmetic(TrainConfig(precision="fp16", grad_scaler=True), torch.device("cpu"))
    arith.backward_and_step((w * 1e36).sum(), opt, None)  # 1e36 * 65536 overflows float32
    assert torch.equal(w.detach(), torch.ones(3)) and arith.skipped_steps == 1
    assert arith.state()["scale"] == 32768.0 and arith.state()["skipped_steps"] == 1
    opt.zero_grad()
    arith.backward_and_step(w.sum(), opt, None)
    assert not torch.equal(w.detach(), torch.ones(3)) and arith.skipped_steps == 1
    restored = Arithmetic(arith.tc, torch.device("cpu"), json.loads(json.dumps(arith.state())))
    assert restored.state() == arith.state()


def test_tf32_context_sets_and_restores_the_flags():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with tf32_matmuls(True):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_a_run_config_without_the_new_fields_loads_as_fp32():
    # a train config as written before #26 (no precision fields)
    saved = {
        k: v
        for k, v in TrainConfig(iters=7).to_dict().items()
        if k not in ("precision", "grad_scaler", "tf32", "targets")
    }
    tc = TrainConfig.from_dict(saved)
    assert (tc.precision, tc.grad_scaler, tc.tf32, tc.targets) == ("fp32", False, False, "inside")
    old = {"train": {k: v for k, v in TrainConfig().to_dict().items() if k != "precision"}}
    for key in ("grad_scaler", "tf32", "targets"):
        old["train"].pop(key)
    assert _config_differences(old, {"train": TrainConfig().to_dict()}) == []
    assert load_run(ZOO_CONFIG.parent).train_config.targets == "inside"


def test_authors_targets_predict_seq_len_targets():
    tc = tiny(targets="authors", iters=1, eval_every=1)
    assert (tc.sample_len, tc.targets_per_sequence) == (17, 16)
    assert (tiny().sample_len, tiny().targets_per_sequence) == (16, 15)
    res = train(model_config(16), CHAIN, tc, seed=3, progress=False)  # n_ctx = seq_len suffices
    assert res["arithmetic"]["targets"] == "authors"
    assert res["arithmetic"]["targets_per_sequence"] == 16
    # the first update's loss: the initial model reads 16 tokens and predicts all 16 next ones
    tokens = member_batches([CHAIN], [3], 0, tc, torch.device("cpu"))[0]
    assert tokens.shape == (4, 17)
    model = initial_model(Member(model_config(16), CHAIN, 3), torch.device("cpu"))
    with torch.no_grad():
        logp = model(tokens[:, :16]).double().log_softmax(-1)
    manual = -logp.gather(-1, tokens[:, 1:, None]).mean()
    assert res.metrics[1]["train_loss"] == pytest.approx(float(manual), abs=1e-6)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--precision", "fp8"], "invalid choice: 'fp8'"),
        (["--targets", "all"], "invalid choice: 'all'"),
        (["--tf32"], "tf32 needs a CUDA device"),
        (["--grad-scaler"], "grad_scaler needs precision bf16 or fp16"),
    ],
)
def test_bad_arithmetic_is_one_line_exit_2(tmp_path, capsys, extra, message):
    out = tmp_path / "x"
    try:
        rc = main(["train", *TINY, *extra, "--device", "cpu", "--out", str(out)])
    except SystemExit as exit_:  # argparse's errors leave through sys.exit, as on the console
        rc = exit_.code
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"grad_scaler": "yes"}, "grad_scaler must be true or false"),
        ({"tf32": 1}, "tf32 must be true or false"),
        ({"targets": 1025}, "targets must be one of"),
        ({"precision": "float16"}, "precision must be one of"),
    ],
)
def test_train_config_refuses_bad_arithmetic(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)


def test_stacks_honour_precision_and_refuse_a_shared_grad_scaler():
    members = [Member(model_config(), CHAIN, s) for s in (0, 1)]
    stacked = train_ensemble(members, tiny(precision="fp16"), progress=False)
    for s, res in zip((0, 1), stacked, strict=True):
        assert res["arithmetic"]["autocast"] == "cpu torch.float16"
        alone = train(model_config(), CHAIN, tiny(precision="fp16"), seed=s, progress=False)
        assert res["final_eval_loss"] == pytest.approx(alone["final_eval_loss"], abs=2e-3)
    with pytest.raises(ValueError, match="grad_scaler with 2 stacked members"):
        train_ensemble(members, tiny(precision="fp16", grad_scaler=True), progress=False)


def test_sweep_specs_take_the_arithmetic_and_never_stack_a_grad_scaler(tmp_path):
    spec = {
        "chain": {"p": 0.5, "q": 0.8},
        "model": {"layers": 1, "d_model": 8},
        "train": {"iters": 4, "seq_len": 16, "batch": 2, "precision": ["fp32", "fp16"]},
        "seeds": 2,
    }
    scaled = spec | {"train": spec["train"] | {"precision": "fp16", "grad_scaler": True}}
    tasks = expand([spec, scaled], tmp_path)
    assert sorted({(t.options["train"]["precision"], t.axes.get("grad_scaler")) for t in tasks},
                  key=str) == [("fp16", None), ("fp16", True), ("fp32", None)]  # fmt: skip
    groups, rest = plan_groups(tasks, max_members=8)
    stacked = {g[0]["options"]["train"].get("grad_scaler") for g in groups}
    assert groups and True not in stacked
    assert sum(1 for t in rest if t["options"]["train"].get("grad_scaler")) == 2
    with pytest.raises(ValueError, match="grad_scaler needs precision"):
        expand(spec | {"train": spec["train"] | {"grad_scaler": True}}, tmp_path)


def test_presets_name_the_authors_arithmetic_without_making_it_a_default():
    assert ARITHMETICS["authors-gpu"] == {"precision": "fp16", "grad_scaler": False, "tf32": True}
    specs = tying_specs("full", 3)
    assert all("precision" not in s["train"] for s in specs)  # float32 unless named
    named = with_arithmetic(specs, "fp16-scaled")
    assert all(s["train"]["grad_scaler"] and s["train"]["precision"] == "fp16" for s in named)
    assert specs[0]["train"].get("precision") is None  # not modified in place
    with pytest.raises(ValueError, match="unknown arithmetic 'fp8'"):
        with_arithmetic(specs, "fp8")


def test_reproduce_refuses_tf32_on_a_cpu_in_one_line(tmp_path, capsys):
    out = tmp_path / "r"
    argv = [
        "reproduce",
        "tying",
        "--size",
        "test",
        "--arithmetic",
        "authors-gpu",
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    assert "tf32 needs a CUDA device" in capsys.readouterr().err and not out.exists()


def test_the_precision_spec_is_the_tying_cell_in_four_arithmetics(tmp_path):
    (cell,) = [s for s in tying_specs("full", 10) if s["chain"] == {"p": 0.5, "q": 0.8}]
    tasks = expand(load_spec(PRECISION_DIR / "spec.yaml"), tmp_path)
    assert len(tasks) == 40
    by_arith: dict[tuple, list[int]] = {}
    for t in tasks:
        train = t.options["train"]
        assert t.options["chain"] == cell["chain"]
        assert t.options["model"] == cell["model"] | {"tie": True}
        assert {k: v for k, v in train.items() if k not in ("precision", "grad_scaler")} == (
            cell["train"]
        )
        assert train["eval_seed"] == EVAL_SEED
        by_arith.setdefault((train["precision"], train["grad_scaler"]), []).append(t.seed)
    expected = [("fp32", False), ("bf16", False), ("fp16", False), ("fp16", True)]
    assert sorted(by_arith) == sorted(expected)
    assert all(seeds == list(range(10)) for seeds in by_arith.values())
    names = {a for a, v in ARITHMETICS.items() if not v["tf32"]}
    assert names == {"fp32", "bf16", "fp16", "fp16-scaled"}


def _arithmetics_by_cell(tasks) -> dict[tuple, dict[tuple, list[int]]]:
    """(p, q, tie) -> (precision, grad_scaler) -> seeds, with each task's other train options
    checked against the paper's recipe at the presets' shared eval_seed."""
    cells: dict[tuple, dict[tuple, list[int]]] = {}
    for t in tasks:
        chain, model, train = (t.options[k] for k in ("chain", "model", "train"))
        assert train["eval_seed"] == EVAL_SEED
        key = (chain["p"], chain["q"], model["tie"])
        arith = (train["precision"], train["grad_scaler"])
        cells.setdefault(key, {}).setdefault(arith, []).append(t.seed)
    return cells


def test_the_untied_specs_hold_the_untied_cell_in_four_arithmetics(tmp_path):
    (cell,) = [s for s in tying_specs("full", 10) if s["chain"] == {"p": 0.5, "q": 0.8}]
    tasks = [
        t
        for name in ("spec-untied.yaml", "spec-untied-scaler-bf16.yaml")
        for t in expand(load_spec(PRECISION_DIR / name), tmp_path / name)
    ]
    for t in tasks:
        assert t.options["model"] == cell["model"] | {"tie": False}
        rest = {
            k: v for k, v in t.options["train"].items() if k not in ("precision", "grad_scaler")
        }
        assert rest == cell["train"]
    (arithmetics,) = _arithmetics_by_cell(tasks).values()
    expected = [("fp32", False), ("fp16", False), ("fp16", True), ("bf16", False)]
    assert sorted(arithmetics) == sorted(expected)
    assert all(seeds == list(range(10)) for seeds in arithmetics.values())


def test_the_phase_spec_is_the_phase_diagrams_trap_cells_in_four_arithmetics(tmp_path):
    preset = {
        (s["chain"]["p"], s["chain"]["q"]): s for s in phase_specs("full", 10)
    }  # tie: [True, False] in each
    trap_cells = {(p, q) for p, q in preset if p + q > 1}
    tasks = expand(load_spec(PRECISION_DIR / "spec-phase.yaml"), tmp_path)
    assert len(tasks) == 10 * 4 * 10
    cells = _arithmetics_by_cell(tasks)
    assert {(p, q) for p, q, _ in cells} == trap_cells and len(trap_cells) == 10
    assert all(tie for _, _, tie in cells)  # the paper's trap claim is for tied models
    for t in tasks:
        spec = preset[(t.options["chain"]["p"], t.options["chain"]["q"])]
        rest = {
            k: v for k, v in t.options["train"].items() if k not in ("precision", "grad_scaler")
        }
        assert rest == spec["train"]
        assert {k: v for k, v in t.options["model"].items() if k != "tie"} == {
            k: v for k, v in spec["model"].items() if k != "tie"
        }
    expected = [("fp32", False), ("fp16", False), ("fp16", True), ("bf16", False)]
    for arithmetics in cells.values():
        assert sorted(arithmetics) == sorted(expected)
        assert all(seeds == list(range(10)) for seeds in arithmetics.values())


def _table_module():
    spec = importlib.util.spec_from_file_location("precision_table", PRECISION_DIR / "table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_precision_table_counts_traps_with_wilson_intervals():
    table = _table_module()

    def run(arith: str, seed: int, verdict: str, exit_step, skipped=None):
        rec = {"precision": arith} | ({"grad_scaler_skipped_steps": skipped} if skipped else {})
        return {
            "arithmetic": arith,
            "seed": seed,
            "summary": {
                "status": "finished",
                "verdict": verdict,
                "plateau_exit_step": exit_step,
                "arithmetic": rec,
            },
        }

    runs = [run("fp32", s, "bigram", 100 + s) for s in range(10)]
    runs += [
        run("fp16", s, "unigram" if s < 3 else "bigram", None if s < 3 else 200) for s in range(10)
    ]
    runs.append({"arithmetic": "fp16", "seed": 10, "summary": {"status": "diverged"}})
    rows = {r["arithmetic"]: r for r in table.precision_table(runs)}
    assert rows["fp32"]["unigram (trap), Wilson 95%"] == "0/10 [0.00, 0.28]"
    assert rows["fp16"]["unigram (trap), Wilson 95%"] == "3/10 [0.11, 0.60]"
    assert rows["fp16"]["diverged"] == 1 and rows["fp16"]["runs"] == 11
    assert rows["fp32"]["exit step median [q1, q3]"].startswith("104.5 [")
    assert rows["fp16"]["exit step per seed"].startswith("s0:- s1:- s2:- s3:200")
    seeds = table.seed_table(runs)
    assert seeds[0] == {"seed": 0, "fp32": "bigram @ 100", "fp16": "unigram @ -"}
    assert seeds[-1]["fp16"] == "diverged" and seeds[-1]["fp32"] == ""
    assert table.arithmetic_name({"precision": "fp16", "tf32": True}) == "fp16 + TF32"


def _finished_runs(rows: list[tuple[str, str, int, str]]) -> list[dict]:
    """Table records of finished runs from (cell, arithmetic, seed, verdict)."""
    done = {"status": "finished"}
    return [
        {"cell": c, "arithmetic": a, "seed": s, "summary": done | {"verdict": v}}
        for c, a, s, v in rows
    ]


def test_the_precision_table_names_the_cell_when_sweeps_hold_several(tmp_path):
    table = _table_module()
    for tie in (True, False):
        out = tmp_path / ("tied" if tie else "untied")
        options = {"chain": {"p": 0.5, "q": 0.8}, "model": {"tie": tie}, "train": {}}
        run_dir = out / "runs" / "c" / "seed0"
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"status": "finished", "verdict": "x"}))
        task = {"cell": "c", "seed": 0, "options": options, "run_dir": str(run_dir)}
        (out / "sweep.json").write_text(json.dumps({"tasks": [task]}))
    one = table.read_sweeps([tmp_path / "tied"])
    assert [r["arithmetic"] for r in one] == ["fp32"]
    both = table.read_sweeps([tmp_path / "tied", tmp_path / "untied"])
    assert [r["arithmetic"] for r in both] == [
        "tied, p=0.5, q=0.8: fp32",
        "untied, p=0.5, q=0.8: fp32",
    ]
    # the cell-by-arithmetic pivot counts each cell's traps in each run's own arithmetic
    runs = _finished_runs(
        [
            ("A", "fp32", 0, "bigram"),
            ("A", "fp16", 0, "unigram"),
            ("A", "fp16", 1, "bigram"),
            ("B", "fp16", 0, "unigram"),
        ]
    )
    runs.append({"cell": "B", "arithmetic": "fp32", "seed": 0, "summary": None})
    for r in runs:
        r["own_arithmetic"], r["arithmetic"] = r["arithmetic"], f"{r['cell']}: {r['arithmetic']}"
    assert table.cell_table(runs) == [
        {"cell": "A", "fp32": "0/1 [0.00, 0.79]", "fp16": "1/2 [0.09, 0.91]"},
        {"cell": "B", "fp32": "", "fp16": "1/1 [0.21, 1.00]"},
    ]


def test_paired_table_pools_cells_by_seed_against_fp32():
    # pairs need both runs finished; discordant pairs and the exact McNemar p come from them
    table = _table_module()
    runs = _finished_runs(
        [
            ("A", "fp32", 0, "bigram"),
            ("A", "fp16", 0, "unigram"),
            ("A", "fp32", 1, "unigram"),
            ("A", "fp16", 1, "unigram"),
            ("B", "fp32", 0, "bigram"),
            ("B", "fp16", 0, "unigram"),
            ("B", "fp16", 1, "unigram"),  # no fp32 partner: not a pair
        ]
    )
    rows = table.paired_table(runs)
    assert rows == [
        {
            "arithmetic": "fp16",
            "pairs (cell, seed)": 3,
            "cells": 2,
            "trapped in fp32": "1/3 [0.06, 0.79]",
            "trapped in it": "3/3 [0.44, 1.00]",
            "only in fp32": 0,
            "only in it": 2,
            "exact McNemar p": "0.5",
        }
    ]
    assert table.paired_table([r for r in runs if r["arithmetic"] == "fp32"]) == []


def test_seed_table_has_a_row_per_cell_and_seed_when_there_are_several_cells():
    table = _table_module()
    done = {"status": "finished"}
    runs = [
        {"cell": c, "arithmetic": f"{c}: {a}", "own_arithmetic": a, "seed": s, "summary": sm}
        for c, a, s, sm in [
            ("B", "fp32", 1, done | {"verdict": "bigram", "plateau_exit_step": 40}),
            ("A", "fp32", 0, None),
            ("B", "fp16", 1, done | {"verdict": "unigram"}),
            ("B", "fp32", 0, {"status": "diverged"}),
        ]
    ]
    assert table.seed_table(runs) == [
        {"cell": "B", "seed": 0, "fp32": "diverged", "fp16": ""},
        {"cell": "B", "seed": 1, "fp32": "bigram @ 40", "fp16": "unigram @ -"},
        {"cell": "A", "seed": 0, "fp32": "not run", "fp16": ""},
    ]
