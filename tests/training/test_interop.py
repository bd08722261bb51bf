"""Export to TransformerLens's own model (issues 3, 24): a TransformerBridge built by boot_native
and loaded through convert_tl_checkpoint computes the same logits (within 1e-5) and the same
activations under the same hook names (hook_attn_scores included: the export fixes TL 4.3's);
windows and tied models export; TransformerLens's own analyses (logit_attrs, detect_head,
to_str_tokens, generate) work on the processed export. Every hook mechanism (torch hooks,
nnsight) sees the explicit branch's values; the model's stacked weight API equals the bridge's."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from training.config import ModelConfig
from training.interop import (
    bridge_config,
    to_transformer_bridge,
    to_transformerlens,
    unsupported_features,
)
from training.model import MarkovTransformer


def randomised(cfg: ModelConfig, seed: int = 0) -> MarkovTransformer:
    """A model whose every parameter (biases and LayerNorm weights too) is far from its init.
    Without LayerNorm the perturbation is smaller, so that float32 logits stay O(10)."""
    model = MarkovTransformer(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    scale = 0.3 if cfg.normalization_type else 0.15
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def tokens(cfg: ModelConfig, batch: int = 4, length: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, cfg.d_vocab, (batch, length or cfg.n_ctx), generator=gen)


EXPRESSIBLE = {
    "untied_paper": dict(n_layers=1, n_heads=1),
    "ln_bias_linear_bias_2L2H": dict(ln_bias=True, linear_bias=True, n_layers=2, n_heads=2),
    "no_unembed_bias_3L": dict(unembed_bias=False, n_layers=3, n_heads=2),
    "attn_only": dict(attn_only=True, n_layers=2, n_heads=2),
    "no_ln": dict(normalization_type=None, n_layers=2),
    "no_positions": dict(positional_embedding_type="none", n_layers=2),
    "relu_odd_heads": dict(act_fn="relu", n_heads=3, d_head=5, d_mlp=20, n_layers=2),
}


def untied_cfg(**overrides) -> ModelConfig:
    base = dict(d_vocab=3, n_ctx=12, d_model=8, tie_embeddings=False, init_range=0.3)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.mark.parametrize("name", sorted(EXPRESSIBLE))
def test_bridge_gives_the_same_logits(name):
    cfg = untied_cfg(**EXPRESSIBLE[name])
    model = randomised(cfg)
    assert unsupported_features(cfg) == []
    bridge = to_transformer_bridge(model)
    assert isinstance(bridge, TransformerBridge) and not bridge.training
    toks = tokens(cfg)
    with torch.no_grad():
        ours, theirs = model(toks), bridge(toks)
    assert theirs.shape == ours.shape
    # float32, relative to the logits' scale: the two codes sum in different orders
    tol = 1e-5 * max(1.0, float(ours.abs().max()))
    assert (ours - theirs).abs().max() < tol
    with torch.no_grad():
        short = bridge(toks[:, :5])
    assert (short - ours[:, :5]).abs().max() < tol


def test_bridge_activations_match_under_the_same_hook_names():
    cfg = untied_cfg(ln_bias=True, linear_bias=True, n_layers=2, n_heads=2)
    model = randomised(cfg)
    bridge = to_transformer_bridge(model)
    toks = tokens(cfg)
    _, ours = model.run_with_cache(toks)
    _, theirs = bridge.run_with_cache(toks)
    shared = [k for k in ours.cache_dict if k in theirs.cache_dict]
    assert set(ours.cache_dict) - set(shared) == set()  # every one of our hooks exists there
    for key in shared:
        assert ours[key].shape == theirs[key].shape, key
        assert_close_masked(ours[key], theirs[key], 1e-5, key)


def assert_close_masked(a: torch.Tensor, b: torch.Tensor, tol: float, what: str = "") -> None:
    """Equal -inf entries (masked scores) and finite entries within tol."""
    assert torch.equal(a.isinf(), b.isinf()), what
    finite = ~a.isinf()
    assert (a[finite] - b[finite]).abs().max() < tol, what


def test_export_hook_attn_scores_are_the_pre_softmax_scores():
    """TL 4.3 fires hook_attn_scores on the pattern; the export fires it on the masked scores,
    in compatibility mode too (TransformerLens's own pattern is their softmax)."""
    cfg = untied_cfg(n_layers=2, n_heads=2, attn_window=[1, None])
    model = randomised(cfg)
    toks = tokens(cfg)
    _, ours = model.run_with_cache(toks)
    for bridge in (to_transformer_bridge(model), to_transformerlens(model)):
        _, theirs = bridge.run_with_cache(toks)
        for layer in range(cfg.n_layers):
            scores = theirs[f"blocks.{layer}.attn.hook_attn_scores"]
            assert scores.isinf().any()  # not the pattern: masked entries are -inf
            pattern = theirs[f"blocks.{layer}.attn.hook_pattern"]
            assert (scores.softmax(-1) - pattern).abs().max() < 1e-6
            if not bridge.compatibility_mode:
                assert_close_masked(ours[f"blocks.{layer}.attn.hook_attn_scores"], scores, 1e-5)


def test_bridge_weights_are_ours():
    cfg = untied_cfg(n_layers=2, n_heads=2, linear_bias=True)
    model = randomised(cfg)
    state = to_transformer_bridge(model).state_dict()
    assert torch.equal(state["embed.weight"], model.W_E)
    assert torch.equal(state["unembed.weight"], model.W_U.T)
    assert torch.equal(state["unembed.bias"], model.unembed.b_U)
    assert torch.equal(state["pos_embed.weight"], model.pos_embed.W_pos)
    W_Q = model.blocks[1].attn.W_Q  # [head, d_model, d_head] -> [(head d_head), d_model]
    assert torch.equal(state["blocks.1.attn.q.weight"], W_Q.permute(0, 2, 1).reshape(8, 8))
    assert torch.equal(state["blocks.0.mlp.in.weight"], model.blocks[0].mlp.W_in.T)
    assert torch.equal(state["blocks.0.ln1.bias"], torch.zeros(8))  # LN without bias: zeros


def test_float64_export():
    cfg = untied_cfg(n_layers=2, n_heads=2)
    model = randomised(cfg).to(torch.float64)
    bridge = to_transformer_bridge(model)
    toks = tokens(cfg)
    with torch.no_grad():
        theirs = bridge(toks)
    assert theirs.dtype == torch.float64
    assert (model(toks) - theirs).abs().max() < 1e-12


def test_export_leaves_the_global_rng_alone():
    model = randomised(untied_cfg())
    state = torch.get_rng_state()
    to_transformer_bridge(model)
    assert torch.equal(torch.get_rng_state(), state)


def test_tied_models_are_refused_unless_untie():
    cfg = ModelConfig.paper(n_ctx=12)
    model = randomised(cfg)
    with pytest.raises(ValueError, match="tie_embeddings=True: .*separate embedding"):
        to_transformer_bridge(model)
    bridge = to_transformer_bridge(model, untie=True)
    toks = tokens(cfg)
    with torch.no_grad():
        assert (model(toks) - bridge(toks)).abs().max() < 1e-5
    state = bridge.state_dict()
    assert torch.equal(state["unembed.weight"], state["embed.weight"])  # a copy of W_E


@pytest.mark.parametrize("window", [0, 3, [None, 2]])
def test_attention_windows_export_as_the_native_mask(window):
    n_layers = len(window) if isinstance(window, list) else 1
    cfg = untied_cfg(attn_window=window, n_layers=n_layers)
    model = randomised(cfg)
    assert unsupported_features(cfg) == []
    bridge = to_transformer_bridge(model)
    toks = tokens(cfg)
    with torch.no_grad():
        assert (model(toks) - bridge(toks)).abs().max() < 1e-5
    tied = randomised(ModelConfig.paper(n_ctx=8, attn_window=window, n_layers=n_layers))
    with pytest.raises(ValueError, match="tie_embeddings=True"):
        to_transformer_bridge(tied)


def test_bridge_config_mirrors_ours():
    cfg = untied_cfg(n_heads=3, d_head=5, d_mlp=20, ln_eps=1e-6, act_fn="relu", attn_only=True)
    bcfg = bridge_config(cfg)
    assert (bcfg.d_model, bcfg.n_heads, bcfg.d_head, bcfg.d_mlp) == (8, 3, 5, 20)
    assert (bcfg.n_ctx, bcfg.d_vocab, bcfg.n_layers) == (12, 3, 1)
    assert bcfg.eps == 1e-6 and bcfg.act_fn == "relu" and bcfg.attn_only
    assert bcfg.normalization_type == "LN" and bcfg.positional_embedding_type == "standard"
    assert bridge_config(untied_cfg(act_fn="gelu")).act_fn == "gelu"  # exact GELU, not gelu_new


# --- every hook mechanism sees the explicit branch (issue 24) ------------------------------
WATCHED_POINTS = ("blocks.0.attn.hook_pattern", "blocks.0.attn.hook_attn_scores",
                  "blocks.0.ln1.hook_scale", "ln_final.hook_normalized")  # fmt: skip


def fused_model() -> tuple[MarkovTransformer, torch.Tensor]:
    """float32 on the CPU, fused backend "auto": the branch that skips these points."""
    cfg = untied_cfg(n_layers=2, n_heads=2, n_ctx=16)
    return randomised(cfg), tokens(cfg)


@pytest.mark.parametrize("kind", ["forward", "forward_pre", "global_forward"])
def test_torch_hooks_fire_and_see_the_cache_values(kind):
    model, toks = fused_model()
    _, cache = model.run_with_cache(toks)
    modules = dict(model.named_modules())
    seen, handles = {}, []
    for name in WATCHED_POINTS:
        module = modules[name]
        if kind == "forward":
            hook = lambda m, args, out, name=name: seen.__setitem__(name, out.detach())  # noqa: E731
            handles.append(module.register_forward_hook(hook))
        elif kind == "forward_pre":
            hook = lambda m, args, name=name: seen.__setitem__(name, args[0].detach())  # noqa: E731
            handles.append(module.register_forward_pre_hook(hook))
    if kind == "global_forward":
        names = {modules[n]: n for n in WATCHED_POINTS}

        def record(module, args, out):
            if module in names:
                seen[names[module]] = out.detach()

        handles.append(torch.nn.modules.module.register_module_forward_hook(record))
    try:
        with torch.no_grad():
            logits = model(toks)
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(seen) == sorted(WATCHED_POINTS)
    for name in WATCHED_POINTS:  # later points: upstream layers may differ by fused rounding
        assert_close_masked(seen[name], cache[name], 1e-5, name)
    with torch.no_grad():
        assert (logits - model(toks)).abs().max() < 1e-5  # hooks removed: fused again, same


def test_a_backward_hook_fires_on_the_pattern():
    model, toks = fused_model()
    grads = []
    point = model.blocks[0].attn.hook_pattern
    handle = point.register_full_backward_hook(lambda m, gin, gout: grads.append(gout[0]))
    try:
        model(toks, return_type="loss").backward()
    finally:
        handle.remove()
    assert len(grads) == 1 and grads[0].shape == (4, 2, 16, 16)


def test_analysis_forces_the_explicit_branch_and_restores_the_backend():
    model, toks = fused_model()
    model.set_attention_backend("torch")
    calls = []
    fused_ln = torch.nn.functional.layer_norm
    import training.model as model_module

    def counting(*args, **kwargs):
        calls.append(1)
        return fused_ln(*args, **kwargs)

    model_module.F.layer_norm, saved = counting, model_module.F.layer_norm
    try:
        with torch.no_grad():
            model(toks)
            fused_calls = len(calls)
            with model.analysis() as same:
                assert same is model
                assert all(b.attn.backend == "explicit" for b in model.blocks)
                model(toks)
            assert len(calls) == fused_calls  # no fused layer_norm inside analysis()
    finally:
        model_module.F.layer_norm = saved
    assert fused_calls == 2 * 2 + 1  # ln1, ln2 per layer and ln_final outside
    assert all(b.attn.backend == "torch" for b in model.blocks)
    assert not any(getattr(m, "explicit", False) for m in model.modules())


def test_an_nnsight_trace_sees_the_cache_values():
    nnsight = pytest.importorskip("nnsight")
    model, toks = fused_model()
    _, cache = model.run_with_cache(toks)
    traced = nnsight.NNsight(model)
    with traced.trace(toks):  # nnsight asks for them in the order the model runs them
        scale = traced.blocks[0].ln1.hook_scale.output.save()
        pattern = traced.blocks[0].attn.hook_pattern.output.save()
    assert torch.equal(pattern, cache["blocks.0.attn.hook_pattern"])
    assert torch.equal(scale, cache["blocks.0.ln1.hook_scale"])


# --- HookedTransformer's weight API and weight processing ----------------------------------
STACKED = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "W_out", "b_in",
           "b_out", "W_E", "W_pos", "W_U", "b_U")  # fmt: skip


