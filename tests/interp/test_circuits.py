"""Circuit tools (issue #22): path patching against the naive two-pass computation, composition
scores against dense products, the add-beta fit, and the ``in-context (induction)`` label on a
hand-built two-layer induction circuit and on one-layer models."""

import json
import math

import pytest
import torch

from interp.atlas.labels import (
    INDUCTION,
    INDUCTION_MATCH_MARGIN,
    INDUCTION_MIN_DEPENDENCE,
    INDUCTION_PATH_REMOVED,
    INDUCTION_PREVIOUS_TOKEN,
    induction_label,
)
from interp.circuits import (
    Receiver,
    Sender,
    all_senders,
    fit_add_beta,
    head_composition,
    head_receivers,
    induction_circuit,
    next_token_metric,
    path_patch,
    shuffled_tokens,
)
from training.chains import InContextChain, add_pseudocount_probs
from training.config import ModelConfig
from training.model import MarkovTransformer


def induction_model(S: int = 2, N: int = 48, copy_previous: bool = True) -> MarkovTransformer:
    """Two attention-only layers, weights set by hand, residual = [token | previous token |
    output | one-hot position]. Layer 0 attends to the previous position and copies its token
    into the previous-token subspace; layer 1's query reads the current token, its key the
    previous-token subspace (so it attends to keys j with x_{j-1} = x_n) and its value the
    token, written to the output subspace the unembedding reads (gain 2: logits 2 * frequency
    of each token after earlier occurrences of x_n)."""
    D, Dh = 3 * S + N, N
    cfg = ModelConfig(
        d_vocab=S,
        n_ctx=N,
        n_layers=2,
        n_heads=1,
        d_model=D,
        d_head=Dh,
        attn_only=True,
        normalization_type=None,
        tie_embeddings=False,
    )
    model = MarkovTransformer(cfg, seed=0)
    sharp = 30.0 * math.sqrt(Dh)  # attention scores of 30 on the intended keys, 0 elsewhere
    s, i = torch.arange(S), torch.arange(N)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[s, s] = 1.0
        model.pos_embed.W_pos[i, 3 * S + i] = 1.0
        prev, match = model.blocks[0].attn, model.blocks[1].attn
        prev.W_Q[0, 3 * S + i, i] = sharp  # query at position i ...
        prev.W_K[0, 3 * S + i[:-1], i[:-1] + 1] = 1.0  # ... matches the key at i - 1
        prev.W_V[0, s, s] = 1.0
        if copy_previous:
            prev.W_O[0, s, S + s] = 1.0
        match.W_Q[0, s, s] = sharp
        match.W_K[0, S + s, s] = 1.0
        match.W_V[0, s, s] = 1.0
        match.W_O[0, s, 2 * S + s] = 1.0
        model.unembed.W_U[2 * S + s, s] = 2.0
    return model.eval()


def chain_tokens(batch: int, n: int, states: int = 2, seed: int = 0) -> torch.Tensor:
    chain = InContextChain(states=states, order=1)
    return chain.sample(batch, n, generator=torch.Generator().manual_seed(seed))


def random_model(**kw) -> MarkovTransformer:
    base = dict(d_vocab=3, n_ctx=12, n_layers=3, n_heads=2, d_model=8, init_range=0.4)
    model = MarkovTransformer(ModelConfig(**(base | kw)), seed=3)
    with torch.no_grad():  # LayerNorm weights away from 1, so that folding them matters
        for name, p in model.named_parameters():
            if name.endswith(".w"):
                p.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(len(name)))
    return model.double().eval()


@torch.no_grad()
def naive_path_patch(model, clean, corrupt, sender, receiver, readout):
    """IOI's two passes with hooks, one pair at a time: (1) the clean run with the sender's
    output from the corrupted run and every other head and MLP before the receiver's layer
    frozen at its clean value, caching the receiver's input; (2) the clean run with only that
    input of the receiver head replaced."""
    _, cc = model.run_with_cache(clean)
    _, kc = model.run_with_cache(corrupt)

    def replace(value):
        return lambda x, hook: value.clone()

    hooks = []
    if sender.kind == "embed":
        hooks.append(("hook_embed", replace(kc["hook_embed"])))
    for layer in range(receiver.layer):
        z = cc[f"blocks.{layer}.attn.hook_z"].clone()
        if sender.kind == "head" and sender.layer == layer:
            z[:, :, sender.head] = kc[f"blocks.{layer}.attn.hook_z"][:, :, sender.head]
        hooks.append((f"blocks.{layer}.attn.hook_z", replace(z)))
        if not model.cfg.attn_only:
            src = kc if sender.kind == "mlp" and sender.layer == layer else cc
            hooks.append(
                (f"blocks.{layer}.hook_mlp_out", replace(src[f"blocks.{layer}.hook_mlp_out"]))
            )
    name = f"blocks.{receiver.layer}.attn.hook_{receiver.input}"
    seen = {}
    hooks.append((name, lambda x, hook: seen.setdefault("x", x.clone())))
    model.run_with_hooks(clean, fwd_hooks=hooks)

    def write(x, hook):
        x = x.clone()
        x[:, :, receiver.head] = seen["x"][:, :, receiver.head]
        return x

    logits = model.run_with_hooks(clean, fwd_hooks=[(name, write)])
    return next_token_metric(clean, readout)(logits[:, readout])


