"""`markov-lens bench` (markov_lens.cli.bench over the benchmarks package) in its tiny mode: every
comparison is one `NAME: A vs B: R.Rx` line measured in process, plus the tables; bad
options are clear errors."""

from __future__ import annotations

import json
import re
import sys
import time

import pytest
import torch

from benchmarks.ensemble import format_table, sweep_path
from benchmarks.measure import Comparison, PeakMemory, saved_activation_bytes
from benchmarks.step import attention_flops, format_window_table, window_comparisons
from markov_lens.cli import main
from training.config import ModelConfig
from training.recipe import TrainConfig

LINE = re.compile(r"^(?P<name>[^\n]+?): (?P<a>[^\n]+?) vs (?P<b>[^\n]+?): (?P<r>\d+\.\d)x$")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_tiny_prints_one_ratio_line_per_comparison(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    only = "sampler,patching,reproductions,scaling"
    assert main(["bench", "--tiny", "--threads", "1", "--only", only, "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("machine: ") and "load average" in lines[0]
    ratio_lines = [ln for ln in lines if LINE.match(ln)]
    names = [LINE.match(ln)["name"] for ln in ratio_lines]
    assert sum(n.startswith("sampler (") for n in names) == 2
    assert any(n.startswith("tying reproduction, REDUCED") for n in names)
    assert any(n.startswith("depth reproduction, REDUCED") for n in names)
    # each printed ratio is B / A of the two measured times it names (no timing asserted)
    comparisons = json.loads(out_json.read_text())["comparisons"]
    for c in comparisons:
        if c["ratio"] is not None:
            assert c["a_seconds"] > 0 and c["b_seconds"] > 0
            assert c["ratio"] == pytest.approx(c["b_seconds"] / c["a_seconds"])
            assert f"{c['ratio']:.1f}x" in c["line"]
    assert {c["line"] for c in comparisons} >= set(ratio_lines)
    # patching: a ratio line when benchmarks.patching can be imported, else a clear skip line
    assert any(ln.startswith("patching") and (LINE.match(ln) or "skipped (" in ln) for ln in lines)
    for title in ("sequence length", "ensemble members", "depth (layers)"):
        assert f"step time against {title}" in out
    result = json.loads(out_json.read_text())
    assert result["mode"] == "tiny"
    by_line = {c["line"]: c for c in result["comparisons"]}
    assert set(by_line) <= set(lines)
    assert set(result["tables"]) == {"seq_len", "members", "layers"}


def test_bench_tiny_step_window_ensemble_startup(tmp_path, capsys):
    """The issue's sections, each run for real at tiny sizes: the paper step per attention
    backend with its FLOP bound, the window table, ensemble vs sequential per length with the
    sweeps' path, start-up against `import torch`. Nothing timed is asserted but that the
    ratios are positive numbers."""
    out_json = tmp_path / "bench.json"
    only = "step,window,ensemble,startup"
    assert main(["bench", "--tiny", "--threads", "1", "--only", only, "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("machine: ") and "load average" in lines[0]
    assert re.search(r"^matmul rate: \d+\.\d GFLOP/s", out, re.M)
    ratio_lines = [ln for ln in lines if LINE.match(ln)]
    # every ratio is positive: checked on the exact values (the JSON below); a printed ratio
    # is rounded to one decimal, and `markov-lens --help` against `import torch` can be 0.04
    exact = json.loads(out_json.read_text())["comparisons"]
    for c in exact:
        if c["ratio"] is not None:
            assert c["a_seconds"] > 0 and c["b_seconds"] > 0
            assert c["ratio"] == pytest.approx(c["b_seconds"] / c["a_seconds"])
    assert {c["line"] for c in exact} >= set(ratio_lines)
    pairs = [(m["name"], m["a"], m["b"]) for m in map(LINE.match, ratio_lines)]

    # step: auto vs torch (SDPA) and vs explicit, then the FLOP bound line
    step = [p for p in pairs if p[0].startswith("paper step, REDUCED (1 layer, d 8, 2 x 64)")]
    assert [b for _, _, b in step] == ["SDPA", "explicit"]
    assert step[0][1] in ("auto (measured: kernel or SDPA)", "auto (no kernel: SDPA)")
    bound = re.search(
        r"^paper step, REDUCED: [\d.]+ ms; attention FLOP bound [\d.]+ ms at \d+ GFLOP/s "
        r"\(matmul\); step / bound (?P<r>[\d.]+)x$",
        out,
        re.M,
    )
    assert bound and float(bound["r"]) > 0

    # window: one line per finite window and length, and the table
    windows = [p for p in pairs if p[0].startswith("window cost, REDUCED")]
    assert {(p[0].split("(N=")[1].split(",")[0], p[1]) for p in windows} == {
        (n, f"window {m}") for n in ("32", "64") for m in (2, 8, 32)
    }
    assert all(b == "full attention" for _, _, b in windows)
    assert "step time against attention window" in out
    assert "| N | window | step ms | step / full | attention FLOP bound ms |" in lines

    # ensemble: one comparison per length, each followed by the path the sweeps take
    ens = [p for p in pairs if p[0].startswith("ensemble training (REDUCED")]
    assert len(ens) == 2
    for n in (16, 32):
        assert re.search(rf"^  length {n}: sweeps use: stacked \(faster: (yes|NO)\)$", out, re.M)
    assert "data sampling" in out and "peak memory" in out

    # start-up: both commands against import torch, in fresh processes
    startup = [p for p in pairs if p[0].startswith("start-up (")]
    assert [b.rsplit(" ", 2)[0] for _, _, b in startup] == [
        "markov-lens --help",
        "markov-lens chain --p 0.5 --q 0.8",
    ]
    assert all(a.startswith("import torch ") for _, a, _ in startup)
    assert out.count("within 1.5x of import torch: ") == 2

    result = json.loads(out_json.read_text())
    assert {c["line"] for c in result["comparisons"]} <= set(lines)
    info = result["step"]
    assert set(info["step_ms"]) == {"auto", "torch", "explicit"}
    assert all(v > 0 for v in info["step_ms"].values())
    assert info["attention_flops"] == 12 * 8 * 2 * 64 * 65 // 2
    assert info["matmul_gflops"] > 0 and info["bound_ms"] > 0
    assert info["step_over_bound"] == pytest.approx(info["step_ms"]["auto"] / info["bound_ms"])
    assert result["matmul_gflops"] == info["matmul_gflops"]
    rows = result["tables"]["window"]
    assert [(r["seq_len"], r["window"]) for r in rows] == [
        (n, m) for n in (32, 64) for m in (2, 8, 32, None)
    ]
    assert all(r["step_ms"] > 0 and r["vs_full"] > 0 for r in rows)
    ens_json = [c for c in result["comparisons"] if c["name"].startswith("ensemble training")]
    assert [c["details"]["seq_len"] for c in ens_json] == [16, 32]
    for c in ens_json:
        assert c["details"]["same_verdicts"] == "4/4"
        assert c["ratio"] == pytest.approx(c["b_seconds"] / c["a_seconds"])
        assert c["details"]["sweeps_use"] == "stacked"
        assert isinstance(c["details"]["sweeps_take_faster"], bool)
    for c in result["comparisons"]:
        if c["name"].startswith("start-up"):
            assert c["skipped"] is None and c["ratio"] > 0
            assert all(s > 0 for s in c["details"]["median_s"].values())


def test_attention_flops_counts_every_computed_score():
    """12 d_head S, S the (query, key) pairs inside the band, counted here by brute force."""
    for n, window in ((7, None), (7, 0), (7, 2), (7, 5), (7, 6), (7, 100), (1, None)):
        cfg = ModelConfig.paper(n_ctx=n, attn_window=window)
        pairs = sum(
            1 for i in range(n) for j in range(n) if j <= i and (window is None or i - j <= window)
        )
        assert attention_flops(cfg, 3, n) == 12 * cfg.d_head * 3 * pairs
    deep = ModelConfig.paper(n_ctx=16, n_layers=2, n_heads=2, d_model=8, attn_window=[None, 3])
    per_layer = [16 * 17 // 2, 4 * 5 // 2 + 12 * 4]
    assert attention_flops(deep, 1, 16) == sum(12 * 4 * 2 * s for s in per_layer)


def test_sweep_path_names_the_faster_side():
    short = TrainConfig(seq_len=256, device="cpu")
    long = TrainConfig(seq_len=1024, device="cpu")
    assert sweep_path(short, 1.3) == {"sweeps_use": "stacked", "sweeps_take_faster": True}
    assert sweep_path(short, 0.8)["sweeps_take_faster"] is False
    assert sweep_path(long, 0.8) == {"sweeps_use": "one by one", "sweeps_take_faster": True}
    assert sweep_path(long, 1.3)["sweeps_take_faster"] is False


def test_window_table_and_lines():
    rows = [
        {"seq_len": 64, "window": 8, "batch": 2, "step_ms": 2.0, "vs_full": 0.25, "bound_ms": 0.01},
        {"seq_len": 64, "window": None, "batch": 2, "step_ms": 8.0, "vs_full": 1.0, "bound_ms": 2},
    ]
    table = format_window_table(rows).splitlines()
    assert table[2] == "| 64 | 8 | 2.0 | 0.25x | 0.010 |"
    assert table[3] == "| 64 | full | 8.0 | 1.00x | 2.0 |"
    (c,) = window_comparisons(rows, reduced=False)
    assert c.line() == "window cost (N=64, batch 2, paper model): window 8 vs full attention: 4.0x"


def test_bench_bad_options_are_clear_errors(tmp_path, capsys):
    assert main(["bench", "--tiny", "--only", "ensemble,warp"]) == 2
    assert "unknown section 'warp'" in capsys.readouterr().err
    existing = tmp_path / "b.json"
    existing.write_text("{}")
    assert main(["bench", "--tiny", "--json", str(existing)]) == 2
    assert "exists" in capsys.readouterr().err
    assert existing.read_text() == "{}"
    assert main(["bench", "--tiny", "--only", "ensemble", "--members", "0"]) == 2
    assert "members must be a positive integer" in capsys.readouterr().err


def test_comparison_lines_and_tables():
    c = Comparison("x (y)", "fast thing", "slow thing", 2.0, 7.0)
    assert c.line() == "x (y): fast thing vs slow thing: 3.5x" and LINE.match(c.line())
    skipped = Comparison("patching", "batched", "tl", None, None, skipped="not here")
    assert skipped.ratio is None and skipped.line().endswith("skipped (not here)")
    row = {
        "members": 4,
        "seq_len": 32,
        "layers": 1,
        "ensemble_step_ms": 10.0,
        "ms_per_member": 2.5,
        "single_run_step_ms": 5.0,
        "speedup": 2.0,
        "data_share": 0.05,
        "ensemble_activations_mb": 1.25,
        "single_run_activations_mb": 0.5,
        "cuda_peak_mb": None,
    }
    table = format_table("members", [row]).splitlines()
    assert table[0].startswith("| members | seq_len | layers |")
    assert table[2] == "| 4 | 32 | 1 | 10.0 | 2.50 | 5.0 | 2.0x | 5.0% | 1.2 / 0.5 |"


def test_peak_memory_sees_a_large_allocation():
    with PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
        float(x.sum())
        time.sleep(0.05)  # the resident set is sampled every 5 ms
        del x
    if sys.platform.startswith("linux"):  # /proc is there: a figure must come out
        assert mem.peak is not None and mem.peak >= 48 * 2**20
    else:
        assert mem.peak is None or mem.peak >= 48 * 2**20


def test_saved_activation_bytes_counts_what_backward_keeps():
    x = torch.ones(2**18, requires_grad=True)  # 1 MB
    y = torch.ones(2**18, requires_grad=True)
    assert saved_activation_bytes(lambda: (x * y).sum()) == 2 * 2**20  # mul saves both
    assert saved_activation_bytes(lambda: (x + y).sum()) == 0  # add saves nothing
