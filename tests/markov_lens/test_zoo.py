"""The zoo: shipped tiny runs open by name, are what their names say, and are rebuilt exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import markov_lens as ml
from interp.atlas import AtlasConfig, measure_model
from interp.atlas.labels import atlas_label
from markov_lens.zoo import NAMES, ROOT
from markov_lens.zoo.build import BUILT_ON, build
from tests.tiny_runs import one_thread
from training.fused_attention import fingerprint

FAST = AtlasConfig(n_seqs=32, probes=False, timeline=False)


@pytest.mark.parametrize("name", NAMES)
def test_every_zoo_run_opens_by_name(name):
    run = ml.load_run(f"zoo/{name}")
    assert run.path == ml.zoo_path(name)
    model = run.model(device="cpu")
    tokens = run.chain.sample(2, 16, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(model(tokens)).all()
    size = sum(f.stat().st_size for f in run.path.rglob("*") if f.is_file())
    assert size < 120 * 1024  # kilobytes, not megabytes


def test_zoo_runs_are_what_their_names_say():
    untied, tied = ml.load_run("zoo/untied-p0.5-q0.8"), ml.load_run("zoo/tied-p0.5-q0.8")
    assert untied.summary()["verdict"] == "bigram" and not untied.model_config.tie_embeddings
    assert tied.model_config.tie_embeddings and tied.summary()["plateau_steps"] > 0
    assert ml.load_run("zoo/lag2-window2").summary()["order_label"] == "order-2 (optimal)"
    theta = ml.load_run("zoo/theta-pi-p0.5-q0.8")
    assert atlas_label(measure_model(theta.model(), theta.chain, FAST))["label"] == "marginal only"
    ic = ml.load_run("zoo/in-context-2layer")
    assert atlas_label(measure_model(ic.model(), ic.chain, FAST))["in_context"]


def test_unknown_zoo_name_is_one_clear_error():
    with pytest.raises(ValueError, match="no zoo run 'nope'; the zoo holds: tied-p0.5-q0.8"):
        ml.load_run("zoo/nope")


REBUILD_ATOL = 1e-4  # another CPU or kernel build: float32 rounding over 400 updates


def test_rebuilding_gives_the_same_weights(tmp_path):
    """Bit for bit on the machine that built the zoo (BUILT_ON.json), within REBUILD_ATOL
    on any other (another instruction set sums in another order)."""
    with one_thread():
        build(("untied-p0.5-q0.8", "theta-pi-p0.5-q0.8"), root=tmp_path)
    built_on = json.loads((ROOT / BUILT_ON).read_text())
    here = json.loads((tmp_path / BUILT_ON).read_text())
    assert here == fingerprint()
    for name in ("untied-p0.5-q0.8", "theta-pi-p0.5-q0.8"):
        (shipped,) = (ROOT / name).glob("checkpoints/*/model.safetensors")
        (rebuilt,) = (tmp_path / name).glob("checkpoints/*/model.safetensors")
        a, b = load_file(shipped), load_file(rebuilt)
        assert a.keys() == b.keys()
        if here == built_on:
            assert all(torch.equal(a[k], b[k]) for k in a), name
        else:
            worst = max(float((a[k] - b[k]).abs().max()) for k in a)
            assert worst < REBUILD_ATOL, (name, worst, built_on, here)
