"""Batched activation patching: equal to transformer_lens.patching, corruptions, metrics,
normalisation, ablation and direct-path shares."""

import contextlib
import io
import re

import pytest
import torch
import transformer_lens.patching as tlp
from transformer_lens import ActivationCache

from benchmarks.patching import benchmark_patching, format_row
from interp.corruptions import make_patching_data
from interp.patching import (
    ablation_hooks,
    ablation_source,
    cache_run,
    cache_runs,
    direct_path_effects,
    direct_path_hooks,
    hook_name,
    make_metric,
    normalise,
    patch_sweep,
    run_ablation,
    run_patching,
)
from training.chains import BinaryChain, InContextChain, KthOrderChain
from training.config import ModelConfig
from training.inits import init_theta_pi
from training.model import MarkovTransformer

TL = {
    ("resid_pre", True): tlp.get_act_patch_resid_pre,
    ("resid_mid", True): tlp.get_act_patch_resid_mid,
    ("attn_out", True): tlp.get_act_patch_attn_out,
    ("mlp_out", True): tlp.get_act_patch_mlp_out,
    ("z", True): tlp.get_act_patch_attn_head_out_by_pos,
    ("q", True): tlp.get_act_patch_attn_head_q_by_pos,
    ("k", True): tlp.get_act_patch_attn_head_k_by_pos,
    ("v", True): tlp.get_act_patch_attn_head_v_by_pos,
    ("pattern", True): tlp.get_act_patch_attn_head_pattern_by_pos,
    ("z", False): tlp.get_act_patch_attn_head_out_all_pos,
    ("q", False): tlp.get_act_patch_attn_head_q_all_pos,
    ("k", False): tlp.get_act_patch_attn_head_k_all_pos,
    ("v", False): tlp.get_act_patch_attn_head_v_all_pos,
    ("pattern", False): tlp.get_act_patch_attn_head_pattern_all_pos,
}
MODELS = {
    "paper": {},
    "deep": {
        "n_layers": 3,
        "n_heads": 2,
        "attn_window": [3, None, 5],
        "linear_bias": True,
        "ln_bias": True,
        "d_vocab": 3,
        "tie_embeddings": False,
    },
    "attn_only": {"n_layers": 2, "attn_only": True, "normalization_type": None},
}


pytestmark = pytest.mark.usefixtures("one_thread_module")


def perturbed(cfg: dict, seed: int = 0) -> MarkovTransformer:
    model = MarkovTransformer(ModelConfig.paper(n_ctx=32, **cfg), seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request):
    """A model, a clean / corrupted batch (two positions differ) and a label metric."""
    model = perturbed(MODELS[request.param])
    gen = torch.Generator().manual_seed(1)
    V, B, N = model.cfg.d_vocab, 2, 9
    clean = torch.randint(0, V, (B, N), generator=gen)
    corrupt = clean.clone()
    corrupt[:, -1] = (corrupt[:, -1] + 1) % V
    corrupt[:, 4] = (corrupt[:, 4] + 1) % V
    labels = torch.randint(0, V, (B,), generator=gen)

    def metric(logits):  # [..., batch, readout, vocab] -> [..., batch]
        lp = logits[..., -1, :].log_softmax(-1)
        return lp.gather(-1, labels.expand(lp.shape[:-1])[..., None])[..., 0]

    _, cache = model.run_with_cache(clean)
    return model, clean, corrupt, cache, metric


def test_equals_transformer_lens(setup):
    """Every sweep equals transformer_lens.patching.get_act_patch_* (max |diff| < 1e-5), for
    whole chunks and for small chunks (budget) that recompute suffixes."""
    model, clean, corrupt, cache, metric = setup
    source = dict(cache.items())
    for (act, by_pos), fn in TL.items():
        if model.cfg.attn_only and act in ("resid_mid", "mlp_out"):
            continue
        with contextlib.redirect_stderr(io.StringIO()):
            ref = fn(model, corrupt, cache, lambda lg: metric(lg[:, -1:]).mean())
        for budget in (2000, 1 << 24):
            mine = patch_sweep(model, corrupt, source, act, metric, by_pos=by_pos, budget=budget)
            assert mine.shape == ref.shape, act
            assert (mine - ref).abs().max() < 1e-5, (act, by_pos, budget)


