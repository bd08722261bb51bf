"""The Markov transformer (issue 3): config, HookedTransformer names and shapes, tying, hooks,
attention windows, causality, losses, input errors, TransformerLens tools, named inits."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformer_lens import ActivationCache
from transformer_lens import patching as tl_patching
from transformer_lens.utilities import get_act_name

from training.chains import BinaryChain
from training.config import ModelConfig
from training.inits import apply_init, init_good, init_theta_pi
from training.model import MarkovTransformer
from training.references import stationary_marginal, unigram_loss


def tiny(**overrides) -> ModelConfig:
    """A small untied-by-request config; init_range 0.5 so that every path carries signal."""
    base = dict(d_vocab=3, n_ctx=16, n_layers=2, n_heads=2, d_model=8, init_range=0.5)
    base.update(overrides)
    return ModelConfig(**base)


def tokens_for(cfg: ModelConfig, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.d_vocab, (batch, length), generator=gen)


def flip(tokens: torch.Tensor, pos, d_vocab: int) -> torch.Tensor:
    """A copy of `tokens` with the token at `pos` (int or slice) replaced by another id."""
    out = tokens.clone()
    out[:, pos] = (out[:, pos] + 1) % d_vocab
    return out


# Configurations that exercise every architectural switch.
CONFIGS = {
    "paper": dict(n_layers=1, n_heads=1, tie_embeddings=True),
    "untied_2L2H_biases": dict(tie_embeddings=False, ln_bias=True, linear_bias=True),
    "attn_only": dict(attn_only=True, n_layers=3),
    "no_ln": dict(normalization_type=None),
    "no_pos": dict(positional_embedding_type="none"),
    "relu_window": dict(act_fn="relu", attn_window=2),
    "per_layer_windows": dict(n_layers=3, attn_window=[1, None, 0]),
    "d_head_not_d_model_over_heads": dict(n_heads=3, d_head=5, d_mlp=12),
}


@pytest.fixture(params=sorted(CONFIGS))
def any_cfg(request) -> ModelConfig:
    return tiny(**CONFIGS[request.param])


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_json_round_trip(name):
    cfg = tiny(**CONFIGS[name])
    back = ModelConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()
    assert "device" not in cfg.to_dict()


def test_paper_preset_matches_reference_section_3():
    cfg = ModelConfig.paper()
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_head) == (8, 1, 1, 8)
    assert cfg.d_mlp == 4 * cfg.d_model and cfg.act_fn == "gelu" and not cfg.attn_only
    assert cfg.normalization_type == "LN" and cfg.ln_bias is False
    assert cfg.linear_bias is False and cfg.unembed_bias is True
    assert cfg.positional_embedding_type == "standard" and cfg.tie_embeddings is True
    assert cfg.attn_window is None and cfg.init == "paper" and cfg.init_range == 0.02
    assert ModelConfig.paper(tie_embeddings=False).tie_embeddings is False
    model = MarkovTransformer(cfg, seed=0)
    names = set(model.state_dict())
    assert not any(n.endswith(("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out")) for n in names)
    assert not any(n.endswith(".b") for n in names)  # LayerNorm without bias
    assert "unembed.b_U" in names and "unembed.W_U" not in names  # bias kept, W_U tied
    # nanoGPT's MLP uses the exact (erf) GELU
    x = torch.linspace(-3, 3, 7)
    assert torch.equal(model.blocks[0].mlp.act(x), F.gelu(x))


def test_paper_init_statistics():
    """N(0, 0.02) everywhere, N(0, 0.02 / sqrt(2 L)) on W_O and W_out; LN w = 1; biases 0."""
    cfg = ModelConfig.paper(
        d_vocab=64, n_ctx=256, d_model=128, n_layers=4, n_heads=4, tie_embeddings=False
    )
    model = MarkovTransformer(cfg, seed=0)
    resid_std = 0.02 / math.sqrt(2 * cfg.n_layers)
    groups = {"0.02": [], "resid": []}
    for name, p in model.named_parameters():
        leaf = name.split(".")[-1]
        if leaf in ("W_O", "W_out"):
            groups["resid"].append(p.flatten())
        elif leaf.startswith("W_"):
            groups["0.02"].append(p.flatten())
        elif leaf == "w":
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            assert torch.equal(p, torch.zeros_like(p)), name
    for key, want in (("0.02", 0.02), ("resid", resid_std)):
        values = torch.cat(groups[key])
        assert values.numel() > 50_000
        assert abs(values.std().item() / want - 1) < 0.02, key
        assert abs(values.mean().item()) < 5 * want / math.sqrt(values.numel())
    # seeded: same seed, same weights; other seed, other weights
    again = MarkovTransformer(cfg, seed=0)
    other = MarkovTransformer(cfg, seed=1)
    assert torch.equal(again.blocks[2].mlp.W_in, model.blocks[2].mlp.W_in)
    assert not torch.equal(other.blocks[2].mlp.W_in, model.blocks[2].mlp.W_in)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(d_model=-8), "d_model must be a positive integer, got -8"),
        (dict(n_layers=0), "n_layers must be a positive integer, got 0"),
        (dict(n_heads=0), "n_heads must be a positive integer, got 0"),
        (dict(d_vocab=-2), "d_vocab must be a positive integer"),
        (dict(d_vocab=1), "d_vocab must be at least 2"),
        (dict(n_ctx=0), "n_ctx must be a positive integer"),
        (dict(d_mlp=-1), "d_mlp must be a positive integer"),
        (dict(n_heads=True), "n_heads must be a positive integer, got True"),
        (dict(d_model=8.0), "d_model must be a positive integer, got 8.0"),
        (dict(act_fn="swish"), "act_fn must be one of .*'gelu'.*got 'swish'"),
        (dict(normalization_type="RMS"), "normalization_type must be one of"),
        (dict(positional_embedding_type="rotary"), "positional_embedding_type must be one of"),
        (dict(init="xavier"), "init must be one of"),
        (dict(init_range=0.0), "init_range must be > 0"),
        (dict(n_layers=2, attn_window=[1, 2, 3]), "attn_window lists 3 values but n_layers=2"),
        (dict(attn_window=-1), "attn_window values must be None .* got -1"),
        (dict(n_layers=2, attn_window=[1, -3]), "got -3"),
        (dict(attn_window=1.5), "got 1.5"),
        (dict(d_model=10, n_heads=4), "d_model=10 is not divisible by n_heads=4"),
    ],
)
def test_bad_configs_raise_clear_errors(overrides, message):
    base = dict(d_vocab=2, n_ctx=8, n_layers=1, n_heads=1, d_model=8)
    base.update(overrides)
    with pytest.raises(ValueError, match=message):
        ModelConfig(**base)


def test_from_dict_rejects_unknown_keys_and_non_objects():
    d = ModelConfig.paper().to_dict()
    d["dmodel"] = 8
    with pytest.raises(ValueError, match=r"unknown model config keys \['dmodel'\]"):
        ModelConfig.from_dict(d)
    with pytest.raises(ValueError, match="must be a JSON object"):
        ModelConfig.from_dict([1, 2])


def test_d_head_given_explicitly_allows_any_head_count():
    cfg = ModelConfig(d_model=10, n_heads=4, d_head=3)
    assert cfg.d_head == 3 and cfg.d_mlp == 40


# --- parameter names and shapes --------------------------------------------------------------


def hooked_transformer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The HookedTransformer state dict (every bias present) for `cfg`, untied, with LN."""
    V, C, D, H, Dh, M = cfg.d_vocab, cfg.n_ctx, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    out = {"embed.W_E": (V, D), "pos_embed.W_pos": (C, D)}
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        out.update({f"{b}.ln1.w": (D,), f"{b}.ln1.b": (D,), f"{b}.ln2.w": (D,), f"{b}.ln2.b": (D,)})
        for m in "QKV":
            out[f"{b}.attn.W_{m}"] = (H, D, Dh)
            out[f"{b}.attn.b_{m}"] = (H, Dh)
        out[f"{b}.attn.W_O"] = (H, Dh, D)
        out[f"{b}.attn.b_O"] = (D,)
        out.update({f"{b}.mlp.W_in": (D, M), f"{b}.mlp.b_in": (M,)})
        out.update({f"{b}.mlp.W_out": (M, D), f"{b}.mlp.b_out": (D,)})
    out.update({"ln_final.w": (D,), "ln_final.b": (D,)})
    out.update({"unembed.W_U": (D, V), "unembed.b_U": (V,)})
    return out


