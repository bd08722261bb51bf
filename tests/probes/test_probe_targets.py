"""Probe targets, control tasks and activation caching (no training needed)."""

import pytest
import torch

from probes.activations import (
    cache_activations,
    component_sort_key,
    expand_group,
    resolve_components,
    sample_positions,
)
from probes.controls import control_target, input_types, random_model, shuffled_target
from probes.targets import (
    check_target_name,
    compute_target,
    default_targets,
    transition_counts_so_far,
)
from training.chains import BinaryChain, InContextChain, KthOrderChain, add_pseudocount_probs
from training.config import ModelConfig
from training.model import MarkovTransformer

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def small_model():
    cfg = ModelConfig.paper(d_model=8, n_ctx=16, n_layers=2, n_heads=2)
    return MarkovTransformer(cfg, seed=3).eval()


# ---------------------------------------------------------------------------------- targets


def test_token_targets_and_validity(gen):
    tokens = BinaryChain(0.3, 0.4).sample(5, 12, generator=gen)
    positions = torch.tensor([0, 1, 5, 11])
    x = compute_target("x_n", tokens, positions, BinaryChain(0.3, 0.4))
    assert x.kind == "discrete" and x.n_classes == 2
    assert torch.equal(x.values, tokens[:, positions]) and x.valid.all()
    back2 = compute_target("x_n-2", tokens, positions, BinaryChain(0.3, 0.4))
    assert back2.valid[0].tolist() == [False, False, True, True]
    assert torch.equal(back2.values[:, 2:], tokens[:, positions[2:] - 2])


def test_next_prob_is_the_kernel_row(gen):
    chain = BinaryChain(0.2, 0.3)
    tokens = chain.sample(4, 20, generator=gen)
    t = compute_target("next_prob", tokens, torch.arange(20), chain)
    expected = torch.where(tokens == 0, 0.2, 0.7).float()  # P(1|0) = p, P(1|1) = 1 - q
    torch.testing.assert_close(t.values[..., 0], expected)
    lag2 = KthOrderChain.lag(2, 0.2, 0.3)
    tokens = lag2.sample(3, 10, generator=gen)
    t2 = compute_target("next_prob", tokens, torch.arange(1, 10), lag2)
    expected2 = torch.where(tokens[:, :-1] == 0, 0.2, 0.7).float()  # depends on x_{n-1}
    torch.testing.assert_close(t2.values[..., 0], expected2)


def test_marginal_constant_for_fixed_chains_running_frequency_in_context(gen):
    chain = BinaryChain(0.5, 0.8)
    tokens = chain.sample(3, 10, generator=gen)
    m = compute_target("marginal", tokens, torch.arange(10), chain)
    assert m.constant and m.values[0, 0, 0].item() == pytest.approx(0.5 / 1.3)
    ic = InContextChain(states=3)
    tokens = ic.sample(3, 10, generator=gen)
    m = compute_target("marginal", tokens, torch.arange(10), ic)
    for n in (0, 4, 9):
        freq = torch.stack([(tokens[:, : n + 1] == s).double().mean(1) for s in range(3)], -1)
        torch.testing.assert_close(m.values[:, n], freq.float())
    assert not m.constant


@pytest.mark.parametrize("order", [1, 2])
def test_in_context_counts_match_a_loop(gen, order):
    chain = InContextChain(states=3, order=order)
    tokens = chain.sample(4, 15, generator=gen)
    counts = transition_counts_so_far(tokens, 3, order)
    for b in range(4):
        for n in range(15):
            ctx = tokens[b, n - order + 1 : n + 1].tolist() if n >= order - 1 else None
            want = torch.zeros(3, dtype=torch.float64)
            if ctx is not None:
                for t in range(order, n + 1):  # target positions seen so far
                    if tokens[b, t - order : t].tolist() == ctx:
                        want[tokens[b, t]] += 1
            torch.testing.assert_close(counts[b, n], want)
    est = compute_target("icl_bigram", tokens, torch.arange(15), chain)
    torch.testing.assert_close(
        est.values, add_pseudocount_probs(tokens, 3, order, chain.alpha).float()
    )
    c = compute_target("icl_counts", tokens, torch.arange(15), chain)
    ok = c.valid
    probs = (c.values + chain.alpha) / (c.values.sum(-1, keepdim=True) + 3 * chain.alpha)
    torch.testing.assert_close(probs[ok], est.values[ok])