def tl_sweep(model, tokens, cache, act, by_pos, metric, readout=(-1,)):
    """transformer_lens.patching's sweep of ``act`` with ``metric`` on the ``readout`` logits."""
    if not isinstance(cache, ActivationCache):
        cache = ActivationCache(cache, model)
    with contextlib.redirect_stderr(io.StringIO()):
        return TL[(act, by_pos)](
            model, tokens, cache, lambda lg: metric(lg[:, list(readout)]).mean()
        )


def test_every_position_differs_equals_transformer_lens(setup):
    """A corrupted batch that differs everywhere (nothing to skip: every patch is a forward
    pass of its own), and a mean-ablation source (an expanded view); chunks of every size."""
    model, clean, corrupt, cache, metric = setup
    gen = torch.Generator().manual_seed(7)
    other = torch.randint(0, model.cfg.d_vocab, clean.shape, generator=gen)
    other[:, -1] = (clean[:, -1] + 1) % model.cfg.d_vocab
    for (act, by_pos), _ in TL.items():
        if model.cfg.attn_only and act in ("resid_mid", "mlp_out"):
            continue
        ref = tl_sweep(model, other, cache, act, by_pos, metric)
        for budget in (1, 3000, 1 << 24):
            mine = patch_sweep(
                model, other, dict(cache.items()), act, metric, by_pos=by_pos, budget=budget
            )
            assert (mine - ref).abs().max() < 1e-5, (act, by_pos, budget)
    mean = ablation_source(model, clean.shape[0], other, "mean")
    for act in ("resid_pre", "z", "v", "pattern"):
        ref = tl_sweep(model, clean, mean, act, True, metric)
        mine = patch_sweep(model, clean, mean, act, metric)
        assert (mine - ref).abs().max() < 1e-5, act


def test_readout_before_the_end(setup):
    """Readouts before the last position: the copies are cut after the last readout (causal),
    patches after it change nothing; equal to TransformerLens on the full sequences."""
    model, clean, corrupt, cache, _ = setup

    def metric(logits):
        return logits[..., 0, 0] + 0.5 * logits[..., 1, -1] - logits[..., 1, 0]

    for (act, by_pos), _ in TL.items():
        if model.cfg.attn_only and act in ("resid_mid", "mlp_out"):
            continue
        ref = tl_sweep(model, corrupt, cache, act, by_pos, metric, readout=(3, 5))
        mine = patch_sweep(
            model, corrupt, dict(cache.items()), act, metric, by_pos=by_pos, readout=(5, 3)
        )
        assert (mine - ref).abs().max() < 1e-5, (act, by_pos)


def test_pattern_source_weighting_later_keys(setup):
    """A source pattern that weights keys after the query (no model makes one) reads values
    after the last readout; the sweep still equals TransformerLens's."""
    model, clean, corrupt, cache, metric = setup
    gen = torch.Generator().manual_seed(3)
    source = dict(cache.items())
    for layer in range(model.cfg.n_layers):
        name = hook_name("pattern", layer)
        source[name] = torch.rand(cache[name].shape, generator=gen).softmax(-1)
    for by_pos in (True, False):
        ref = tl_sweep(model, corrupt, source, "pattern", by_pos, metric, readout=(4,))
        mine = patch_sweep(model, corrupt, source, "pattern", metric, by_pos=by_pos, readout=(4,))
        assert (mine - ref).abs().max() < 1e-5, by_pos


