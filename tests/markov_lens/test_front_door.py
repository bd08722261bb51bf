"""``import markov_lens as ml``: every exported name resolves, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import markov_lens as ml


@pytest.mark.parametrize("name", ml.__all__)
def test_every_export_resolves(name):
    assert getattr(ml, name) is not None
    assert name in dir(ml)


def test_exports_are_the_home_objects():
    from interp.report import write_report
    from training.chains import BinaryChain

    assert ml.BinaryChain is BinaryChain
    assert ml.html_report is write_report


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ml.nope  # noqa: B018


def test_import_is_light():
    code = "import sys, markov_lens; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_zoo_lists_every_run_with_one_line():
    import markov_lens.zoo  # binds the package to the name: ml.zoo() still lists
    from markov_lens.zoo import NAMES

    listing = ml.zoo()
    assert list(listing) == list(NAMES)
    assert all(isinstance(line, str) and line and "\n" not in line for line in listing.values())
    lines = str(listing).splitlines()
    assert len(lines) == len(NAMES) and all(
        line.startswith(n) for line, n in zip(lines, NAMES, strict=True)
    )
    assert list(markov_lens.zoo()) == list(NAMES)


def test_load_run_opens_a_checkpoint_directory_at_its_step(tmp_path):
    from tests.tiny_runs import train_tiny

    run = ml.load_run(train_tiny(tmp_path / "run", iters=40))
    first = run.checkpoint_steps()[1]
    assert first < run.checkpoint_steps()[-1]
    at = ml.load_run(run.checkpoint_path(first))
    assert at.path == run.path and at.chain == run.chain and at.seed == run.seed
    assert all(m["step"] <= first for m in at.metrics()) and len(at.metrics()) < len(run.metrics())
    ours, direct = at.model(device="cpu"), run.model(first, device="cpu")
    for key, value in direct.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_load_run_opens_a_lone_checkpoint(tmp_path):
    import shutil

    from markov_lens.zoo import ROOT

    run = ml.load_run(ROOT / "untied-p0.5-q0.8")
    lone = tmp_path / "ckpt"
    shutil.copytree(run.checkpoint_path(), lone)
    alone = ml.load_run(lone)
    assert alone.chain == run.chain and alone.model_config == run.model_config
    assert alone.metrics() == [] and not alone.finished
    assert torch.equal(alone.model(device="cpu").W_U, run.model(device="cpu").W_U)


def test_to_transformerlens_exports_a_zoo_run_by_name():
    bridge = ml.to_transformerlens("zoo/lag2-window2")  # windowed: the band mask
    model = ml.load_run("zoo/lag2-window2").model(device="cpu")
    toks = model.to_tokens("0 1 1 0 0 1 0 1 1 1")
    with torch.no_grad():
        assert (bridge(toks).log_softmax(-1) - model(toks).log_softmax(-1)).abs().max() < 1e-5
    assert bridge.compatibility_mode and bridge.to_str_tokens(toks)[:3] == ["0", "1", "1"]
    raw = ml.to_transformerlens("zoo/lag2-window2", process_weights=False)
    with torch.no_grad():
        assert (raw(toks) - model(toks)).abs().max() < 1e-5