def test_model_targets_need_log_probs_and_binary_reduces_to_p1(gen):
    chain = BinaryChain(0.2, 0.3)
    tokens = chain.sample(2, 6, generator=gen)
    lp = torch.randn(2, 6, 2).log_softmax(-1)
    p = compute_target("model_prob", tokens, torch.arange(6), chain, log_probs=lp)
    torch.testing.assert_close(p.values[..., 0], lp[..., 1].exp())
    logit = compute_target("model_logit", tokens, torch.arange(6), chain, log_probs=lp)
    torch.testing.assert_close(logit.values[..., 0], lp[..., 1] - lp[..., 0])
    with pytest.raises(ValueError, match="needs the model's log_probs"):
        compute_target("model_prob", tokens, torch.arange(6), chain)


def test_target_names_are_checked():
    assert check_target_name("x_n-3") == "x_n-3"
    for bad in ("x_n-0", "x_n+1", "kernel"):
        with pytest.raises(ValueError, match="unknown target"):
            check_target_name(bad)
    assert "icl_bigram" in default_targets(InContextChain())
    assert "marginal" not in default_targets(BinaryChain(0.2, 0.3))


# --------------------------------------------------------------------------------- controls


def test_input_types(gen):
    tokens = BinaryChain(0.5, 0.5).sample(50, 8, generator=gen)
    pos = torch.arange(8)
    pt = input_types(tokens, pos, "pos_token", 2)
    assert pt.unique().numel() == 16
    bi = input_types(tokens, pos, "bigram", 2)
    same = bi[:, 1:, None] == bi[:, 1:].reshape(-1)[None, None, :].expand(50, 7, -1)
    pairs = tokens[:, :-1] * 2 + tokens[:, 1:]
    same_pairs = pairs[:, :, None] == pairs.reshape(-1)[None, None, :].expand(50, 7, -1)
    assert torch.equal(same, same_pairs)
    assert not set(bi[:, 0].tolist()) & set(bi[:, 1:].reshape(-1).tolist())  # n=0: own types
    with pytest.raises(ValueError, match="control input type"):
        input_types(tokens, pos, "word", 2)


def test_control_labels_are_a_function_of_type_drawn_from_the_label_law(gen):
    chain = BinaryChain(0.2, 0.3)
    tokens = chain.sample(400, 64, generator=gen)
    pos = torch.arange(64)
    target = compute_target("x_n", tokens, pos, chain)
    types = input_types(tokens, pos, "pos_token", 2)
    ctl = control_target(target, types, gen)
    flat_t, flat_c = types.reshape(-1), ctl.values.reshape(-1)
    for t in flat_t.unique()[:20]:
        assert flat_c[flat_t == t].unique().numel() == 1
    per_type = torch.stack([flat_c[flat_t == t][0] for t in flat_t.unique()])
    assert per_type.float().mean().item() == pytest.approx(0.4, abs=0.15)  # pi_1 = 0.4
    with pytest.raises(ValueError, match="discrete"):
        control_target(compute_target("next_prob", tokens, pos, chain), types)


def test_shuffled_target_permutes_sequences_and_keeps_positions(gen):
    chain = BinaryChain(0.2, 0.3)
    tokens = chain.sample(30, 10, generator=gen)
    t = compute_target("next_prob", tokens, torch.arange(10), chain)
    s = shuffled_target(t, gen)
    rows = {tuple(r.flatten().tolist()) for r in t.values}
    assert all(tuple(r.flatten().tolist()) in rows for r in s.values)
    assert not torch.equal(s.values, t.values)