def test_path_patch_equals_the_naive_two_pass_computation():
    model = random_model(attn_window=[None, 2, None])
    clean = chain_tokens(5, 12, states=3, seed=1)
    corrupt = shuffled_tokens(clean, torch.Generator().manual_seed(2))
    senders = all_senders(model)
    receivers = [r for layer in (1, 2) for h in range(2) for r in head_receivers(layer, h)]
    readout = [4, 7, 10]
    metric = next_token_metric(clean, readout)
    got = path_patch(
        model, clean, corrupt, senders, receivers, metric, readout=readout, reduce="none"
    )
    assert got.shape == (len(senders), len(receivers), 5)
    with torch.no_grad():
        clean_metric = metric(model(clean)[:, readout])
    moved = 0.0
    for i, s in enumerate(senders):
        for j, r in enumerate(receivers):
            if s.layer >= r.layer:
                assert torch.isnan(got[i, j]).all(), (s.name, r.name)
                continue
            want = naive_path_patch(model, clean, corrupt, s, r, readout)
            torch.testing.assert_close(got[i, j], want, rtol=0, atol=1e-10)
            moved = max(moved, float((want - clean_metric).abs().max()))
    assert moved > 1e-2  # the patches change the metric: the comparison is not vacuous
    # chunked to one pair per forward pass: the same numbers
    small = path_patch(model, clean, corrupt, senders, receivers, metric, readout=readout, budget=1)
    torch.testing.assert_close(small, got.mean(-1), rtol=0, atol=1e-12, equal_nan=True)


def test_path_patch_of_an_unchanged_sender_changes_nothing():
    model = random_model()
    clean = chain_tokens(4, 12, states=3)
    metric = next_token_metric(clean, [-2])
    senders, receivers = all_senders(model, 1), head_receivers(2, 1)
    got = path_patch(model, clean, clean, senders, receivers, metric, readout=[-2])
    with torch.no_grad():
        want = metric(model(clean)[:, [10]]).mean()
    torch.testing.assert_close(got, want.expand_as(got))


def test_path_patch_rejects_bad_input():
    model = random_model()
    tok = chain_tokens(2, 12, states=3)
    metric = next_token_metric(tok, [-2])
    with pytest.raises(ValueError, match="sender layer 3"):
        path_patch(model, tok, tok, [Sender("head", 3, 0)], head_receivers(1, 0), metric)
    with pytest.raises(ValueError, match="receiver input"):
        path_patch(model, tok, tok, [Sender("embed")], [Receiver(1, 0, "z")], metric)
    with pytest.raises(ValueError, match="same shape"):
        path_patch(model, tok, tok[:, :10], [Sender("embed")], head_receivers(1, 0), metric)
    attn_only = random_model(attn_only=True)
    with pytest.raises(ValueError, match="no MLP"):
        path_patch(attn_only, tok, tok, [Sender("mlp", 0)], head_receivers(1, 0), metric)


def test_hand_built_induction_circuit_is_labelled_in_context_induction():
    model = induction_model()
    circuit = induction_circuit(model, chain_tokens(32, 48))
    assert circuit.previous_token_head == [0, 0] and circuit.matching_head == [1, 0]
    assert circuit.label["label"] == INDUCTION, circuit.label
    assert circuit.match_score > 0.9  # attention-to-match near 1 ...
    assert circuit.match_excess > 0.3  # ... far above its shuffled chance (about 1/2)
    assert circuit.previous_token_excess > 0.85
    assert circuit.dependence > 0.02  # nats/token over the in-context unigram
    # the key path carries the dependence; the previous-token head reaches nothing else
    assert circuit.path_removed > 0.9
    assert circuit.paths["L0H0"]["q"] == pytest.approx(0, abs=1e-6)
    assert circuit.paths["L0H0"]["v"] == pytest.approx(0, abs=1e-6)
    # K-composition of the pair (1/sqrt(S) by construction) far above random; Q and V none
    comp = circuit.composition
    assert comp["K"] == pytest.approx(1 / math.sqrt(2), rel=1e-5)
    assert comp["K"] > comp["baseline"] + 10 * comp["baseline_sd"]
    assert comp["Q"] < 1e-6 and comp["V"] < 1e-6
    json.dumps(circuit.to_dict(), allow_nan=False)


