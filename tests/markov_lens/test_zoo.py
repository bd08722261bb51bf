"""The zoo: shipped tiny runs open by name, are what their names say, and are rebuilt exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import markov_lens as ml
from interp.atlas import AtlasConfig, measure_model
from interp.atlas.labels import INDUCTION, atlas_label
from markov_lens.zoo import NAMES, ROOT
from markov_lens.zoo.build import BUILT_ON, build
from tests.tiny_runs import one_thread
from training.chains import add_pseudocount_probs
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
    # kilobytes, not megabytes (the largest, in-context-2layer: 50 KiB of weights and
    # 100 KiB of AdamW moments in its last checkpoint)
    assert size < 200 * 1024


def test_zoo_runs_are_what_their_names_say():
    untied, tied = ml.load_run("zoo/untied-p0.5-q0.8"), ml.load_run("zoo/tied-p0.5-q0.8")
    assert untied.summary()["verdict"] == "bigram" and not untied.model_config.tie_embeddings
    assert tied.model_config.tie_embeddings and tied.summary()["plateau_steps"] > 0
    assert ml.load_run("zoo/lag2-window2").summary()["order_label"] == "order-2 (optimal)"
    theta = ml.load_run("zoo/theta-pi-p0.5-q0.8")
    assert atlas_label(measure_model(theta.model(), theta.chain, FAST))["label"] == "marginal only"


def excess_over_add_alpha(run, n_seqs: int = 256) -> float:
    """The run's loss minus the add-alpha (Bayes) loss on the same fresh sequences of its
    training length, nats/token (paired, so its sampling error is small)."""
    chain, n = run.chain, run.train_config.seq_len
    tokens = chain.sample(n_seqs, n, generator=torch.Generator().manual_seed(11))
    target = tokens[:, 1:, None]
    bayes = add_pseudocount_probs(tokens, chain.n_states, chain.order, chain.alpha)[:, :-1]
    with torch.no_grad():
        log_probs = run.model().eval()(tokens).double().log_softmax(-1)[:, :-1]
    return float((bayes.log().gather(-1, target) - log_probs.gather(-1, target)).mean())


def test_in_context_zoo_pair_is_the_depth_contrast():
    """Two layers: labelled in-context (induction), both heads far above their shuffled
    chance, within 0.01 nats of the add-alpha loss; one layer, same recipe: not induction."""
    two, one = ml.load_run("zoo/in-context-2layer"), ml.load_run("zoo/in-context-1layer")
    assert one.train_config == two.train_config and one.chain == two.chain
    m = measure_model(two.model(), two.chain, FAST)
    label, circuit = atlas_label(m, two.summary()), m["circuit"]
    assert label["label"] == INDUCTION and label["induction"], circuit["label"]
    assert circuit["previous_token_head"] == [0, 0] and circuit["matching_head"] == [1, 0]
    assert circuit["previous_token_excess"] > 0.3 and circuit["match_excess"] > 0.2
    assert 0 < excess_over_add_alpha(two) < 0.01
    m1 = measure_model(one.model(), one.chain, FAST)
    assert atlas_label(m1, one.summary())["label"] != INDUCTION
    assert m1["circuit"]["matching_head"] is None
    assert excess_over_add_alpha(one) > 0.01


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