def test_random_model_is_seeded_and_a_fresh_copy(small_model):
    a = random_model(small_model.cfg, 5)
    b = random_model(small_model.cfg, 5)
    assert torch.equal(a.W_E, b.W_E) and a.cfg is not small_model.cfg


# ------------------------------------------------------------------------------ activations


def test_components_groups_and_errors(small_model):
    cfg = small_model.cfg
    names = [c.name for c in resolve_components(cfg, ["resid", "heads", "resid_pre.0"])]
    assert names == [
        "embed", "resid_pre.0", "resid_pre.1", "resid_final", "ln_final",
        "result.0.0", "result.0.1", "result.1.0", "result.1.1",
    ]  # fmt: skip
    assert resolve_components(cfg, ["resid_final"])[0].hook == "blocks.1.hook_resid_post"
    assert "pos_embed" in expand_group(cfg, "all")
    for bad, msg in [
        ("resid_post.2", "layer 2 outside"),
        ("z.0.5", "head 5 outside"),
        ("blocks.0.attn.hook_pattern", "not one vector per position"),
        ("residual", "unknown component"),
        ("resid_pre.0.1", "has no heads"),
    ]:
        with pytest.raises(ValueError, match=msg):
            resolve_components(cfg, [bad])
    attn_only = ModelConfig.paper(attn_only=True, n_ctx=8)
    with pytest.raises(ValueError, match="attention-only"):
        resolve_components(attn_only, ["mlp_out.0"])
    assert "mlp_out.0" not in expand_group(attn_only, "default")
    order = sorted(
        ["ln_final", "resid_pre.1", "mlp_out.0", "embed", "resid_final", "attn_out.0"],
        key=component_sort_key,
    )
    assert order == ["embed", "attn_out.0", "mlp_out.0", "resid_pre.1", "resid_final", "ln_final"]


def test_cache_matches_a_full_run_and_is_batch_invariant(small_model, gen):
    tokens = BinaryChain(0.3, 0.6).sample(10, 16, generator=gen)
    positions = sample_positions(16, 5, gen)
    assert positions.tolist() == sorted(set(positions.tolist())) and positions.numel() == 5
    comps = ["resid_pre.1", "z.1.0", "mlp_post.0", "ln_final", "z.0"]
    small = cache_activations(small_model, tokens, comps, positions=positions, batch_size=3)
    big = cache_activations(small_model, tokens, comps, positions=positions, batch_size=10)
    logits, cache = small_model.run_with_cache(tokens)
    torch.testing.assert_close(
        small.acts["resid_pre.1"], cache["blocks.1.hook_resid_pre"][:, positions]
    )
    torch.testing.assert_close(small.acts["z.1.0"], cache["blocks.1.attn.hook_z"][:, positions, 0])
    assert small.acts["z.0"].shape == (10, 5, 8)  # both heads, d_head 4 each
    assert small.acts["mlp_post.0"].shape == (10, 5, 32)
    torch.testing.assert_close(small.log_probs, logits[:, positions].log_softmax(-1))
    for name in comps:
        torch.testing.assert_close(small.acts[name], big.acts[name])


def test_head_results_sum_to_the_attention_output(small_model, gen):
    tokens = BinaryChain(0.3, 0.6).sample(4, 16, generator=gen)
    acts = cache_activations(small_model, tokens, ["result.0.0", "result.0.1", "attn_out.0"])
    torch.testing.assert_close(
        acts.acts["result.0.0"] + acts.acts["result.0.1"],
        acts.acts["attn_out.0"],
        atol=1e-6,
        rtol=1e-5,
    )
    assert small_model.cfg.use_attn_result is False  # switched on for the call only
    with pytest.raises(ValueError, match="positions must lie"):
        cache_activations(small_model, tokens, ["embed"], positions=torch.tensor([16]))