def shapes(tensors) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in dict(tensors).items()}


def test_parameter_names_and_shapes_are_hooked_transformers():
    cfg = tiny(n_heads=2, d_head=3, d_mlp=20, tie_embeddings=False, ln_bias=True, linear_bias=True)
    model = MarkovTransformer(cfg, seed=0)
    want = hooked_transformer_shapes(cfg)
    assert shapes(model.state_dict()) == want
    assert shapes(model.named_parameters()) == want  # parameters carry the same names
    assert shapes(model.hooked_state_dict()) == want
    # the state dict round-trips through the HookedTransformer key unembed.W_U
    clone = MarkovTransformer(cfg, seed=1)
    clone.load_state_dict(model.state_dict(), strict=True)
    toks = tokens_for(cfg, 2, 16)
    assert torch.equal(clone(toks), model(toks))


def test_disabled_biases_are_zero_buffers_outside_the_state_dict():
    cfg = tiny(tie_embeddings=False)  # ln_bias=False, linear_bias=False
    model = MarkovTransformer(cfg, seed=0)
    full = hooked_transformer_shapes(cfg)
    disabled = {
        k for k in full if k.split(".")[-1] in ("b", "b_Q", "b_K", "b_V", "b_O", "b_in", "b_out")
    }
    assert shapes(model.state_dict()) == {k: v for k, v in full.items() if k not in disabled}
    hooked = model.hooked_state_dict()
    assert shapes(hooked) == full  # written out for HookedTransformer-format consumers
    for k in disabled:
        assert torch.equal(hooked[k], torch.zeros(full[k])), k
    # ... and the model still exposes them as attributes, as HookedTransformer does
    assert model.blocks[0].attn.b_Q.shape == (2, 4) and model.blocks[1].mlp.b_out.shape == (8,)


def test_unembed_bias_off():
    cfg = tiny(unembed_bias=False)
    model = MarkovTransformer(cfg, seed=0)
    assert "unembed.b_U" not in model.state_dict()
    assert torch.equal(model.unembed.b_U, torch.zeros(cfg.d_vocab))
    assert torch.equal(model.hooked_state_dict()["unembed.b_U"], torch.zeros(cfg.d_vocab))


# --- tying ----------------------------------------------------------------------------------


def test_tied_unembedding_is_one_parameter():
    cfg = tiny(tie_embeddings=True)
    model = MarkovTransformer(cfg, seed=0)
    assert torch.equal(model.W_U, model.W_E.T)
    assert model.W_U.data_ptr() == model.W_E.data_ptr()  # a view, not a copy
    assert "unembed.W_U" not in model.state_dict()
    assert sum(1 for n in model.state_dict() if n in ("embed.W_E", "unembed.W_U")) == 1
    names = [n for n, _ in model.named_parameters()]
    assert "embed.W_E" in names and not any("W_U" in n for n in names)
    untied = MarkovTransformer(tiny(tie_embeddings=False), seed=0)
    n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert n_params == sum(p.numel() for p in untied.parameters()) - cfg.d_vocab * cfg.d_model
    assert model.hooked_state_dict()["unembed.W_U"].shape == (cfg.d_model, cfg.d_vocab)


