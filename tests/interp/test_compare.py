"""Comparison of models: CKA properties, parameter distances, compare() on real tiny runs, CLI."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from interp.compare import (
    ComparisonConfig,
    cka_matrix,
    compare,
    linear_cka,
    load_subject,
    named_weights,
    parameter_distances,
)
from markov_lens.cli import main
from tests.tiny_runs import CHAIN, SEQ_LEN
from training.chains import BinaryChain, KthOrderChain
from training.config import ModelConfig
from training.model import MarkovTransformer

SMALL = dict(
    n_seqs=8,
    seq_len=SEQ_LEN,
    probe_seqs=24,
    probe_positions=8,
    cka_rows=256,
    attention_positions=12,
)


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def runs(tiny_tied_run, tiny_untied_run, tiny_two_layer_run):
    return {"tied": tiny_tied_run, "untied": tiny_untied_run, "deep": tiny_two_layer_run}


def _orthogonal(d: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


# ------------------------------------------------------------------------------- CKA


def test_cka_of_a_representation_with_itself_is_one(gen):
    x = torch.randn(300, 7, generator=gen, dtype=torch.float64)
    assert float(linear_cka(x, x)) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cka_invariant_to_orthogonal_maps_scaling_and_shifts(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(250, 6, generator=gen, dtype=torch.float64)
    y = x[:, :3] @ torch.randn(3, 4, generator=gen, dtype=torch.float64)
    y = y + 0.5 * torch.randn(250, 4, generator=gen, dtype=torch.float64)
    base = float(linear_cka(x, y))
    assert 0.05 < base < 0.99  # a non-trivial value, so the checks below can fail
    q6, q4 = _orthogonal(6, gen), _orthogonal(4, gen)
    assert float(linear_cka(x @ q6, y)) == pytest.approx(base, abs=1e-10)
    assert float(linear_cka(x, y @ q4)) == pytest.approx(base, abs=1e-10)
    assert float(linear_cka(x @ q6, x)) == pytest.approx(1.0, abs=1e-10)
    assert float(linear_cka(3.7 * x, 0.01 * y)) == pytest.approx(base, abs=1e-10)
    assert float(linear_cka(x + 5.0, y - 2.0)) == pytest.approx(base, abs=1e-10)
    # not invariant to a general invertible map
    stretch = torch.diag(torch.tensor([1.0, 30.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    assert abs(float(linear_cka(x @ stretch, y)) - base) > 1e-3


def test_cka_known_values_on_a_constructed_case():
    # x and z centred and orthogonal, |x|^2 = a, |z|^2 = b: CKA([x], [x, z]) = a / sqrt(a^2 + b^2)
    n = 8
    x = torch.tensor([1.0, -1.0] * (n // 2), dtype=torch.float64)
    z = torch.tensor([1.0, 1.0, -1.0, -1.0] * (n // 4), dtype=torch.float64)
    assert float(x @ z) == 0 and float(x.sum()) == 0 and float(z.sum()) == 0
    X = x[:, None]
    assert float(linear_cka(X, torch.stack([x, z], 1))) == pytest.approx(
        1 / math.sqrt(2), abs=1e-12
    )
    Y = torch.stack([x, math.sqrt(3) * z], 1)  # b = 3a
    assert float(linear_cka(X, Y)) == pytest.approx(1 / math.sqrt(10), abs=1e-12)
    assert float(linear_cka(X, z[:, None])) == pytest.approx(0.0, abs=1e-12)


def test_cka_batched_and_matrix_agree_with_pairwise(gen):
    xs = torch.randn(3, 100, 5, generator=gen)
    ys = torch.randn(3, 100, 2, generator=gen)
    batched = linear_cka(xs, ys)
    for i in range(3):
        assert float(batched[i]) == pytest.approx(float(linear_cka(xs[i], ys[i])), abs=1e-6)
    acts_a = {"a1": torch.randn(100, 3, generator=gen), "a2": torch.randn(100, 9, generator=gen)}
    acts_b = {"b1": acts_a["a2"][:, :4] + 0.1, "b2": torch.randn(100, 1, generator=gen)}
    result = cka_matrix(acts_a, acts_b)
    assert result.matrix.shape == (2, 2)
    for i, na in enumerate(acts_a):
        for j, nb in enumerate(acts_b):
            want = float(linear_cka(acts_a[na], acts_b[nb]))
            assert float(result.matrix[i, j]) == pytest.approx(want, abs=1e-5)
    assert result.per_hook() == {}


def test_cka_undefined_for_constant_and_bad_rows(gen):
    x = torch.randn(50, 3, generator=gen)
    assert math.isnan(float(linear_cka(torch.ones(50, 2), x)))
    with pytest.raises(ValueError, match="same inputs"):
        linear_cka(x, x[:40])
    with pytest.raises(ValueError, match="same inputs"):
        cka_matrix({"a": x}, {"b": x[:10]})


# ------------------------------------------------------------------ parameter distances


def test_parameter_distances_zero_for_copies_and_exact_for_a_perturbation():
    a = MarkovTransformer(ModelConfig.paper(n_ctx=16), seed=0)
    b = copy.deepcopy(a)
    same = parameter_distances(a, b)
    assert same.comparable and all(r["diff_norm"] == 0 for r in same.rows)
    assert same.total["diff_norm"] == 0 and same.total["relative"] == 0
    delta = 0.3 * torch.ones_like(b.blocks[0].attn.W_Q)
    with torch.no_grad():
        b.blocks[0].attn.W_Q += delta
    d = parameter_distances(a, b)
    rows = {r["name"]: r for r in d.rows}
    assert rows["blocks.0.attn.W_Q"]["diff_norm"] == pytest.approx(float(delta.norm()), rel=1e-5)
    assert all(r["diff_norm"] == 0 for n, r in rows.items() if n != "blocks.0.attn.W_Q")
    assert d.total["diff_norm"] == pytest.approx(float(delta.norm()), rel=1e-5)
    groups = {g["group"]: g for g in d.groups}
    assert {"embed", "pos_embed", "blocks.0.attn", "blocks.0.mlp", "unembed"} <= set(groups)
    assert groups["blocks.0.attn"]["parameters"] == [
        "blocks.0.attn.W_Q",
        "blocks.0.attn.W_K",
        "blocks.0.attn.W_V",
        "blocks.0.attn.W_O",
    ]
    assert groups["blocks.0.attn"]["diff_norm"] == pytest.approx(float(delta.norm()), rel=1e-5)
    assert all(g["diff_norm"] == 0 for name, g in groups.items() if name != "blocks.0.attn")
    assert 0 < rows["blocks.0.attn.W_Q"]["relative"] < 1


def test_parameter_distances_tied_against_untied_use_hookedtransformer_names():
    tied = MarkovTransformer(ModelConfig.paper(n_ctx=16), seed=0)
    untied = MarkovTransformer(ModelConfig.paper(n_ctx=16, tie_embeddings=False), seed=1)
    assert set(named_weights(tied)) == set(named_weights(untied))
    d = parameter_distances(tied, untied)
    assert d.comparable
    rows = {r["name"]: r for r in d.rows}
    want = float((tied.embed.W_E.T - untied.unembed.W_U).detach().norm())
    assert rows["unembed.W_U"]["diff_norm"] == pytest.approx(want, rel=1e-5)
    assert rows["unembed.W_U"]["shape"] == [8, 2]


def test_parameter_distances_refuse_different_shapes_clearly():
    one = MarkovTransformer(ModelConfig.paper(n_ctx=16), seed=0)
    two = MarkovTransformer(ModelConfig.paper(n_ctx=16, n_layers=2), seed=0)
    wide = MarkovTransformer(ModelConfig.paper(n_ctx=16, d_model=16), seed=0)
    d = parameter_distances(one, two)
    assert not d.comparable and d.rows == [] and d.total is None
    assert "only in B" in d.reason and "blocks.1.attn.W_Q" in d.reason
    d = parameter_distances(one, wide)
    assert "embed.W_E [2, 8] vs [2, 16]" in d.reason
    with pytest.raises(ValueError, match="equal parameter names and shapes"):
        parameter_distances(one, wide, strict=True)


def test_parameter_distances_leave_layernorm_out_of_the_total_and_name_the_symmetries():
    cfg = ModelConfig.paper(n_ctx=16, n_heads=2, tie_embeddings=False, init_range=0.3)
    a = MarkovTransformer(cfg, seed=0)
    b = copy.deepcopy(a)  # the same function, other parameters: heads swapped, W_Q/W_K and
    with torch.no_grad():  # ln1 rescaled against their readers
        attn = b.blocks[0].attn
        for w in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O):
            w.copy_(w.flip(0))
        attn.W_Q.mul_(-3.0)
        attn.W_K.div_(-3.0)
        c = torch.linspace(0.5, 2.0, cfg.d_model)
        b.blocks[0].ln1.w.mul_(c)
        for w in (attn.W_Q, attn.W_K, attn.W_V):
            w.div_(c[None, :, None])
    tokens = torch.randint(0, 2, (4, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(b(tokens), a(tokens), atol=1e-5, rtol=1e-5)
    d = parameter_distances(a, b)
    assert d.total["diff_norm"] > 0.1 * d.total["norm_a"]  # not aligned, and says so
    said = " | ".join(d.symmetries)
    for what in ("2 heads", "W_Q W_K^T", "W_V W_O", "hidden units", "LayerNorm weight"):
        assert what in said, (what, said)
    assert "ln_final: W_U" in said  # untied; a tied W_U is W_E, no such symmetry
    tied = parameter_distances(MarkovTransformer(ModelConfig.paper(n_ctx=16), seed=0), a)
    assert "ln_final" not in " | ".join(tied.symmetries)

    only_ln = copy.deepcopy(a)
    with torch.no_grad():
        only_ln.blocks[0].ln2.w.mul_(1.5)
    d = parameter_distances(a, only_ln)
    assert d.total["diff_norm"] == 0 and d.total["cosine"] == pytest.approx(1.0)
    names = ["blocks.0.ln1.w", "blocks.0.ln2.w", "ln_final.w"]
    assert d.layernorm["parameters"] == names
    want = float(0.5 * a.blocks[0].ln2.w.detach().double().norm())
    assert d.layernorm["diff_norm"] == pytest.approx(want, rel=1e-9)

    other = MarkovTransformer(cfg, seed=1)  # two seeds: LayerNorm weights 1 in both
    d = parameter_distances(a, other)
    assert d.layernorm["cosine"] == pytest.approx(1.0)
    wa, wb = named_weights(a), named_weights(other)
    rest = [n for n in wa if n not in names]
    flat_a = torch.cat([wa[n].double().flatten() for n in rest])
    flat_b = torch.cat([wb[n].double().flatten() for n in rest])
    cos = float(flat_a @ flat_b / (flat_a.norm() * flat_b.norm()))
    assert d.total["cosine"] == pytest.approx(cos, abs=1e-12) and abs(cos) < 0.3


def _offset_comparison(gen, windows=(None, None)):
    """A stand-in for a Comparison with near-uniform attention summaries for A and B."""
    from types import SimpleNamespace

    from interp.attention import attention_summary

    attention = {}
    for lab, scale, window in zip(("A: one", "B: two"), (0.2, 0.6), windows, strict=True):
        scores = scale * torch.randn(1, 4, 2, 48, 48, generator=gen)
        keep = torch.ones(48, 48, dtype=torch.bool).tril()
        if window is not None:
            keep &= ~torch.ones(48, 48, dtype=torch.bool).tril(-window - 1)
        patterns = scores.masked_fill(~keep, float("-inf")).softmax(-1)
        attention[lab] = attention_summary(patterns, max_offset=10)
    return SimpleNamespace(labels=tuple(attention), attention=attention)


def test_compare_offsets_fit_the_data_and_tell_a_from_b(gen):
    from matplotlib.colors import to_hex

    from interp.compare.plots import plot_offsets
    from tests.figures import assert_fills_axes

    cmp = _offset_comparison(gen)
    fig = plot_offsets(cmp)
    assert_fills_axes(fig)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    a = [ln for name, ln in lines.items() if name.startswith("A: one L")]
    b = [ln for name, ln in lines.items() if name.startswith("B: two L")]
    assert len(a) == len(b) == 2
    assert {ln.get_linestyle() for ln in a}.isdisjoint({ln.get_linestyle() for ln in b})
    hexes = [{to_hex(ln.get_color()) for ln in side} for side in (a, b)]
    assert hexes[0].isdisjoint(hexes[1]) and len(hexes[0]) == 2  # a colour per model and head
    assert {ln.get_marker() for ln in a}.isdisjoint({ln.get_marker() for ln in b})
    assert "uniform attention" in lines  # the same keys in A and B: one reference line
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert set(lines) == set(legend)
    windowed = plot_offsets(_offset_comparison(gen, windows=(None, 3)))
    names = [line.get_label() for line in windowed.axes[0].get_lines()]
    assert "A: one: uniform attention" in names and "B: two: uniform attention" in names


def test_distance_figure_one_quantity_per_panel_from_zero():
    from interp.compare.plots import plot_distances
    from tests.figures import assert_fills_axes

    cfg = ModelConfig.paper(n_ctx=16, init_range=0.3)
    a = MarkovTransformer(cfg, seed=0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.02 * torch.randn_like(p))  # a nearby model: small distances, cosines ~1
    d = parameter_distances(a, b)
    fig = plot_distances(d)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == 2  # the relative distance and the cosine, each on its own axis
    assert_fills_axes(fig)
    for ax, key in zip(axes, ("relative", "cosine"), strict=True):
        heights = [p.get_height() for p in ax.patches]
        assert min(heights) >= 0 and ax.get_ylim()[0] == 0.0, (key, ax.get_ylim())
        assert key.split()[0][:6] in ax.get_ylabel()
        assert len(heights) == len(d.rows) + 2  # every parameter, the total, LayerNorm
    ticks = [t.get_text() for t in axes[1].get_xticklabels()]
    assert ticks[-2:] == ["total (no LayerNorm)", "LayerNorm, all"]
    hatched = [t for t, p in zip(ticks, axes[0].patches, strict=True) if p.get_hatch()]
    assert hatched == ["blocks.0.ln1.w", "blocks.0.ln2.w", "ln_final.w", "LayerNorm, all"]


# ----------------------------------------------------------------------- compare()


def test_compare_tied_against_untied_run(runs, tmp_path):
    cmp = compare(runs["tied"], runs["untied"], ComparisonConfig(**SMALL), device="cpu")
    la, lb = cmp.labels
    assert (la, lb) == ("tied", "untied")
    assert cmp.tokens.shape == (8, SEQ_LEN)
    # the true kernel, exactly, and the trained untied model close to it
    kernel = torch.tensor([[0.5, 0.5], [0.8, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(cmp.transitions.true, kernel)
    assert cmp.behaviour[lb]["rel_excess"] < 0.2
    assert (cmp.transitions.predicted[lb] - kernel).abs().max() < 0.1
    assert cmp.behaviour[lb]["verdict"] == "bigram"  # rel_excess < 0.2 (above), dependence kept
    for lab in (la, lb):
        assert cmp.behaviour[lab]["eval_loss"] >= cmp.references["optimal_loss"] - 0.05
    # tied vs untied: same parameter names and shapes, so distances exist
    assert cmp.distances.comparable
    assert ("model.tie_embeddings", True, False) in cmp.config_differences()
    per = cmp.cka.per_hook()
    assert {"resid_pre.0", "ln_final", "log_probs"} <= set(per)
    assert all(math.isnan(v) or -1e-6 <= v <= 1 + 1e-6 for v in per.values())
    # probes and patching side by side
    assert {r["run"] for r in cmp.probe_rows} == {la, lb}
    tables = cmp.patching["tables"]
    assert set(tables) == {la, lb}
    resid = torch.tensor(tables[lb]["resid_pre"])
    assert resid.shape == (1, SEQ_LEN)
    # patching the whole residual stream at the corrupted (last) position restores it exactly
    assert float(resid[0, -1]) == pytest.approx(1.0, abs=1e-4)

    files = cmp.save(tmp_path / "out")
    for name in (
        "curves.png",
        "transitions.png",
        "attention.png",
        "cka.png",
        "distances.png",
        "probes.png",
        "patching.png",
        "summary.md",
        "comparison.json",
    ):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    assert set(files) >= {"summary.md", "comparison.json"}
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "## Parameter distances" in summary and "| unembed.W_U |" in summary
    assert "| model.tie_embeddings | True | False |" in summary
    data = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert data["cka"]["names_a"][0] == "embed"
    with pytest.raises(FileExistsError, match="--force"):
        cmp.save(tmp_path / "out")
    cmp.save(tmp_path / "out", force=True)


def test_compare_a_run_with_itself_gives_zero_distance_and_full_cka(runs):
    cmp = compare(
        runs["untied"],
        runs["untied"],
        ComparisonConfig(**SMALL, probes=False, patching=False),
        device="cpu",
    )
    assert cmp.labels == ("A: untied", "B: untied")
    assert cmp.distances.total["diff_norm"] == 0
    for name, value in cmp.cka.per_hook().items():
        assert value == pytest.approx(1.0, abs=1e-4), name
    la, lb = cmp.labels
    assert cmp.behaviour[la]["eval_loss"] == cmp.behaviour[lb]["eval_loss"]


def test_compare_across_depths_and_a_checkpoint(runs, tmp_path):
    cfg = ComparisonConfig(**SMALL, probes=False, patching=False)
    cmp = compare(runs["tied"], runs["deep"], cfg, device="cpu")
    assert not cmp.distances.comparable
    assert any("parameter distances need equal" in n for n in cmp.notes)
    assert "resid_pre.1" in cmp.cka.names_b and "resid_pre.1" not in cmp.cka.names_a
    assert cmp.cka.matrix.shape == (len(cmp.cka.names_a), len(cmp.cka.names_b))
    cmp.save(tmp_path / "depth")
    text = (tmp_path / "depth" / "summary.md").read_text()
    assert "Not computed: parameter distances need equal" in text
    assert not (tmp_path / "depth" / "distances.png").exists()

    ckpt = runs["tied"] / "checkpoints" / "step_000004"
    subject = load_subject(ckpt, device="cpu")
    assert subject.kind == "checkpoint" and subject.step == 4 and subject.label == "tied@4"
    assert subject.metrics and max(m["step"] for m in subject.metrics) <= 4
    assert subject.chain.to_dict() == CHAIN.to_dict()
    cmp = compare(runs["tied"], ckpt, cfg, device="cpu", labels=("final", "early"))
    assert cmp.labels == ("final", "early")
    assert cmp.distances.comparable and cmp.distances.total["diff_norm"] > 0
    assert ("step", 80, 4) in cmp.config_differences()


def test_load_subject_and_compare_reject_bad_input(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_subject(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        load_subject(tmp_path / "empty")
    with pytest.raises(ValueError, match="run directories only"):
        load_subject(runs["tied"] / "checkpoints" / "step_000004", step=2)
    three = MarkovTransformer(ModelConfig.paper(n_ctx=16, d_vocab=3), seed=0)
    two = MarkovTransformer(ModelConfig.paper(n_ctx=16), seed=0)
    with pytest.raises(ValueError, match="different vocabularies"):
        compare(two, three, chain=BinaryChain(0.2, 0.3), device="cpu")
    with pytest.raises(ValueError, match="has a chain to draw inputs"):
        compare(two, copy.deepcopy(two), device="cpu")
    with pytest.raises(ValueError, match="seq_len"):
        compare(two, two, ComparisonConfig(seq_len=64), chain=BinaryChain(0.2, 0.3), device="cpu")
    with pytest.raises(ValueError, match="input_chain"):
        ComparisonConfig(input_chain="c")


def test_compare_bare_models_on_a_second_order_chain():
    chain = KthOrderChain.lag(2, 0.2, 0.3)
    a = MarkovTransformer(ModelConfig.paper(n_ctx=16), seed=0)
    b = MarkovTransformer(ModelConfig.paper(n_ctx=16, attn_window=2), seed=1)
    cmp = compare(
        a, b, ComparisonConfig(n_seqs=4, seq_len=16, probes=False), chain=chain, device="cpu"
    )
    assert cmp.transitions.contexts == ["00", "01", "10", "11"]
    assert cmp.distances.comparable  # a window changes no parameter
    assert set(cmp.patching["tables"][cmp.labels[0]]) == {"resid_pre", "attn_out", "mlp_out"}
    assert "curves" not in cmp.figures()  # bare models have no metrics


# ---------------------------------------------------------------------------------- CLI


def test_cli_compare_two_runs_and_a_timeline(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = [
        "compare",
        str(runs["tied"]),
        str(runs["untied"]),
        "--out",
        str(out),
        "--no-probes",
        "--no-patching",
        "--n-seqs",
        "4",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert (out / "summary.md").exists() and (out / "cka.png").exists()
    assert "wrote" in capsys.readouterr().out
    assert main(args) == 2
    assert "markov-lens compare: error:" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    tl = tmp_path / "tl"
    assert (
        main(
            [
                "compare",
                str(runs["deep"]),
                "--out",
                str(tl),
                "--no-probes",
                "--no-cka",
                "--steps",
                "0,20",
                "--n-seqs",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (tl / "timeline.png").exists() and (tl / "timeline.md").exists()
    assert main(["compare", str(runs["tied"]), str(runs["tied"]), str(runs["tied"])]) == 2
    assert "one run directory" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nope"), str(runs["tied"])]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compare", str(runs["tied"]), str(runs["untied"]), "--n-seqs", "0"]) == 2
    assert "n_seqs must be a positive integer" in capsys.readouterr().err


def test_cka_is_nan_with_a_reason_below_the_variance_floor(gen):
    """A unigram checkpoint's output is constant up to rounding (dependence ~1e-10): its CKA
    would be computed on rounding noise (v1: 0.20). Rank-1 representations get a note."""
    from interp.compare.cka import VARIANCE_FLOOR, representations
    from training.references import stationary_marginal

    pi = stationary_marginal(CHAIN)
    model = MarkovTransformer(ModelConfig.paper(n_ctx=16, init="theta_pi"), pi=pi).eval()
    tokens = torch.randint(0, 2, (8, 16), generator=gen)
    lp = representations(model, tokens, ["resid_post.0"])["log_probs"].double()
    noisy = lp + 1e-9 * torch.randn(lp.shape, generator=gen, dtype=torch.float64)
    real = torch.randn(lp.shape[0], 4, generator=gen, dtype=torch.float64)
    assert float(linear_cka(noisy - noisy.mean(0), real)) > 0.0  # centred: noise gives a value
    assert math.isnan(float(linear_cka(noisy, real)))
    result = cka_matrix({"log_probs": noisy, "real": real}, {"real": real})
    assert math.isnan(float(result.matrix[0, 0])) and float(result.matrix[1, 0]) == 1.0
    assert "relative spread" in result.undefined["A:log_probs"]
    assert result.to_dict()["variance_floor"] == VARIANCE_FLOOR
    # two different functions of a binary x_n: CKA 1, and the result says why
    x = torch.randint(0, 2, (200,), generator=gen).double()
    f = torch.stack([x, 2 * x], 1) + 0.3
    g = torch.stack([-x, 5 * x, x], 1)
    both = cka_matrix({"f": f}, {"g": g})
    assert float(both.matrix[0, 0]) == pytest.approx(1.0, abs=1e-6)
    assert both.notes and "rank 1" in both.notes[0]