def test_stacked_weights_and_circuits_equal_the_exports():
    cfg = untied_cfg(n_layers=2, n_heads=3, d_head=4, linear_bias=True, ln_bias=True)
    model = randomised(cfg)
    bridge = to_transformer_bridge(model)
    for name in STACKED:
        ours, theirs = getattr(model, name), getattr(bridge, name)
        assert ours.shape == theirs.shape, name
        assert (ours - theirs).abs().max() < 1e-6, name
    assert model.W_Q.shape == (2, 3, 8, 4) and model.W_O.shape == (2, 3, 4, 8)
    for circuit in ("OV", "QK"):
        ours, theirs = getattr(model, circuit), getattr(bridge, circuit)
        assert type(ours).__name__ == "FactoredMatrix" and ours.shape == (2, 3, 8, 8)
        assert (ours.AB - theirs.AB).abs().max() < 1e-6, circuit
    head = model.blocks[1].attn  # layer 1, head 2 by hand
    assert torch.allclose(model.OV.AB[1, 2], head.W_V[2] @ head.W_O[2])
    assert torch.allclose(model.QK.AB[1, 2], head.W_Q[2] @ head.W_K[2].T)
    with pytest.raises(AttributeError, match="W_in"):
        randomised(untied_cfg(attn_only=True)).W_in  # noqa: B018