def test_tied_gradient_is_the_sum_of_embedding_and_unembedding_gradients():
    tied = MarkovTransformer(tiny(tie_embeddings=True), seed=0)
    untied = MarkovTransformer(tiny(tie_embeddings=False), seed=0)
    state = tied.state_dict()
    state["unembed.W_U"] = tied.W_U.detach().clone()
    untied.load_state_dict(state, strict=True)
    toks = tokens_for(tied.cfg, 4, 16)
    tied(toks, return_type="loss").backward()
    untied(toks, return_type="loss").backward()
    expected = untied.embed.W_E.grad + untied.unembed.W_U.grad.T
    torch.testing.assert_close(tied.embed.W_E.grad, expected, rtol=1e-5, atol=1e-7)


def test_tie_survives_adamw_dtype_and_device_moves():
    model = MarkovTransformer(tiny(tie_embeddings=True), seed=0)
    before = model.W_E.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    toks = tokens_for(model.cfg, 4, 16)
    for _ in range(3):
        opt.zero_grad()
        model(toks, return_type="loss").backward()
        opt.step()
    assert not torch.equal(model.W_E, before)
    assert torch.equal(model.W_U, model.W_E.T)
    assert model.W_U.data_ptr() == model.W_E.data_ptr()
    n_params = len(list(model.parameters()))
    assert sum(len(g["params"]) for g in opt.param_groups) == n_params

    model.to(torch.float64)
    assert model.W_U.dtype == torch.float64 and model.W_U.data_ptr() == model.W_E.data_ptr()
    assert model(toks).dtype == torch.float64
    model.to(torch.float32)
    assert torch.equal(model.W_U, model.W_E.T)

    copied = copy.deepcopy(model)
    assert copied.W_U.data_ptr() == copied.W_E.data_ptr() != model.W_E.data_ptr()

    targets = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in targets:
        moved = MarkovTransformer(tiny(tie_embeddings=True), seed=0).to(device)
        assert moved.W_U.device.type == device and moved.cfg.device.startswith(device)
        assert len(list(moved.parameters())) == n_params
        if device != "meta":
            assert moved.W_U.data_ptr() == moved.W_E.data_ptr()
            assert moved(toks.to(device)).device.type == device


# --- hooks ------------------------------------------------------------------------------------


def expected_hooks(cfg: ModelConfig, batch: int, pos: int) -> dict[str, tuple[int, ...]]:
    B, P, D, H, Dh, M = batch, pos, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    ln = cfg.normalization_type == "LN"
    out = {"hook_embed": (B, P, D)}
    if cfg.positional_embedding_type == "standard":
        out["hook_pos_embed"] = (B, P, D)
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        out[f"{b}.hook_resid_pre"] = (B, P, D)
        if ln:
            out[f"{b}.ln1.hook_scale"] = (B, P, 1)
            out[f"{b}.ln1.hook_normalized"] = (B, P, D)
        for name in ("q", "k", "v", "z"):
            out[f"{b}.attn.hook_{name}"] = (B, P, H, Dh)
        out[f"{b}.attn.hook_attn_scores"] = (B, H, P, P)
        out[f"{b}.attn.hook_pattern"] = (B, H, P, P)
        if cfg.use_attn_result:
            out[f"{b}.attn.hook_result"] = (B, P, H, D)
        out[f"{b}.hook_attn_out"] = (B, P, D)
        if not cfg.attn_only:
            out[f"{b}.hook_resid_mid"] = (B, P, D)
            if ln:
                out[f"{b}.ln2.hook_scale"] = (B, P, 1)
                out[f"{b}.ln2.hook_normalized"] = (B, P, D)
            out[f"{b}.mlp.hook_pre"] = (B, P, M)
            out[f"{b}.mlp.hook_post"] = (B, P, M)
            out[f"{b}.hook_mlp_out"] = (B, P, D)
        out[f"{b}.hook_resid_post"] = (B, P, D)
    if ln:
        out["ln_final.hook_scale"] = (B, P, 1)
        out["ln_final.hook_normalized"] = (B, P, D)
    return out


@pytest.mark.parametrize("use_attn_result", [False, True])
def test_hook_names_and_shapes(any_cfg, use_attn_result):
    model = MarkovTransformer(any_cfg, seed=0)
    model.set_use_attn_result(use_attn_result)
    toks = tokens_for(any_cfg, 3, 11)
    logits, cache = model.run_with_cache(toks)
    assert isinstance(cache, ActivationCache)
    assert shapes(cache.cache_dict) == expected_hooks(model.cfg, 3, 11)
    # hooks are identities: the cached run is the explicit branch, bit for bit; the
    # default (fused) branch computes the same function
    explicit = MarkovTransformer(any_cfg, seed=0)
    explicit.set_use_attn_result(use_attn_result)
    explicit.set_attention_backend("explicit")
    for ln in [m for m in explicit.modules() if hasattr(m, "hook_scale")]:
        ln.hook_scale.add_hook(lambda t, hook: t)  # the LayerNorm's explicit branch too
    assert torch.equal(logits, explicit(toks))
    torch.testing.assert_close(logits, model(toks), rtol=1e-5, atol=1e-5)
    # the residual stream adds up as in HookedTransformer
    for layer in range(any_cfg.n_layers):
        b = f"blocks.{layer}"
        pre, post = cache[f"{b}.hook_resid_pre"], cache[f"{b}.hook_resid_post"]
        if any_cfg.attn_only:
            torch.testing.assert_close(post, pre + cache[f"{b}.hook_attn_out"])
        else:
            mid = cache[f"{b}.hook_resid_mid"]
            torch.testing.assert_close(mid, pre + cache[f"{b}.hook_attn_out"])
            torch.testing.assert_close(post, mid + cache[f"{b}.hook_mlp_out"])
    if use_attn_result:
        b0 = model.blocks[0].attn.b_O
        summed = cache["blocks.0.attn.hook_result"].sum(dim=2) + b0
        torch.testing.assert_close(summed, cache["blocks.0.hook_attn_out"])


