"""The device-sensitive paths on CUDA: the fused branch (SDPA / unfolded band), stacked
members under vmap, training with exact resume, and patching. Skipped where no GPU is
present (CI); benchmarks/gpu_check.sh runs them on a GPU machine."""

from __future__ import annotations

import pytest
import torch

from training.chains import BinaryChain
from training.config import ModelConfig
from training.model import MarkovTransformer
from training.recipe import TrainConfig
from training.stacked import StackedWeights, stacked_logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("window", [None, 0, 3, 30])
def test_fused_branch_equals_explicit_on_cuda(window):
    cfg = ModelConfig.paper(n_ctx=64, n_layers=2, n_heads=2, attn_window=window)
    model = MarkovTransformer(cfg, seed=0).to(CUDA)
    toks = torch.randint(0, 2, (4, 64), device=CUDA)
    model.set_attention_backend("explicit")
    ref = model(toks, return_type="loss")
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    model.set_attention_backend("auto")
    loss = model(toks, return_type="loss")
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-5)


def test_stacked_members_equal_each_model_on_cuda():
    cfg = ModelConfig.paper(n_ctx=32)
    models = [MarkovTransformer(cfg, seed=s).to(CUDA) for s in range(4)]
    weights = StackedWeights.from_models(models)
    toks = torch.randint(0, 2, (4, 3, 32), device=CUDA)
    logits = stacked_logits(models[0], weights.params, toks)
    for i, m in enumerate(models):
        torch.testing.assert_close(logits[i], m(toks[i]), rtol=1e-4, atol=1e-5)


def test_training_on_cuda_resumes_exactly(tmp_path):
    from training.trainer import train

    tc = TrainConfig(iters=12, batch=4, seq_len=32, eval_every=4, save_every=4, device="cuda")
    mc = ModelConfig.paper(n_ctx=32)
    ref = train(mc, BinaryChain(0.5, 0.8), tc, seed=3, out_dir=tmp_path / "a", progress=False)
    train(mc, BinaryChain(0.5, 0.8), tc, seed=3, out_dir=tmp_path / "b", progress=False, stop_at=5)
    done = train(
        mc, BinaryChain(0.5, 0.8), tc, seed=3, out_dir=tmp_path / "b", progress=False, resume=True
    )
    assert ref["device"].startswith("cuda")
    for a, b in zip(ref.model.parameters(), done.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_patching_on_cuda_equals_transformer_lens():
    from transformer_lens import patching

    from interp.patching import patch_sweep

    cfg = ModelConfig.paper(n_ctx=16, init_range=0.5)
    model = MarkovTransformer(cfg, seed=1).to(CUDA).eval()
    clean = torch.randint(0, 2, (3, 16), device=CUDA)
    corrupt = clean.clone()
    corrupt[:, -1] = 1 - corrupt[:, -1]
    _, cache = model.run_with_cache(clean)

    def metric(logits):  # [..., batch, readout, vocab] -> [..., batch]
        return logits[..., -1, 1] - logits[..., -1, 0]

    ours = patch_sweep(model, corrupt, dict(cache.items()), "resid_pre", metric)
    ref = patching.get_act_patch_resid_pre(
        model, corrupt, cache, lambda lg: metric(lg[:, -1:]).mean()
    )
    torch.testing.assert_close(ours.to(ref.device), ref, rtol=1e-4, atol=1e-5)