def test_sweeps_run_the_model_itself():
    """patch_sweep drives the model through its hooks: a permanent hook (here one that halves a
    head's output) is part of every patched run, as in TransformerLens; and a patch whose
    source equals the target's own activation, as everywhere before a corrupted last token,
    needs no forward pass: one target run plus one copy per sequence and layer."""
    model = perturbed({"n_layers": 2, "n_heads": 2})
    gen = torch.Generator().manual_seed(5)
    clean = torch.randint(0, 2, (3, 10), generator=gen)
    corrupt = clean.clone()
    corrupt[:, -1] = 1 - corrupt[:, -1]
    labels = torch.randint(0, 2, (3,), generator=gen)

    def metric(logits):
        lp = logits[..., -1, :].log_softmax(-1)
        return lp.gather(-1, labels.expand(lp.shape[:-1])[..., None])[..., 0]

    rows = []

    def halve(z, hook):
        z[:, :, 1] = z[:, :, 1] / 2
        return z

    def count(x, hook):
        rows.append(x.shape[0])
        return x

    try:
        model.add_hook("blocks.0.attn.hook_z", halve, is_permanent=True)
        model.add_hook("hook_embed", count, is_permanent=True)
        _, cache = model.run_with_cache(clean)
        hooked = {}
        for act in ("resid_pre", "z"):
            ref = tl_sweep(model, corrupt, cache, act, True, metric)
            rows.clear()
            hooked[act] = mine = patch_sweep(model, corrupt, dict(cache.items()), act, metric)
            assert (mine - ref).abs().max() < 1e-5, act
            heads = 1 if act == "resid_pre" else 2
            assert sum(rows) == 3 + 3 * 2 * heads, (act, rows)  # target + last position
    finally:
        model.reset_hooks(including_permanent=True)
    unhooked = patch_sweep(model, corrupt, dict(cache.items()), "resid_pre", metric)
    assert (unhooked - hooked["resid_pre"]).abs().max() > 1e-3  # the hook mattered


def test_whole_layer_patches_equal_a_hooked_run(setup):
    """by_pos=False for stream activations (not in TransformerLens): the whole activation of a
    layer replaced, checked against model.run_with_hooks."""
    model, clean, corrupt, cache, metric = setup
    acts = ["resid_pre", "attn_out", "resid_post"] + ([] if model.cfg.attn_only else ["mlp_out"])
    for act in acts:
        mine = patch_sweep(model, corrupt, dict(cache.items()), act, metric, by_pos=False)
        assert mine.shape == (model.cfg.n_layers,)
        for layer in range(model.cfg.n_layers):
            name = hook_name(act, layer)
            logits = model.run_with_hooks(
                corrupt, fwd_hooks=[(name, lambda x, hook, name=name: cache[name])]
            )
            assert abs(metric(logits[:, -1:]).mean() - mine[layer]) < 1e-5


def test_several_readout_positions_and_per_example_values(setup):
    model, clean, corrupt, cache, _ = setup

    def metric(logits):  # reads two positions
        return logits[..., 0, 0] - logits[..., 1, -1]

    def tl_metric(logits):
        return metric(logits[:, [5, 8]]).mean()

    with contextlib.redirect_stderr(io.StringIO()):
        ref = tlp.get_act_patch_resid_pre(model, corrupt, cache, tl_metric)
    mine = patch_sweep(model, corrupt, dict(cache.items()), "resid_pre", metric, readout=(8, 5))
    assert (mine - ref).abs().max() < 1e-5
    per_example = patch_sweep(
        model, corrupt, dict(cache.items()), "resid_pre", metric, readout=(5, 8), reduce="none"
    )
    assert per_example.shape == (*ref.shape, 2)
    torch.testing.assert_close(per_example.mean(-1), mine)


def test_bad_arguments(setup):
    model, clean, corrupt, cache, metric = setup
    source = dict(cache.items())
    with pytest.raises(ValueError, match="unknown activation"):
        patch_sweep(model, corrupt, source, "resid", metric)
    with pytest.raises(ValueError, match="readout"):
        patch_sweep(model, corrupt, source, "resid_pre", metric, readout=(40,))
    with pytest.raises(ValueError, match="source has no"):
        patch_sweep(model, corrupt, {}, "resid_pre", metric)
    with pytest.raises(ValueError, match="same batch size"):
        patch_sweep(model, corrupt[:1], source, "resid_pre", metric)
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            patch_sweep(model, corrupt, source, "resid_pre", metric)
    finally:
        model.eval()
    if model.cfg.attn_only:
        with pytest.raises(ValueError, match="attention-only"):
            patch_sweep(model, corrupt, source, "mlp_out", metric)


# ----------------------------------------------------------------------------- corruptions