def test_result_hook_only_fires_with_use_attn_result():
    model = MarkovTransformer(tiny(), seed=0)
    toks = tokens_for(model.cfg, 2, 8)
    without = model(toks)
    model.set_use_attn_result(True)
    assert model.cfg.use_attn_result is True
    torch.testing.assert_close(model(toks), without, rtol=1e-5, atol=1e-6)


def test_ln_hooks_hold_scale_and_normalized_input():
    model = MarkovTransformer(tiny(ln_bias=True), seed=0)
    with torch.no_grad():
        model.ln_final.w.mul_(3.0)
        model.ln_final.b.add_(0.7)
    _, cache = model.run_with_cache(tokens_for(model.cfg, 2, 8))
    x = cache["blocks.1.hook_resid_post"]
    centred = x - x.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + model.cfg.ln_eps).sqrt()
    torch.testing.assert_close(cache["ln_final.hook_scale"], scale)
    # before the affine map, as TransformerBridge's LayerNorm hooks (see test_interop)
    torch.testing.assert_close(cache["ln_final.hook_normalized"], centred / scale)


# --- attention windows and causality --------------------------------------------------------


def allowed_mask(n: int, window: int | None) -> torch.Tensor:
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    ok = j <= i
    return ok if window is None else ok & (j >= i - window)


@pytest.mark.parametrize("window", [None, 0, 1, 3])
def test_window_mask_is_applied_to_scores_before_softmax(window):
    model = MarkovTransformer(tiny(attn_window=window), seed=0)
    _, cache = model.run_with_cache(tokens_for(model.cfg, 2, 12))
    ok = allowed_mask(12, window)
    for layer in range(model.cfg.n_layers):
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert torch.isneginf(scores[..., ~ok]).all() and torch.isfinite(scores[..., ok]).all()
        torch.testing.assert_close(pattern, scores.softmax(-1))
        assert (pattern[..., ~ok] == 0).all() and (pattern[..., ok] > 0).all()
        if window == 0:
            assert torch.equal(pattern, torch.eye(12).expand_as(pattern))


def test_window_zero_sees_only_the_current_token():
    """M = 0 in every layer: the logits at n are a function of x_n and n alone."""
    cfg = tiny(attn_window=0, n_layers=3)
    model = MarkovTransformer(cfg, seed=0)
    toks = tokens_for(cfg, 4, 16)
    other = flip(toks, slice(0, 15), cfg.d_vocab)
    torch.testing.assert_close(model(other)[:, 15], model(toks)[:, 15], rtol=0, atol=1e-6)


def test_editing_attn_scores_in_a_hook_changes_the_output():
    model = MarkovTransformer(tiny(attn_window=2), seed=0)
    toks = tokens_for(model.cfg, 2, 10)
    # the same (explicit) attention branch as the edited runs, so that only the edit differs
    clean = model.run_with_hooks(
        toks, fwd_hooks=[("blocks.0.attn.hook_attn_scores", lambda t, hook: t)]
    )

    def boost(scores, hook):
        scores = scores.clone()
        scores[:, :, 7, 5] += 5.0  # query 7, key 5: inside the window
        return scores

    edited = model.run_with_hooks(toks, fwd_hooks=[("blocks.0.attn.hook_attn_scores", boost)])
    assert (edited[:, 7] - clean[:, 7]).abs().max() > 1e-2
    torch.testing.assert_close(edited[:, :7], clean[:, :7], rtol=0, atol=1e-6)

    def open_window(scores, hook):  # un-masking a key outside the window also acts
        scores = scores.clone()
        scores[:, :, 9, 0] = 0.0
        return scores

    opened = model.run_with_hooks(toks, fwd_hooks=[("blocks.0.attn.hook_attn_scores", open_window)])
    assert (opened[:, 9] - clean[:, 9]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "n_layers, window, field",
    [(1, 3, 3), (1, 1, 1), (2, 2, 4), (3, 1, 3), (3, [1, 3, 0], 4), (2, [None, 1], None)],
)
def test_tokens_outside_the_receptive_field_never_change_the_output(n_layers, window, field):
    """Position n depends on x_j only for n - field <= j <= n, field = sum of the windows."""
    cfg = tiny(n_layers=n_layers, attn_window=window, n_ctx=20)
    model = MarkovTransformer(cfg, seed=0)
    n = 19
    toks = tokens_for(cfg, 8, 20)
    base = model(toks)[:, n]
    if field is not None:
        outside = model(flip(toks, slice(0, n - field), cfg.d_vocab))[:, n]
        torch.testing.assert_close(outside, base, rtol=0, atol=1e-6)
    edge = 0 if field is None else n - field  # the farthest token that still matters
    inside = model(flip(toks, edge, cfg.d_vocab))[:, n]
    assert (inside - base).abs().max() > 1e-4


