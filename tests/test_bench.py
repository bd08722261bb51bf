"""`markov-lens bench` (interp.cli_bench over training.bench) in its tiny mode: every
comparison is one `NAME: A vs B: R.Rx` line measured in process, plus the tables; bad
options are clear errors."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch

from interp.cli import main
from training.bench import Comparison, PeakMemory, format_table, saved_activation_bytes

LINE = re.compile(r"^(?P<name>[^\n]+?): (?P<a>[^\n]+?) vs (?P<b>[^\n]+?): (?P<r>\d+\.\d)x$")


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_bench_tiny_prints_one_ratio_line_per_comparison(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "--tiny", "--threads", "1", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("machine: ") and "load average" in lines[0]
    ratio_lines = [ln for ln in lines if LINE.match(ln)]
    names = [LINE.match(ln)["name"] for ln in ratio_lines]
    assert any(n.startswith("ensemble training (REDUCED") for n in names)
    assert sum(n.startswith("sampler (") for n in names) == 2
    assert any(n.startswith("tying reproduction, REDUCED") for n in names)
    assert any(n.startswith("depth reproduction, REDUCED") for n in names)
    for ln in ratio_lines:
        assert float(LINE.match(ln)["r"]) > 0
    # patching: a ratio line when interp.patching_bench exists, else a clear skip line
    assert any(ln.startswith("patching") and (LINE.match(ln) or "skipped (" in ln) for ln in lines)
    assert "data sampling" in out and "peak memory" in out
    for title in ("sequence length", "ensemble members", "depth (layers)"):
        assert f"step time against {title}" in out
    result = json.loads(out_json.read_text())
    assert result["mode"] == "tiny"
    by_line = {c["line"]: c for c in result["comparisons"]}
    assert set(by_line) <= set(lines)
    ens = next(c for c in result["comparisons"] if c["name"].startswith("ensemble training"))
    assert ens["details"]["same_verdicts"] == "4/4"
    assert ens["ratio"] == pytest.approx(ens["b_seconds"] / ens["a_seconds"])
    assert set(result["tables"]) == {"seq_len", "members", "layers"}


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
    if mem.peak is not None:  # /proc is there (Linux)
        assert mem.peak >= 48 * 2**20


def test_saved_activation_bytes_counts_what_backward_keeps():
    x = torch.ones(2**18, requires_grad=True)  # 1 MB
    y = torch.ones(2**18, requires_grad=True)
    assert saved_activation_bytes(lambda: (x * y).sum()) == 2 * 2**20  # mul saves both
    assert saved_activation_bytes(lambda: (x + y).sum()) == 0  # add saves nothing
