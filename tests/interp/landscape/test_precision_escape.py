"""The plateau escape in fp32 vs fp16 autocast from one init (interp.landscape.escape)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from interp.landscape import gradient_fidelity, precision_escape, training_gradient_norm
from interp.landscape.escape import FP16_SMALLEST_NORMAL
from interp.landscape.plots import plot_precision_escape
from tests.figures import assert_drawn
from training.chains import BinaryChain
from training.config import ModelConfig
from training.model import MarkovTransformer
from training.recipe import TrainConfig
from training.references import stationary_marginal
from training.runs import load_run
from training.trainer import STREAM_INIT, derive_seed, member_batches

pytestmark = pytest.mark.usefixtures("one_thread")

CHAIN = BinaryChain(0.5, 0.8)
MC = ModelConfig.paper(n_ctx=16)


def tiny(**kw) -> TrainConfig:
    base = dict(iters=12, batch=4, seq_len=16, eval_every=2, eval_batches=1, device="cpu")
    return TrainConfig(**(base | {"checkpoints_per_octave": 64, "save_every": 0} | kw))


def test_gradient_norm_is_the_training_losss_gradient():
    tc = tiny()
    model = MarkovTransformer(MC, seed=derive_seed(3, STREAM_INIT), pi=stationary_marginal(CHAIN))
    tokens = member_batches([CHAIN], [3], 5, tc, torch.device("cpu"))[0]
    # independent oracle: the explicit branch, cross-entropy of positions 0..N-2, by hand
    model.set_fused_attention(False)
    logits = model(tokens)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, 2), tokens[:, 1:].reshape(-1))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    want = float(torch.cat([g.flatten() for g in grads]).norm())
    got = training_gradient_norm(model, CHAIN, tc, seed=3, step=5)
    assert got == pytest.approx(want, rel=1e-5)
    half = training_gradient_norm(model, CHAIN, tiny(precision="fp16"), seed=3, step=5)
    assert half != got and half == pytest.approx(got, rel=0.1)  # fp16 rounds, a little


def test_precision_escape_same_init_two_arithmetics(tmp_path):
    out = precision_escape(CHAIN, MC, tiny(), seed=0, out_dir=tmp_path, depart_tol=1e-6)
    fp32, fp16 = out["precisions"]["fp32"], out["precisions"]["fp16"]
    assert fp32["steps"] == fp16["steps"] == list(range(12))  # every step kept, last excluded
    assert len(fp32["grad_norm"]) == 12 and all(g > 0 for g in fp32["grad_norm"])
    assert fp32["arithmetic"]["precision"] == "fp32"
    assert fp16["arithmetic"]["autocast"] == "cpu torch.float16"
    # one init: the step-0 weights are equal, so the step-0 gradients differ by rounding only
    a, b = (load_run(tmp_path / p).model(0, device="cpu") for p in ("fp32", "fp16"))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert fp16["grad_norm"][0] == pytest.approx(fp32["grad_norm"][0], rel=0.1)
    assert fp16["grad_norm"] != fp32["grad_norm"]
    assert fp32["cosine"] == pytest.approx([1.0] * 12) and fp32["scaled_cosine"] == [None] * 12
    assert all(0.5 < c < 1 for c in fp16["cosine"]) and len(fp16["scaled_cosine"]) == 12
    assert fp32["eval_loss"][0] == pytest.approx(fp16["eval_loss"][0], abs=1e-2)
    # at step 0 only the evaluation's own fp16 rounding separates them; tolerance below it
    assert 0 < out["start_difference"]["fp16"] < 1e-2
    assert out["departs_step"]["fp16"] == 0
    assert set(out["departs_step"]) == {"fp16"} and out["reference"] == "fp32"
    fig = plot_precision_escape(out, tmp_path / "escape.png")
    assert_drawn(tmp_path / "escape.png")
    loss_ax, norm_ax, cos_ax = fig.axes
    assert [line.get_label() for line in cos_ax.get_lines()][:2] == [
        "fp16, no loss scale",
        "fp16 x 2^16",
    ]
    assert list(norm_ax.get_lines()[1].get_ydata()) == fp16["grad_norm"]
    with pytest.raises(FileExistsError):  # a finished run is never overwritten
        precision_escape(CHAIN, MC, tiny(), seed=0, out_dir=tmp_path)


def test_gradient_fidelity_against_a_by_hand_float32_gradient():
    tc = tiny(batch=256, seq_len=64)  # T = 256 x 63 targets, as many as the paper's 16 x 1023
    mc = ModelConfig.paper(n_ctx=64)
    model = MarkovTransformer(mc, seed=derive_seed(1, STREAM_INIT), pi=stationary_marginal(CHAIN))
    same = gradient_fidelity(model, CHAIN, tc, seed=1, step=3)
    assert same["cosine"] == pytest.approx(1.0) and same["rel_error"] == 0.0
    assert same["norm_ratio"] == 1.0 and "scaled_cosine" not in same
    # oracle for the output gradient: softmax - onehot over T, by hand, in float64
    tokens = member_batches([CHAIN], [1], 3, tc, torch.device("cpu"))[0]
    with torch.no_grad():
        logits = model(tokens).double()
    d = logits.softmax(-1)[:, :-1]
    d[..., 0] -= (tokens[:, 1:] == 0).double()
    d[..., 1] -= (tokens[:, 1:] == 1).double()
    d = d / d[..., 0].numel()
    want = float((d.abs() < FP16_SMALLEST_NORMAL).double().mean())
    assert 0.9 < same["output_subnormal"] == pytest.approx(want, abs=1e-6)
    assert same["output_rounding"] > 1e-4  # float16 storage loses digits of these entries
    half = gradient_fidelity(model, CHAIN, tiny(batch=256, seq_len=64, precision="fp16"), 1, 3)
    assert 0.5 < half["cosine"] < 1.0 and half["rel_error"] > 1e-3
    assert half["output_subnormal"] == same["output_subnormal"]  # a float32 property
    # a GradScaler's scale lifts the output gradient out of float16's subnormal range
    assert half["scaled_rel_error"] < half["rel_error"]
    assert half["scaled_cosine"] > half["cosine"]