def test_changing_a_future_token_never_changes_earlier_logits(any_cfg):
    P = 12
    toks = tokens_for(any_cfg, 1, P)
    model = MarkovTransformer(any_cfg, seed=0)
    # row t of the batch has token t changed
    batch = toks.repeat(P, 1)
    idx = torch.arange(P)
    batch[idx, idx] = (batch[idx, idx] + 1) % any_cfg.d_vocab
    # the unchanged sequence in a batch of the same shape: batch 1 is another shape class, which
    # `auto` may time onto the other attention path (kernel or SDPA, equal within rounding)
    base = model(toks.repeat(P, 1))
    changed = model(batch)
    earlier = torch.arange(P)[None, :] < idx[:, None]  # [t, n]: n < t
    diff = (changed - base).abs().amax(-1)
    assert diff[earlier].max() <= 1e-6
    assert (diff[idx, idx] > 1e-4).all()  # the changed position itself does see it


# --- losses and input checks ----------------------------------------------------------------


def test_return_types_match_cross_entropy():
    model = MarkovTransformer(tiny(), seed=0)
    toks = tokens_for(model.cfg, 4, 16)
    logits = model(toks)
    assert logits.shape == (4, 16, 3) and torch.equal(model(toks, return_type=None), logits)
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), toks[:, 1:], reduction="none")
    got = model(toks, return_type="per_token_loss")
    assert got.shape == (4, 15)
    torch.testing.assert_close(got, per_token)
    torch.testing.assert_close(model(toks, return_type="loss"), per_token.mean())
    both_logits, both_loss = model(toks, return_type="both")
    assert torch.equal(both_logits, logits)
    torch.testing.assert_close(both_loss, per_token.mean())
    torch.testing.assert_close(model(toks[0]), logits[:1])  # 1-D input: one sequence
    with pytest.raises(ValueError, match="return_type must be .* got 'probs'"):
        model(toks, return_type="probs")


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: torch.zeros(1, 17, dtype=torch.long),
            "sequence length 17 is longer than n_ctx=16",
        ),
        (lambda: torch.tensor([[0, 1, 3]]), "token id 3 is outside the vocabulary 0..2"),
        (lambda: torch.tensor([[0, -1, 2]]), "token id -1 is outside the vocabulary 0..2"),
        (lambda: torch.zeros(1, 4), "integer tensor, got dtype torch.float32"),
        (lambda: torch.zeros(1, 4, dtype=torch.bool), "integer tensor, got dtype torch.bool"),
        (lambda: torch.zeros(2, 3, 4, dtype=torch.long), r"shape \[batch, pos\], got \(2, 3, 4\)"),
        (lambda: torch.tensor(1), r"shape \[batch, pos\], got \(\)"),
        (lambda: [[0, 1]], "must be a torch.Tensor of ids, got list"),
    ],
)
def test_bad_tokens_raise_clear_errors(make, message):
    model = MarkovTransformer(tiny(), seed=0)
    with pytest.raises(ValueError, match=message):
        model(make())


# --- TransformerLens tools on the real library ---------------------------------------------


@pytest.fixture
def tl_model() -> MarkovTransformer:
    cfg = tiny(n_layers=2, n_heads=2, tie_embeddings=False, linear_bias=True)
    model = MarkovTransformer(cfg, seed=0)
    with torch.no_grad():  # non-zero biases, so that the tools must account for them
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    return model.eval()


def test_get_act_name_resolves_in_the_cache(tl_model):
    tl_model.set_use_attn_result(True)
    _, cache = tl_model.run_with_cache(tokens_for(tl_model.cfg, 2, 8))
    names = [get_act_name(n) for n in ("embed", "pos_embed", "scale", "normalized")]
    for layer in range(tl_model.cfg.n_layers):
        for short in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q", "k", "v"):
            names.append(get_act_name(short, layer))
        for short in ("attn_scores", "pattern", "z", "result", "pre", "post"):
            names.append(get_act_name(short, layer))
        for ln in ("ln1", "ln2"):
            names += [get_act_name("scale", layer, ln), get_act_name("normalized", layer, ln)]
    for name in names:
        assert name in cache.cache_dict, name
        assert torch.equal(cache[name], cache.cache_dict[name])
    assert torch.equal(cache["resid_pre", 1], cache["blocks.1.hook_resid_pre"])  # tuple keys


def test_accumulated_and_decomposed_residual_streams(tl_model):
    toks = tokens_for(tl_model.cfg, 3, 10)
    logits, cache = tl_model.run_with_cache(toks)
    L = tl_model.cfg.n_layers
    final = cache[f"blocks.{L - 1}.hook_resid_post"]
    acc, labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
    assert acc.shape == (2 * L + 1, 3, 10, 8) and len(labels) == 2 * L + 1
    torch.testing.assert_close(acc[-1], final)
    torch.testing.assert_close(acc[1], cache["blocks.0.hook_resid_mid"])
    # logit lens on the last stream reproduces the logits
    normed = cache.accumulated_resid(apply_ln=True)[-1]
    ln = tl_model.ln_final
    torch.testing.assert_close(tl_model.unembed(normed * ln.w + ln.b), logits, rtol=1e-4, atol=1e-5)
    parts, part_labels = cache.decompose_resid(return_labels=True)
    assert part_labels == [
        "embed",
        "pos_embed",
        "0_attn_out",
        "0_mlp_out",
        "1_attn_out",
        "1_mlp_out",
    ]
    torch.testing.assert_close(parts.sum(0), final, rtol=1e-5, atol=1e-5)