def test_process_weights_equals_compatibility_mode_and_keeps_the_log_probs():
    cfg = untied_cfg(n_layers=2, n_heads=2, linear_bias=True, ln_bias=True)
    model, toks = randomised(cfg), tokens(cfg)
    with torch.no_grad():
        before = model(toks).log_softmax(-1)
    bridge = to_transformerlens(model)  # enable_compatibility_mode()
    assert bridge.compatibility_mode
    model.process_weights()
    for name in STACKED:
        assert (getattr(model, name) - getattr(bridge, name)).abs().max() < 1e-6, name
    assert torch.equal(model.ln_final.w, torch.ones(8)) and torch.equal(
        model.ln_final.b, 0 * model.ln_final.b
    )
    assert model.W_U.mean(-1).abs().max() < 1e-6 and model.W_E.mean(-1).abs().max() < 1e-6
    with torch.no_grad():
        assert (model(toks).log_softmax(-1) - before).abs().max() < 1e-5
        assert (model(toks) - bridge(toks)).abs().max() < 1e-5


def test_each_processing_step_alone_keeps_the_log_probs():
    cfg = untied_cfg(n_layers=2, ln_bias=True, linear_bias=True)
    toks = tokens(cfg)
    for step in ("fold_layer_norm", "center_writing_weights", "center_unembed"):
        model = randomised(cfg)
        with torch.no_grad():
            before = model(toks).log_softmax(-1)
        getattr(model, step)()
        with torch.no_grad():
            assert (model(toks).log_softmax(-1) - before).abs().max() < 1e-5, step
    model = randomised(cfg)
    model.fold_layer_norm()
    assert torch.equal(model.blocks[0].ln1.w, torch.ones(8))