def test_induction_circuit_without_the_previous_token_write_is_not_labelled():
    circuit = induction_circuit(induction_model(copy_previous=False), chain_tokens(32, 48))
    assert circuit.label["label"] is None
    assert not circuit.label["checks"]["match"] and not circuit.label["checks"]["path"]


@pytest.mark.parametrize("attn_only", [True, False])
def test_a_one_layer_model_is_never_labelled(attn_only):
    for seed in range(3):
        cfg = ModelConfig(n_layers=1, n_ctx=48, d_model=16, attn_only=attn_only, init_range=0.5)
        model = MarkovTransformer(cfg, seed=seed).eval()
        circuit = induction_circuit(model, chain_tokens(16, 48, seed=seed))
        assert circuit.label["label"] is None and not circuit.label["checks"]["earlier_layer"]
        assert circuit.matching_head is None and circuit.paths == {}
        out = circuit.to_dict()
        assert out["path_removed"] is None
        json.dumps(out, allow_nan=False)


@torch.no_grad()
def test_composition_scores_equal_the_dense_formula():
    model = random_model()
    L, H = 3, 2
    for mode in ("Q", "K", "V"):
        got = head_composition(model, mode)
        for l1 in range(L):
            for l2 in range(L):
                for h1 in range(H):
                    for h2 in range(H):
                        v = got.scores[l1, h1, l2, h2]
                        if l1 >= l2:
                            assert torch.isnan(v)
                            continue
                        a1, a2 = model.blocks[l1].attn, model.blocks[l2].attn
                        w = model.blocks[l2].ln1.w[:, None]
                        ov = a1.W_V[h1] @ a1.W_O[h1]
                        qk = (w * a2.W_Q[h2]) @ (w * a2.W_K[h2]).T
                        right = {"Q": qk, "K": qk.T, "V": (w * a2.W_V[h2]) @ a2.W_O[h2]}[mode]
                        want = (ov @ right).norm() / (ov.norm() * right.norm())
                        assert float(v) == pytest.approx(float(want), rel=1e-6)
    # random circuits of this size compose at about 1/sqrt(d_model)
    assert 0.2 < got.baseline < 0.6 and got.baseline_sd > 0


@pytest.mark.parametrize(("states", "order", "beta"), [(3, 1, 0.37), (2, 2, 2.5)])
def test_add_beta_fit_recovers_beta(states, order, beta):
    chain = InContextChain(states=states, order=order, alpha=0.5)
    tokens = chain.sample(16, 64, generator=torch.Generator().manual_seed(4))
    probs = add_pseudocount_probs(tokens, states, order, beta)
    fit = fit_add_beta(probs, tokens, order)
    assert fit.beta == pytest.approx(beta, rel=1e-4)
    assert fit.kl < 1e-9 and fit.kl_add_one > 1e-4 and not fit.at_bound
    wrong_order = fit_add_beta(probs, tokens, order - 1)
    assert wrong_order.kl > 1e-3


def test_induction_label_rule():
    ok = {
        "previous_token_layer": 0,
        "matching_layer": 1,
        "previous_token_excess": INDUCTION_PREVIOUS_TOKEN,
        "match_excess": INDUCTION_MATCH_MARGIN,
        "dependence": INDUCTION_MIN_DEPENDENCE,
        "path_removed": INDUCTION_PATH_REMOVED,
    }
    assert induction_label(ok) == {
        "label": INDUCTION,
        "holds": True,
        "checks": dict.fromkeys(
            ("earlier_layer", "previous_token", "match", "dependence", "path"), True
        ),
    }
    below = {
        "previous_token_excess": "previous_token",
        "match_excess": "match",
        "dependence": "dependence",
        "path_removed": "path",
    }
    for key, check in below.items():
        for bad in (ok[key] - 1e-9, math.nan, None):
            out = induction_label(ok | {key: bad})
            assert out["label"] is None and not out["checks"][check]
            assert sum(not v for v in out["checks"].values()) == 1
    for prev, match in ((1, 1), (2, 1), (None, 1), (0, None)):
        out = induction_label(ok | {"previous_token_layer": prev, "matching_layer": match})
        assert out["label"] is None and not out["checks"]["earlier_layer"]