def test_stack_head_results(tl_model):
    tl_model.set_use_attn_result(True)
    _, cache = tl_model.run_with_cache(tokens_for(tl_model.cfg, 3, 10))
    heads, labels = cache.stack_head_results(return_labels=True)
    assert labels == ["L0H0", "L0H1", "L1H0", "L1H1"] and heads.shape == (4, 3, 10, 8)
    for layer in range(2):
        summed = heads[2 * layer : 2 * layer + 2].sum(0) + tl_model.blocks[layer].attn.b_O
        torch.testing.assert_close(
            summed, cache[f"blocks.{layer}.hook_attn_out"], rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("ln_bias", [False, True])
@pytest.mark.parametrize("normalization_type", ["LN", None])
def test_logit_attrs_sum_to_the_logit_difference(tl_model, ln_bias, normalization_type):
    cfg = tiny(
        tie_embeddings=False,
        linear_bias=True,
        ln_bias=ln_bias,
        normalization_type=normalization_type,
    )
    model = MarkovTransformer(cfg, seed=0)
    model.load_state_dict(
        {k: v for k, v in tl_model.state_dict().items() if k in model.state_dict()}, strict=False
    )
    with torch.no_grad():
        model.unembed.b_U.copy_(torch.tensor([0.3, -0.2, 0.5]))
        if ln_bias and normalization_type:
            model.ln_final.b.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    model.eval()
    toks = tokens_for(cfg, 5, 10)
    logits, cache = model.run_with_cache(toks)
    correct, wrong = toks[:, -1], (toks[:, -1] + 1) % cfg.d_vocab
    stack = cache.decompose_resid(pos_slice=-1)
    attrs = cache.logit_attrs(stack, tokens=correct, incorrect_tokens=wrong, pos_slice=-1)
    assert attrs.shape == (stack.shape[0], 5)
    rows = torch.arange(5)
    b_U = model.unembed.b_U
    target = logits[rows, -1, correct] - logits[rows, -1, wrong] - (b_U[correct] - b_U[wrong])
    if ln_bias and normalization_type:  # the final LN bias is not a component either
        W_U = model.W_U
        target = target - model.ln_final.b @ (W_U[:, correct] - W_U[:, wrong])
    assert (attrs.sum(0) - target).abs().max() < 1e-5


def test_activation_patching_runs_and_makes_sense(tl_model):
    cfg = tl_model.cfg
    toks = tokens_for(cfg, 4, 8)
    corrupt_pos = 5
    corrupted = flip(toks, corrupt_pos, cfg.d_vocab)
    answer, other = toks[:, -1], (toks[:, -1] + 1) % cfg.d_vocab
    rows = torch.arange(4)

    def metric(logits):
        return (logits[rows, -1, answer] - logits[rows, -1, other]).mean()

    clean_logits, clean_cache = tl_model.run_with_cache(toks)
    clean, corrupt = metric(clean_logits), metric(tl_model(corrupted))
    assert (clean - corrupt).abs() > 1e-3

    resid = tl_patching.get_act_patch_resid_pre(tl_model, corrupted, clean_cache, metric)
    assert resid.shape == (cfg.n_layers, 8)
    # layer 0, the corrupted position: the whole clean run is restored
    torch.testing.assert_close(resid[0, corrupt_pos], clean, rtol=0, atol=1e-5)
    # layer 0 elsewhere: nothing changes; before the corrupted position: nothing at any layer
    others = [p for p in range(8) if p != corrupt_pos]
    torch.testing.assert_close(resid[0, others], corrupt.expand(7), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        resid[:, :corrupt_pos], corrupt.expand(2, corrupt_pos), rtol=0, atol=1e-5
    )

    attn = tl_patching.get_act_patch_attn_out(tl_model, corrupted, clean_cache, metric)
    mlp = tl_patching.get_act_patch_mlp_out(tl_model, corrupted, clean_cache, metric)
    assert attn.shape == mlp.shape == (cfg.n_layers, 8)
    torch.testing.assert_close(
        attn[:, :corrupt_pos], corrupt.expand(2, corrupt_pos), rtol=0, atol=1e-5
    )

    by_pos = tl_patching.get_act_patch_attn_head_out_by_pos(
        tl_model, corrupted, clean_cache, metric
    )
    assert by_pos.shape == (cfg.n_layers, 8, cfg.n_heads)
    every = tl_patching.get_act_patch_attn_head_all_pos_every(
        tl_model, corrupted, clean_cache, metric
    )
    assert every.shape == (5, cfg.n_layers, cfg.n_heads) and torch.isfinite(every).all()
    # patching every head's output (all positions) in the last layer = patching its attn_out
    both_heads = tl_model.run_with_hooks(
        corrupted,
        fwd_hooks=[(get_act_name("z", 1), lambda z, hook: clean_cache[hook.name])],
    )
    all_attn = tl_model.run_with_hooks(
        corrupted,
        fwd_hooks=[(get_act_name("attn_out", 1), lambda a, hook: clean_cache[hook.name])],
    )
    torch.testing.assert_close(metric(both_heads), metric(all_attn), rtol=0, atol=1e-5)
    # patching the same run into itself changes nothing
    same = tl_patching.get_act_patch_attn_out(tl_model, toks, clean_cache, metric)
    torch.testing.assert_close(same, clean.expand_as(same), rtol=0, atol=1e-5)


# --- named initialisations --------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        dict(tie_embeddings=True),
        dict(tie_embeddings=False),
        dict(tie_embeddings=False, n_layers=2, n_heads=2, linear_bias=True, ln_bias=True),
        dict(tie_embeddings=True, attn_only=True),
    ],
)
def test_theta_pi_predicts_the_stationary_marginal(overrides, gen):
    p, q = 0.5, 0.8
    chain = BinaryChain(p, q)
    pi = stationary_marginal(chain).float()
    torch.testing.assert_close(pi, torch.tensor([q, p]) / (p + q))
    cfg = ModelConfig.paper(n_ctx=128, init="theta_pi", **overrides)
    model = MarkovTransformer(cfg, seed=0, pi=pi)
    toks = chain.sample(64, 128, generator=gen)
    logits = model(toks)
    probs = logits.softmax(-1)
    torch.testing.assert_close(probs, pi.expand_as(probs), rtol=0, atol=1e-6)
    loss = model(toks, return_type="loss")
    exact = -pi.log()[toks[:, 1:]].mean()  # cross-entropy of pi on these very targets
    torch.testing.assert_close(loss, exact, rtol=0, atol=1e-5)
    assert abs(loss.item() - unigram_loss(chain)) < 0.02  # h(pi_1) = 0.666 nats
    # the structural zeros of docs/theory.md section 1
    assert torch.equal(model.W_E, torch.zeros_like(model.W_E))
    assert torch.equal(model.W_U, torch.zeros_like(model.W_U))
    for block in model.blocks:
        assert torch.equal(block.attn.W_O, torch.zeros_like(block.attn.W_O))
        if not cfg.attn_only:
            assert not block.mlp.W_in.any() and not block.mlp.W_out.any()
        assert block.attn.W_Q.std() > 0  # left at the paper init
    b_U = model.unembed.b_U
    torch.testing.assert_close(b_U[1] - b_U[0], torch.tensor(math.log(p / q)))