@pytest.mark.parametrize(
    "overrides, what",
    [
        (dict(tie_embeddings=True), "embed.W_E|unembed.W_U"),
        (dict(ln_bias=True, linear_bias=False), "b_Q|b_K|b_V|b_in"),
    ],
)
def test_processing_this_model_cannot_hold_is_refused_unchanged(overrides, what):
    model = randomised(untied_cfg(**overrides))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"cannot hold the processed weights .*({what})"):
        model.process_weights()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


# --- the front-door export: TransformerLens's own analyses are right -----------------------
def zoo_model(name: str) -> MarkovTransformer:
    from markov_lens.zoo import load_run

    return load_run(f"zoo/{name}").model(device="cpu")


@pytest.mark.parametrize("name", ["untied-p0.5-q0.8", "tied-p0.5-q0.8", "lag2-window2"])
def test_logit_attrs_sum_to_the_logit_difference(name):
    model = zoo_model(name)
    gen = torch.Generator().manual_seed(0)
    toks = torch.randint(0, 2, (4, 32), generator=gen)
    bridge = to_transformerlens(model)
    logits, cache = bridge.run_with_cache(toks)
    with torch.no_grad():  # same predictions as the model: log-probs within float error
        assert (logits.log_softmax(-1) - model(toks).log_softmax(-1)).abs().max() < 1e-5
    resid = cache.decompose_resid(layer=-1)
    attrs = cache.logit_attrs(resid, tokens=torch.tensor(1), incorrect_tokens=torch.tensor(0))
    bias = bridge.b_U[1] - bridge.b_U[0]
    diff = logits[..., 1] - logits[..., 0]
    assert (attrs.sum(0) + bias - diff).abs().max() < 1e-5
    raw = to_transformer_bridge(model, untie=True)  # what compatibility mode fixes
    raw_logits, raw_cache = raw.run_with_cache(toks)
    raw_attrs = raw_cache.logit_attrs(
        raw_cache.decompose_resid(layer=-1),
        tokens=torch.tensor(1),
        incorrect_tokens=torch.tensor(0),
    )
    raw_diff = raw_logits[..., 1] - raw_logits[..., 0]
    assert (raw_attrs.sum(0) + raw.b_U[1] - raw.b_U[0] - raw_diff).abs().max() > 1e-3