def test_corruptions_stay_in_distribution():
    chain = BinaryChain(0.5, 0.8)
    gen = torch.Generator().manual_seed(0)
    flip = make_patching_data(chain, "flip", 64, 10, gen)
    assert (flip.clean != flip.corrupt).sum(0).tolist() == [0] * 9 + [64]
    assert flip.informative.all()
    # binary: the answer is the token the clean x_n makes likelier than the flipped one does
    kernel = chain.kernel_tensor()
    torch.testing.assert_close(flip.clean_probs, kernel[flip.clean[:, -1]])
    assert (
        flip.answer == (kernel[flip.clean[:, -1], 1] > kernel[flip.corrupt[:, -1], 1]).long()
    ).all()

    big = make_patching_data(chain, "resample", 4000, 6, gen, position=3)
    past = big.clean[:, 2]
    for prev in (0, 1):  # x_3 redrawn from P(. | x_2)
        freq = big.corrupt[past == prev, 3].float().mean().item()
        assert freq == pytest.approx(float(kernel[prev, 1]), abs=0.04)
    assert (big.corrupt[:, [0, 1, 2, 4, 5]] == big.clean[:, [0, 1, 2, 4, 5]]).all()

    three = make_patching_data(KthOrderChain.symmetric(3, 0.3), "flip", 200, 5, gen)
    assert (three.corrupt[:, -1] != three.clean[:, -1]).all()

    ic = InContextChain(states=2)
    swap = make_patching_data(ic, "kernel_swap", 32, 20, gen)
    assert (swap.corrupt[:, -1] == swap.clean[:, -1]).all()
    assert (swap.corrupt[:, :-1] != swap.clean[:, :-1]).any(1).float().mean() > 0.9
    with pytest.raises(ValueError, match="in-context chain"):
        make_patching_data(chain, "kernel_swap", 4, 10, gen)
    with pytest.raises(ValueError, match="corruption must be one of"):
        make_patching_data(chain, "noise", 4, 10, gen)
    with pytest.raises(ValueError, match="outside"):
        make_patching_data(chain, "flip", 4, 10, gen, position=10)


def test_normalised_denoising_and_noising():
    """Patching the corrupted position's residual stream restores everything (1) when
    denoising and removes everything (0) when noising; positions that did not change do
    nothing."""
    model = perturbed({"n_layers": 2, "tie_embeddings": False})
    data = make_patching_data(
        BinaryChain(0.3, 0.4), "flip", 16, 9, torch.Generator().manual_seed(2)
    )
    for metric in ("logit_diff", "logprob"):
        den = run_patching(model, data, ["resid_pre", "attn_out"], "denoise", metric)
        noi = run_patching(model, data, ["resid_pre"], "noise", metric)
        assert den.clean == pytest.approx(noi.clean) and den.corrupt == pytest.approx(noi.corrupt)
        d, n = den.normalised("resid_pre"), noi.normalised("resid_pre")
        assert d[0, -1].item() == pytest.approx(1.0, abs=1e-5)
        assert n[0, -1].item() == pytest.approx(0.0, abs=1e-5)
        assert d[0, :-1].abs().max() < 1e-5 and (n[0, :-1] - 1).abs().max() < 1e-5
        assert d[1, -1].item() == pytest.approx(1.0, abs=1e-5)  # layer 1, x_n: all info is there
        record = den.to_dict()
        assert record["axes"]["attn_out"] == ["layer", "pos"]
    assert den.true_effect > 0  # the chain depends on x_n (p + q != 1)


def test_theta_pi_does_not_react_to_the_flip():
    model = MarkovTransformer(ModelConfig.paper(n_ctx=16), seed=0).eval()
    init_theta_pi(model, torch.tensor([0.8 / 1.3, 0.5 / 1.3], dtype=torch.float64))
    data = make_patching_data(BinaryChain(0.5, 0.8), "flip", 8, 8, torch.Generator().manual_seed(0))
    res = run_patching(model, data, ["resid_pre"], "denoise", "logit_diff")
    assert res.effect == 0.0 and res.true_effect > 1.0
    assert torch.isnan(res.normalised("resid_pre")).all()
    assert torch.isnan(normalise(torch.zeros(3), 1.0, 1.0)).all()
    direct = direct_path_effects(model, data)
    assert direct["total_effect"] == 0.0