def test_theta_pi_is_a_stationary_point_in_expectation(gen):
    """The expected gradient at theta_pi vanishes: with many chain samples it is tiny next to
    the gradient at the paper init."""
    chain = BinaryChain(0.5, 0.8)
    pi = stationary_marginal(chain)
    toks = chain.sample(512, 64, generator=gen)

    def grad_norm(model):
        model.zero_grad()
        model(toks, return_type="loss").backward()
        return torch.cat([g.grad.flatten() for g in model.parameters()]).norm().item()

    paper = MarkovTransformer(ModelConfig.paper(n_ctx=64, init_range=0.5), seed=0)
    at_pi = MarkovTransformer(
        ModelConfig.paper(n_ctx=64, init_range=0.5, init="theta_pi"), seed=0, pi=pi
    )
    assert grad_norm(at_pi) < 0.05 * grad_norm(paper)


def test_good_init_sets_the_documented_values():
    cfg = ModelConfig.paper(n_ctx=32, init="good", tie_embeddings=False)
    model = MarkovTransformer(cfg, seed=0)
    assert (model.W_E == -1).all() and (model.pos_embed.W_pos == 0.5).all()
    assert (model.blocks[0].mlp.W_in == 2).all() and (model.blocks[0].mlp.W_out == -2).all()
    fresh = MarkovTransformer(dataclasses.replace(cfg, init="paper"), seed=0)
    for name in ("W_Q", "W_K", "W_V", "W_O"):
        assert torch.equal(getattr(model.blocks[0].attn, name), getattr(fresh.blocks[0].attn, name))
    assert torch.equal(model.W_U, fresh.W_U)  # untied W_U keeps its paper init
    tied = init_good(MarkovTransformer(ModelConfig.paper(n_ctx=32), seed=0))
    assert (tied.W_U == -1).all()  # through the tie


def test_apply_init_errors():
    model = MarkovTransformer(ModelConfig.paper(n_ctx=8), seed=0)
    assert apply_init(model, "paper") is model  # nothing to do
    with pytest.raises(ValueError, match="needs the chain's stationary marginal pi"):
        apply_init(model, "theta_pi")
    with pytest.raises(ValueError, match="unknown init 'zeros'"):
        apply_init(model, "zeros")
    with pytest.raises(ValueError, match=r"pi must have shape \(2,\)"):
        init_theta_pi(model, torch.tensor([0.2, 0.3, 0.5]))
    with pytest.raises(ValueError, match="positive probability vector"):
        init_theta_pi(model, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="positive probability vector"):
        init_theta_pi(model, torch.tensor([0.5, 0.6]))
    no_bias = MarkovTransformer(ModelConfig.paper(n_ctx=8, unembed_bias=False), seed=0)
    with pytest.raises(ValueError, match="needs the unembedding bias"):
        init_theta_pi(no_bias, torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(tie_embeddings=True),
        dict(tie_embeddings=False, n_layers=2, n_heads=2, linear_bias=True),
        dict(token_embedding="linear", normalization_type=None),
    ],
)
@pytest.mark.parametrize("init", ["good", "theta_pi"])
def test_the_model_applies_its_configs_init(init, overrides):
    """MarkovTransformer(cfg, seed, pi=pi) is the paper init of that seed followed by the
    named init of training.inits, parameter by parameter (issue 17)."""
    chain = BinaryChain(0.3, 0.6)
    pi = stationary_marginal(chain)
    paper_cfg = ModelConfig.paper(n_ctx=16, init_range=0.5, **overrides)
    model = MarkovTransformer(dataclasses.replace(paper_cfg, init=init), seed=0, pi=pi)
    named = init_good if init == "good" else lambda m: init_theta_pi(m, pi)
    expected = named(MarkovTransformer(paper_cfg, seed=0))
    want, got = expected.state_dict(), model.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert not torch.equal(model.W_E, MarkovTransformer(paper_cfg, seed=0).W_E)
    assert model.cfg.init == init
    if init == "theta_pi":  # it predicts pi whatever the context: its loss is H(pi)
        tokens = torch.randint(0, 2, (4, 16), generator=torch.Generator().manual_seed(0))
        log_probs = model(tokens).log_softmax(-1).double()
        torch.testing.assert_close(log_probs.exp(), pi.expand_as(log_probs), rtol=0, atol=1e-6)
        loss = -(pi * log_probs).sum(-1)  # the population loss at each position
        torch.testing.assert_close(
            loss, torch.full_like(loss, unigram_loss(chain)), atol=1e-6, rtol=0
        )