def test_tokenizer_detect_head_and_generate_on_a_zoo_model_and_its_export():
    from transformer_lens.head_detector import detect_head

    model = zoo_model("in-context-2layer")
    bridge = to_transformerlens(model)
    text = "0 1 1 0 1 0 0 1 1 1 0 1"
    for m in (model, bridge):
        assert m.to_str_tokens(m.to_tokens(text)) == text.split()
        assert m.to_str_tokens(torch.tensor([0, 1])) == ["0", "1"]
    ours = detect_head(model, text, "previous_token_head")
    theirs = detect_head(bridge, text, "previous_token_head")
    assert ours.shape == (2, 1) and torch.allclose(ours, theirs, atol=1e-5)
    prompt = model.to_tokens("0110")
    greedy = model.generate(prompt, 8, temperature=0)
    assert greedy.shape == (1, 12) and torch.equal(greedy[:, :4], prompt)
    assert torch.equal(bridge.generate(prompt, 8, do_sample=False, verbose=False), greedy)


def test_generate_is_seeded_and_samples_the_model():
    model = zoo_model("untied-p0.5-q0.8")  # learnt the kernel p=0.5, q=0.8
    state = torch.get_rng_state()
    prompt = torch.zeros(400, 1, dtype=torch.long)
    a = model.generate(prompt, 3, seed=7)
    assert torch.equal(a, model.generate(prompt, 3, seed=7))
    assert not torch.equal(a, model.generate(prompt, 3, seed=8))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    after_zero = a[:, 1].double().mean()  # P(1 | 0) = p = 0.5: 400 draws, 4 sigma = 0.1
    assert abs(after_zero - 0.5) < 0.1
    cold = model.generate(prompt[:5], 3, temperature=1e-3, seed=0)
    assert torch.equal(cold, model.generate(prompt[:5], 3, temperature=0))
    with pytest.raises(ValueError, match="n_ctx=128"):
        model.generate(prompt[:1], 128)
    with pytest.raises(ValueError, match="temperature must be a number >= 0"):
        model.generate(prompt[:1], 2, temperature=-1)


def test_the_tokenizer_names_bad_text():
    model = zoo_model("untied-p0.5-q0.8")
    with pytest.raises(ValueError, match=r"'2' in '0120' is not a token: the alphabet is 0..1"):
        model.to_tokens("0120")
    assert model.tokenizer.eos_token == "<end>" and model.tokenizer.eos_token_id == 2
