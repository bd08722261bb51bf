"""The notebooks: stored without outputs, each built on ``import markov_lens as ml`` and the zoo,
and each runs top to bottom with the small settings (MARKOV_LENS_NB_SMALL=1) in a fresh "python3"
kernel, failing on any cell error, and prints the result it teaches (PRINTS)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED_PREFIXES = ["01_", "02_", "03_", "04_", "05_", "06_", "07_", "08_"]
KERNEL = "python3"
# figures each notebook must show (measured with the small settings)
MIN_FIGURES = {"01": 3, "02": 5, "03": 5, "04": 4, "05": 3, "06": 6, "07": 5, "08": 2}
# what each notebook prints at the small settings: the result it teaches, read off a zoo run
# (a regular expression searched in its text outputs)
PRINTS = {
    "01": r"verdict: bigram",  # the tied zoo run left the unigram plateau
    "02": r"theta_pi: P\(1\|0\) = 0\.385, P\(1\|1\) = 0\.385",  # the trap predicts pi_1
    "03": r"window 2: loss 0\.54\d+ nats[^\n]*\n window removed: loss 0\.[6-9]",
    "04": r"mechanistic verdict: bigram",
    "06": r"theta_pi: verdict unigram[^\n]*\n tied, step 400: verdict bigram",
    "07": r"zoo/lag2-window2: kernel via attention",
    "08": r"logit attributions sum to the logit difference within \d\.\de-0[6-9]",
}
FRONT_DOOR = "import markov_lens as ml"


def test_the_notebooks_exist():
    assert [p.name[:3] for p in NOTEBOOKS] == EXPECTED_PREFIXES, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    for i, cell in enumerate(book.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has stored outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    first = next(c for c in book.cells if c.cell_type == "code").source
    assert "FULL = False" in first and "MARKOV_LENS_NB_SMALL" in first, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_the_zoo_through_the_front_door(path):
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
    assert source.count(FRONT_DOOR) > 0, f"{path.name} does not `{FRONT_DOOR}`"
    assert re.search(r"load_run\(f?\"zoo/", source), f"{path.name} opens no zoo run"


def _text_outputs(book) -> str:
    """Everything a notebook printed or displayed as text (streams, text/plain, markdown)."""
    parts = []
    for cell in book.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            data = out.get("data", {})
            parts += [data[k] for k in ("text/plain", "text/markdown") if k in data]
    return "\n".join(parts)


def _kernel_available() -> bool:
    from jupyter_client.kernelspec import KernelSpecManager

    return KERNEL in KernelSpecManager().find_kernel_specs()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_small_settings(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    assert _kernel_available(), (
        f"no Jupyter kernel named {KERNEL!r}: run `python -m ipykernel install --sys-prefix "
        f"--name {KERNEL}` in the virtual environment (the Makefile does)"
    )
    monkeypatch.setenv("MARKOV_LENS_NB_SMALL", "1")
    monkeypatch.setenv("MARKOV_LENS_NB_OUT", str(tmp_path / "runs"))
    # the kernel's inline backend, so that every figure becomes a PNG output we can count
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(
        book,
        timeout=300,
        kernel_name=KERNEL,
        allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [
        out
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.get("output_type") == "error"
    ]
    assert errors == []
    # each notebook shows its figures (v1 checked only that the cells ran)
    pngs = [
        i
        for i, cell in enumerate(book.cells)
        if cell.cell_type == "code"
        for out in cell.outputs
        if "image/png" in out.get("data", {})
    ]
    assert len(pngs) >= MIN_FIGURES[path.name[:2]], (path.name, pngs)
    # ... and prints the result it teaches
    expected = PRINTS.get(path.name[:2])
    if expected is not None:
        text = _text_outputs(book)
        assert re.search(expected, text), (path.name, expected, text[-2000:])