def test_logit_diff_metric_matches_true_law_signs():
    data = make_patching_data(BinaryChain(0.2, 0.3), "flip", 8, 6, torch.Generator().manual_seed(3))
    fn = make_metric("logit_diff", data)
    probs = data.clean_probs.float()
    logits = probs.log()[:, None]  # a perfect predictor's logits at the readout
    clean_true, _ = data.true_logit_diff()
    assert fn(logits).mean().item() == pytest.approx(clean_true, rel=1e-5)
    with pytest.raises(ValueError, match="metric must be"):
        make_metric("accuracy", data)


def test_ablation():
    model = perturbed({"n_heads": 2})
    data = make_patching_data(BinaryChain(0.3, 0.4), "flip", 6, 8, torch.Generator().manual_seed(4))
    same = data.clean[:1].expand(5, -1)  # every reference sequence = the first clean one
    source = ablation_source(model, 6, same, "mean")
    _, cache = model.run_with_cache(same[:1])
    torch.testing.assert_close(
        source["blocks.0.hook_attn_out"][3], cache["blocks.0.hook_attn_out"][0]
    )
    out = run_ablation(
        model, data, data.clean, "resample", ["attn_out", "z"], torch.Generator().manual_seed(0)
    )
    assert set(out["loss_increase"]) == {"attn_out", "attn_out_all", "z", "z_all"}
    assert out["loss_increase"]["z"].shape == (1, 8, 2)
    # ablating the first sequence with itself changes nothing
    mean_self = run_ablation(model, data, data.clean, "mean", ["mlp_out"])
    assert torch.isfinite(mean_self["loss_increase"]["mlp_out_all"]).all()
    with pytest.raises(ValueError, match="ablation mode"):
        ablation_source(model, 6, same, "zero")


def test_ablation_hooks_ablate_whole_activations_at_once():
    """ablation_hooks replace every named activation whole by the ablation source: all layers
    at once as a hand-written hook does, and one layer alone as run_ablation's "_all" sweep."""
    model = perturbed(MODELS["deep"])
    chain = KthOrderChain.random(3, 1, 1.0)
    gen = torch.Generator().manual_seed(8)
    data = make_patching_data(chain, "resample", 6, 8, gen)
    reference = chain.sample(5, 8, generator=gen)
    names = [f"blocks.{layer}.hook_attn_out" for layer in range(model.cfg.n_layers)]
    source = ablation_source(model, 6, reference, "mean")
    _, cache = model.run_with_cache(reference, return_cache_object=False)

    def by_hand(x, hook):
        return cache[hook.name].mean(0, keepdim=True).expand_as(x)

    with torch.no_grad():
        with model.hooks(fwd_hooks=ablation_hooks(source, names)):
            ablated = model(data.clean)
        expected = model.run_with_hooks(data.clean, fwd_hooks=[(n, by_hand) for n in names])
    assert torch.equal(ablated, expected)
    fn = make_metric("logprob", data)
    sweep = run_ablation(model, data, reference, "mean", ["attn_out"])["loss_increase"]
    with torch.no_grad():
        base = float(fn(model(data.clean)[:, -1:]).mean())
    for layer, name in enumerate(names):
        with torch.no_grad(), model.hooks(fwd_hooks=ablation_hooks(source, [name])):
            one = base - float(fn(model(data.clean)[:, -1:]).mean())
        assert one == pytest.approx(float(sweep["attn_out_all"][layer]), abs=1e-5)
    with pytest.raises(ValueError, match="has no activation"):
        ablation_hooks(source, ["blocks.0.hook_nothing"])
    with pytest.raises(ValueError, match="batch size"), torch.no_grad():
        with model.hooks(fwd_hooks=ablation_hooks(source, names)):
            model(data.clean[:3])


