"""benchmarks/gpu_check.py (the figures half of benchmarks/gpu_check.sh) runs on the CPU with
tiny settings, so that the GPU check cannot rot between sessions that have a GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # tests/benchmarks/this file


def test_gpu_check_figures_on_cpu(tmp_path):
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu"]
    out = subprocess.run(
        cmd + ["--tiny", "--out", str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "paper run (6 updates of 4 x 32" in out.stdout
    assert "stack vs 4 single steps" in out.stdout
    figures = json.loads((tmp_path / "gpu_figures.json").read_text())
    assert figures["stack"]["members"] == 4 and figures["stack"]["ratio"] > 0
    assert 0 < figures["paper_run"]["final_eval_loss"] < 1.0  # a binary chain: below ln 2


def test_gpu_check_script_is_valid_bash():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert os.access(script, os.X_OK)
    named = re.findall(r"tests/[\w/]+\.py", script.read_text())  # the tests it runs on CUDA
    assert named and all((ROOT / name).is_file() for name in named), named