def test_theta_pi_without_pi_is_refused_and_pi_is_keyword_only():
    cfg = ModelConfig.paper(n_ctx=8, init="theta_pi")
    fix = r"MarkovTransformer\(cfg, pi=stationary_marginal\(chain\)\)"
    with pytest.raises(
        ValueError, match=f"init 'theta_pi' needs the chain's stationary marginal: {fix}"
    ):
        MarkovTransformer(cfg, seed=0)
    with pytest.raises(ValueError, match=r"pi must have shape \(2,\)"):
        MarkovTransformer(cfg, seed=0, pi=torch.tensor([0.2, 0.3, 0.5]))
    with pytest.raises(TypeError):
        MarkovTransformer(cfg, 0, torch.tensor([0.5, 0.5]))
    paper = ModelConfig.paper(n_ctx=8)  # the other inits ignore pi
    with_pi = MarkovTransformer(paper, seed=0, pi=torch.tensor([0.5, 0.5])).state_dict()
    without = MarkovTransformer(paper, seed=0).state_dict()
    assert all(torch.equal(with_pi[k], without[k]) for k in without)


@pytest.mark.parametrize("init", ["paper", "good", "theta_pi"])
def test_a_named_init_leaves_the_callers_config_alone(init):
    cfg = ModelConfig.paper(n_ctx=8, init=init)
    before = copy.deepcopy(cfg)
    model = MarkovTransformer(cfg, seed=0, pi=torch.tensor([0.4, 0.6], dtype=torch.float64))
    assert cfg == before and cfg.init == init
    assert model.cfg is not cfg and model.cfg == cfg
    assert all(block.cfg is model.cfg for block in model.blocks)  # one copy, shared


@pytest.mark.parametrize("init", ["good", "theta_pi"])
def test_models_whose_weights_are_replaced_are_built_without_the_named_init(init):
    """random_model (a paper-init control) and ensemble_logits (a skeleton for stacked
    weights) take any config, theta_pi included, without a pi."""
    from probes.controls import random_model
    from training.stacked import StackedWeights, ensemble_logits

    cfg = ModelConfig.paper(n_ctx=8, init=init)
    rnd = random_model(cfg, 3)
    paper = MarkovTransformer(dataclasses.replace(cfg, init="paper"), seed=3)
    assert rnd.cfg.init == "paper" and cfg.init == init
    assert all(torch.equal(p, q) for p, q in zip(rnd.parameters(), paper.parameters(), strict=True))
    model = MarkovTransformer(cfg, seed=0, pi=torch.tensor([0.4, 0.6], dtype=torch.float64))
    tokens = torch.randint(0, 2, (1, 3, 8), generator=torch.Generator().manual_seed(0))
    params = StackedWeights.from_models([model]).params
    torch.testing.assert_close(ensemble_logits(cfg, params, tokens), model(tokens[0])[None])


def test_linear_token_embedding_is_x_times_e():
    """token_embedding="linear" (the Local-to-Global simplified model): token 0 is the zero
    vector, token 1 is e, whatever row 0 of W_E holds; tied W_U = [0, e]^T."""
    cfg = ModelConfig.paper(n_ctx=8, token_embedding="linear", normalization_type=None)
    model = MarkovTransformer(cfg, seed=0)
    assert torch.equal(model.embed.W_E[0], torch.zeros(cfg.d_model))  # held at 0 from init
    with torch.no_grad():
        model.embed.W_E[0].fill_(5.0)  # ignored
    toks = torch.tensor([[0, 1, 1, 0]])
    _, cache = model.run_with_cache(toks)
    emb = cache["hook_embed"][0]
    assert torch.equal(emb[0], torch.zeros(cfg.d_model)) and torch.equal(emb[1], model.embed.W_E[1])
    assert torch.equal(model.W_U[:, 0], torch.zeros(cfg.d_model))
    with pytest.raises(ValueError, match="needs a binary vocabulary"):
        ModelConfig.paper(d_vocab=3, token_embedding="linear")
    with pytest.raises(ValueError, match="token_embedding must be one of"):
        ModelConfig.paper(token_embedding="scalar")


def test_good_init_means_what_it_meant_only_in_the_simplified_model():
    toks = torch.tensor([[0, 1, 0, 1, 1, 0, 0, 1]])
    table = apply_init(MarkovTransformer(ModelConfig.paper(n_ctx=8), seed=0), "good")
    _, c = table.run_with_cache(toks)
    # table + LayerNorm: both tokens embed to -1, LayerNorm maps the constant residual to 0
    normed = c["blocks.0.ln1.hook_normalized"][0]
    assert normed.abs().max() < 1e-3
    lin_cfg = ModelConfig.paper(n_ctx=8, token_embedding="linear", normalization_type=None)
    linear = apply_init(MarkovTransformer(lin_cfg, seed=0), "good")
    _, c = linear.run_with_cache(toks)
    resid = c["blocks.0.hook_resid_pre"][0]  # x * e + W_pos: token 1 adds -1 per entry
    assert torch.allclose(resid[1] - resid[0], torch.full((8,), -1.0))


def test_the_model_never_mutates_the_callers_config():
    cfg = tiny()
    before = cfg.to_dict()
    model = MarkovTransformer(cfg, seed=0).to(torch.float64).to("cpu")
    model.set_use_attn_result(True)
    assert cfg.to_dict() == before and model.cfg is not cfg