@pytest.mark.parametrize("name", ["deep", "attn_only"])
def test_shared_caches_give_the_same_results(name):
    """Caches computed once (cache_runs / cache_run) and passed down give bitwise what each
    function computes with its own runs; caches without a needed hook are refused."""
    model = perturbed(MODELS[name])
    chain = BinaryChain(0.3, 0.4) if model.cfg.d_vocab == 2 else KthOrderChain.random(3, 1, 1.0)
    gen = torch.Generator().manual_seed(6)
    data = make_patching_data(chain, "resample", 6, 8, gen)
    reference = chain.sample(5, 8, generator=gen)
    acts = ["resid_pre", "attn_out", "z"] + ([] if model.cfg.attn_only else ["mlp_out"])
    runs = cache_runs(model, data)
    for direction in ("denoise", "noise"):
        own = run_patching(model, data, acts, direction)
        shared = run_patching(model, data, acts, direction, runs=runs)
        assert shared.to_dict() == own.to_dict()
    ref_cache = cache_run(model, reference)[1]
    for mode in ("mean", "resample"):
        own = run_ablation(model, data, reference, mode, ["attn_out"], torch.manual_seed(1))
        shared = run_ablation(
            model,
            data,
            reference,
            mode,
            ["attn_out"],
            torch.manual_seed(1),
            runs=runs,
            reference_cache=ref_cache,
        )
        for key, value in own["loss_increase"].items():
            assert torch.equal(shared["loss_increase"][key], value)
    direct_runs = cache_runs(model, data, direct_path_hooks(model.cfg))
    for direction in ("noise", "denoise"):
        own = direct_path_effects(model, data, "logit_diff", direction)
        assert direct_path_effects(model, data, "logit_diff", direction, runs=direct_runs) == own
    partial = cache_runs(model, data, {"hook_embed"})
    with pytest.raises(ValueError, match="has no activation"):
        direct_path_effects(model, data, runs=partial)
    with pytest.raises(ValueError, match="has no activation"):
        run_patching(model, data, ["resid_pre"], runs=partial)
    with pytest.raises(ValueError, match="logits have shape"):
        patch_sweep(
            model,
            data.corrupt[:3],
            runs.clean[1],
            "resid_pre",
            make_metric("logprob", data),
            target_run=runs.corrupt,
        )


def test_direct_path_shares_add_up_without_layernorm():
    """Without a final LayerNorm the logit difference is linear in the residual stream, so the
    direct-path effects add up to the total exactly."""
    model = perturbed({"normalization_type": None, "n_layers": 2, "n_heads": 2})
    data = make_patching_data(
        BinaryChain(0.3, 0.4), "flip", 16, 8, torch.Generator().manual_seed(5)
    )
    out = direct_path_effects(model, data, "logit_diff")
    assert abs(out["additivity_gap"]) < 1e-4
    assert sum(out["group_effects"].values()) == pytest.approx(out["total_effect"], abs=1e-4)
    assert set(out["effects"]) == {
        "embed",
        "L0H0",
        "L0H1",
        "L0.mlp_out",
        "L1H0",
        "L1H1",
        "L1.mlp_out",
    }


def test_benchmark_rows():
    rows = benchmark_patching(
        seq_len=12, layers=(1, 2), batch=2, acts=("resid_pre", "z"), device="cpu"
    )
    assert [r["name"] for r in rows] == [
        "resid_pre, L=1, N=12",
        "z, L=1, N=12",
        "resid_pre, L=2, N=12",
        "z, L=2, N=12",
    ]
    for row in rows:
        assert row["max_abs_diff"] < 1e-5 and row["batched_s"] > 0 and row["transformer_lens_s"] > 0
        assert re.fullmatch(
            r"patching \(\w+, L=\d, N=12\): batched vs transformer_lens: \d+\.\dx", format_row(row)
        )


def test_benchmark_resample_rows():
    rows = benchmark_patching(seq_len=10, layers=(1,), batch=2, corruptions=("resample",))
    assert [r["name"] for r in rows] == ["resid_pre, resample, L=1, N=10"]
    assert rows[0]["corruption"] == "resample" and rows[0]["max_abs_diff"] < 1e-5
    with pytest.raises(ValueError, match="unknown corruption"):
        benchmark_patching(seq_len=10, layers=(1,), corruptions=("noise",))
