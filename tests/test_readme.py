"""Every fenced Python block of README.md runs as written, in order, in one namespace (as a
reader pasting them into a notebook would), in a directory holding the runs the README's
`markov-lens train` commands make (tiny versions: runs/tied-s0 and runs/untied-s1)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from tests.tiny_runs import train_tiny

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 6


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    train_tiny(d / "runs" / "tied-s0", seed=0, tie_embeddings=True)
    train_tiny(d / "runs" / "untied-s1", seed=1, tie_embeddings=False)
    return d


def test_readme_python_blocks_run_as_written(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    threads = torch.get_num_threads()
    namespace: dict = {"__name__": "readme"}
    try:
        for i, block in enumerate(BLOCKS):
            try:
                exec(compile(block, f"README.md python block {i}", "exec"), namespace)
            except Exception as err:  # name the block in the failure
                raise AssertionError(f"README python block {i} failed: {err!r}\n{block}") from err
    finally:
        torch.set_num_threads(threads)
    assert os.path.exists(workdir / "runs" / "tied-s0" / "report.html")
