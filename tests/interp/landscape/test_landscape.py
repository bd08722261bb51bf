"""interp.landscape and `markov-lens landscape`: theta_pi's loss, gradient and Hessian verdict.

What is true at theta_pi on a finite sample (checked exactly below): the loss is the sample
cross-entropy of pi, within sampling error of the unigram loss H(pi); the gradient is NOT
exactly 0: the unembedding bias gets pi - (empirical next-token frequencies) and W_U (tied:
embed.W_E) gets the same residuals times the final LayerNorm output of W_pos; every other
gradient entry is exactly 0. Its norm is of the size of the sampling noise.

The verdict claims (tied one-layer model, d_model 4, 8 positions, 256 sequences, float64;
verified stable over sample and model seeds): p = 0.2, q = 0.3 (p + q < 1) is a saddle, its
negative curvature lying in the token embedding W_E, as the paper says; p = 0.5, q = 0.8
(p + q > 1) shows no negative curvature beyond sampling error and positive curvature only
along W_E: "local minimum (up to flat directions)", the paper's local minimum as far as a
second-order test can tell (W_Q, W_K, W_V, W_O, the MLP and W_pos are flat to second order
there). Untied, p = 0.5, q = 0.8 is a saddle (W_E against W_U), as the paper says.
"""

import json

import pytest
import torch

from interp.hessian import spectral_norm
from interp.landscape import (
    LandscapeConfig,
    agreement,
    flat_cluster_band,
    hessian_proxy,
    hessian_report,
    paper_prediction,
    population_gradient,
    population_loss,
    sample_tokens,
    theta_pi_analysis,
    theta_pi_model,
)
from markov_lens.cli import main
from tests.tiny_runs import one_thread
from training.chains import BinaryChain
from training.config import ModelConfig
from training.recipe import TrainConfig
from training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tie: bool = True, **kw) -> ModelConfig:
    return ModelConfig.paper(d_model=4, n_ctx=8, d_mlp=8, tie_embeddings=tie, **kw)


# ------------------------------------------------------------------- loss and gradient


@pytest.mark.parametrize("tie", [True, False])
def test_theta_pi_loss_and_gradient_on_a_finite_sample(tie):
    chain = BinaryChain(0.5, 0.8)
    model = theta_pi_model(tiny(tie), chain, seed=1, dtype=torch.float64)
    tokens = sample_tokens(chain, 128, 8, seed=3, device="cpu")
    pi = torch.tensor([chain.q, chain.p], dtype=torch.float64) / (chain.p + chain.q)
    torch.testing.assert_close(model.unembed.b_U.softmax(-1), pi, atol=1e-15, rtol=0)
    targets = tokens[:, 1:]
    loss = population_loss(model, tokens)
    assert loss.mean == pytest.approx(float(-pi.log()[targets].mean()), rel=1e-13)
    assert abs(loss.mean - 0.666278442414676) < 4 * loss.se
    g = population_gradient(model, tokens, n_groups=8)
    w_u = "embed.W_E" if tie else "unembed.W_U"
    for name, norm in g.by_param.items():
        if name not in ("unembed.b_U", w_u):
            assert norm == 0.0, name  # exactly zero, not merely small
    grads = g.layout.unflatten(g.gradient)
    freq = torch.stack([(targets == k).double().mean() for k in (0, 1)])
    residual = pi - freq  # d loss / d logits, averaged
    torch.testing.assert_close(grads["unembed.b_U"], residual, atol=1e-15, rtol=0)
    assert residual.abs().max() > 0  # nonzero on a finite sample: zero only in expectation
    ln_out = model.ln_final(model.pos_embed.W_pos[:7]).detach()  # [pos, d_model]
    onehot = torch.nn.functional.one_hot(targets, 2).double()  # [batch, pos, 2]
    expected = torch.einsum("bpk,pd->kd", pi - onehot, ln_out) / targets.numel()
    got = grads[w_u] if tie else grads[w_u].T
    torch.testing.assert_close(got, expected, atol=1e-14, rtol=1e-10)
    assert g.norm < 4 * g.noise_norm  # as large as its sampling noise, no larger


# ------------------------------------------------------------------------------ verdicts


@pytest.fixture(scope="module")
def verdicts():
    cfg = LandscapeConfig(n_sequences=256, method="exact", n_groups=8, noise_draws=2)
    with one_thread():
        return {
            (tie, p, q): theta_pi_analysis(BinaryChain(p, q), tiny(tie), cfg, device="cpu")
            for tie, p, q in [(True, 0.5, 0.8), (True, 0.2, 0.3), (False, 0.5, 0.8)]
        }


def test_tied_p_plus_q_below_1_is_a_saddle_in_the_embedding(verdicts):
    res = verdicts[(True, 0.2, 0.3)]
    h = res["hessian"]
    assert h["verdict"] == "saddle"
    assert h["heldout_curvature"] + h["heldout_z"] * h["heldout_se"] < 0
    assert h["lambda_min"] < -10 * h["lambda_min_se"]
    assert h["lambda_min_split"]["embed.W_E"] > 0.9
    assert res["proxy"] < 0 and res["prediction"] == "saddle" and res["agreement"] == "agrees"


def test_tied_p_plus_q_above_1_is_a_minimum_up_to_flat_directions(verdicts):
    res = verdicts[(True, 0.5, 0.8)]
    h = res["hessian"]
    assert h["verdict"] == "local minimum (up to flat directions)"
    z = h["heldout_z"]  # 3 SE, Bonferroni-corrected for the candidate directions
    assert h["heldout_curvature"] + z * h["heldout_se"] >= 0  # no certified descent direction
    assert h["heldout_max_curvature"] - z * h["heldout_max_se"] > 0
    assert h["positive_space_split"]["embed.W_E"] > 0.9  # curved up only along W_E
    assert h["n_flat"] > h["n_params"] // 2  # most directions are flat within error
    assert res["proxy"] > 0  # the paper's proxy says minimum; the Hessian only that:
    assert res["agreement"] == "no negative curvature beyond sampling error"
    assert abs(res["loss_z"]) < 4 and res["gradient"]["ratio"] < 4


def test_untied_is_a_saddle_between_embedding_and_unembedding(verdicts):
    h = verdicts[(False, 0.5, 0.8)]["hessian"]
    assert h["verdict"] == "saddle"
    split = h["lambda_min_split"]
    assert split["embed.W_E"] > 0.3 and split["unembed.W_U"] > 0.3
    assert verdicts[(False, 0.5, 0.8)]["agreement"] == "agrees"


def test_the_flat_band_is_tightened_for_the_flat_cluster(verdicts):
    """Weyl's band is set by the noise of the curved directions; the exact report tightens it
    for the eigenvalues inside it (quadratic residual bound) and counts with the tighter band."""
    for res in verdicts.values():
        h = res["hessian"]
        d = h["flat_band_detail"]
        assert h["flat_band"] < h["flat_tol"] / 1.5
        assert h["flat_band"] == pytest.approx(
            2 * d["noise_within"] + (2 * d["noise_coupling"]) ** 2 / d["gap"]
        )
        assert h["n_flat"] + h["n_negative"] + h["n_positive"] == h["n_params"]
    h = verdicts[(True, 0.5, 0.8)]["hessian"]
    assert abs(h["lambda_min"]) < h["flat_band"]  # the verdict stands with the tighter band


def test_the_cluster_band_bounds_the_sampling_error_of_flat_eigenvalues():
    """A synthetic Hessian with known population H = diag(0 x 25, 10, 12, 14, 16, 18) and
    per-sample Hessians H_i = H + symmetric noise, 40x larger on the curved block: the sample
    eigenvalues of the flat cluster stay within the tightened band, which is >10x tighter than
    the Weyl band 2 ||E||."""
    gen = torch.Generator().manual_seed(0)
    P, n = 30, 400
    H = torch.diag(torch.cat([torch.zeros(P - 5), torch.tensor([10.0, 12, 14, 16, 18])]))
    scale = torch.full((P,), 0.05)
    scale[-5:] = 2.0
    noise = torch.randn(n, P, P, generator=gen) * torch.outer(scale, scale).sqrt()
    H_i = (H + (noise + noise.transpose(1, 2)) / 2).double()
    ev, V = torch.linalg.eigh(H_i.mean(0))

    class SignFlipped:  # sum_i (eps_i - mean eps) / n H_i, as HessianOperator would give
        def __init__(self):
            eps = torch.randint(0, 2, (n,), generator=gen).double() * 2 - 1
            self.M = torch.einsum("i,ijk->jk", (eps - eps.mean()) / n, H_i)

        def matvec(self, v):
            return self.M @ v

    noises = [SignFlipped() for _ in range(3)]
    cfg = LandscapeConfig()
    tol = cfg.flat_factor * sum(spectral_norm(e.matvec, P, 30, generator=gen) for e in noises) / 3
    band, detail = flat_cluster_band(ev, V, noises, tol, cfg, gen)
    flat = ev[ev.abs() <= tol]
    assert detail["cluster_size"] == len(flat) == P - 5
    assert flat.abs().max() <= band < tol / 10  # population eigenvalues there are all 0
    sample_error = torch.linalg.matrix_norm(H_i.mean(0) - H, 2)
    assert tol >= sample_error  # Weyl's band holds too, far wider


def test_lanczos_report_matches_the_exact_one():
    chain = BinaryChain(0.2, 0.3)
    model = theta_pi_model(tiny(), chain)
    tokens = sample_tokens(chain, 64, 8, seed=0, device="cpu")
    cfg = LandscapeConfig(n_sequences=64, method="exact", noise_draws=1, n_groups=4)
    exact = hessian_report(model, tokens, cfg)
    lz = hessian_report(model, tokens, LandscapeConfig(**{**cfg.to_dict(), "method": "lanczos"}))
    assert lz.method == "lanczos" and exact.method == "exact"
    assert lz.lambda_min == pytest.approx(exact.lambda_min, rel=1e-6)
    assert lz.lambda_max == pytest.approx(exact.lambda_max, rel=1e-6)
    assert lz.verdict == exact.verdict == "saddle"
    assert len(exact.eigenvalues) == exact.n_params


@pytest.mark.parametrize("method", ["exact", "lanczos"])
def test_the_hessian_prints_its_progress_in_hessian_vector_products(method, capsys):
    from training.progress import Counter

    chain = BinaryChain(0.2, 0.3)
    model = theta_pi_model(tiny(), chain)
    tokens = sample_tokens(chain, 16, 8, seed=0, device="cpu")
    cfg = LandscapeConfig(n_sequences=16, method=method, noise_draws=2, lanczos_iters=12)
    products = Counter("hessian", "Hessian-vector products", every=0)
    report = hessian_report(model, tokens, cfg, products)
    lines = capsys.readouterr().err.splitlines()
    assert products.done == report.n_hvp > 0
    assert products.total >= report.n_hvp  # the plan's upper bound (or the count, if above)
    counts = [ln for ln in lines if ln.startswith("hessian: ") and "Hessian-vector products" in ln]
    assert counts, lines
    done = [int(ln.split()[1].split("/")[0]) for ln in counts]
    assert done == sorted(done) and done[-1] == report.n_hvp
    assert any("(sampling noise, draw 2/2)" in ln for ln in counts)
    assert all(ln.endswith(" s") for ln in counts)
    quiet = Counter("hessian", "Hessian-vector products", every=600)  # a quick run: silent
    hessian_report(model, tokens, cfg, quiet)
    assert quiet.done == report.n_hvp and capsys.readouterr().err == ""


# ----------------------------------------------------------------------- proxy, predictions


def test_hessian_proxy_is_the_papers_formula():
    model = theta_pi_model(tiny(), BinaryChain(0.5, 0.8))
    W = model.pos_embed.W_pos[:8].detach().double()
    cov = torch.cov(W.T, correction=0)
    for p, q in [(0.5, 0.8), (0.2, 0.3)]:
        expected = torch.linalg.eigvalsh(2 * (p + q - 1) * torch.eye(4, dtype=W.dtype) + cov)[0]
        assert hessian_proxy(model, p, q, 8) == pytest.approx(float(expected), rel=1e-10)
        assert (hessian_proxy(model, p, q, 8) > 0) == (p + q > 1)


def test_predictions_and_agreement():
    assert paper_prediction(0.5, 0.8, True, 1) == "local minimum"
    assert paper_prediction(0.2, 0.3, True, 1) == "saddle"
    assert paper_prediction(0.5, 0.8, False, 1) == "saddle"
    assert paper_prediction(0.5, 0.8, True, 2) is None
    assert paper_prediction(0.4, 0.6, True, 2).startswith("global minimum")
    # v1 counted this as agreeing although the flat band (+-1.2) dwarfed lambda_min
    flat = "local minimum (up to flat directions)"
    for prediction in ("local minimum", "saddle"):
        assert agreement(flat, prediction) == "no negative curvature beyond sampling error"
    assert agreement("local minimum", "local minimum") == "agrees"
    assert agreement("saddle", "local minimum") == "disagrees"
    assert agreement("degenerate (flat)", "saddle") == "undecided"
    assert agreement("saddle", None) == "no prediction"


def test_config_validation():
    with pytest.raises(ValueError, match="method"):
        LandscapeConfig(method="power")
    with pytest.raises(ValueError, match="n_groups"):
        LandscapeConfig(n_groups=1)
    with pytest.raises(ValueError, match="n_sequences"):
        LandscapeConfig(n_sequences=4)
    with pytest.raises(ValueError, match="unknown landscape config keys"):
        LandscapeConfig.from_dict({"n_seqs": 3})
    cfg = LandscapeConfig(include="blocks.*")
    assert cfg.include == ["blocks.*"] and LandscapeConfig.from_dict(cfg.to_dict()) == cfg


# ------------------------------------------------------------------------------------ CLI


def test_cli_theta_pi_writes_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "tp"
    argv = [
        "landscape",
        "--theta-pi",
        "--p",
        "0.2",
        "--q",
        "0.3",
        "--d-model",
        "4",
        "--n-ctx",
        "6",
        "--n-sequences",
        "48",
        "--points",
        "5",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "verdict: saddle" in capsys.readouterr().out
    res = json.loads((out / "theta_pi.json").read_text())
    assert res["hessian"]["verdict"] == "saddle" and res["surface_eigen"]["kind"] == "eigen"
    assert (out / "hessian_spectrum.png").exists() and (out / "surface_eigen.png").exists()
    assert main(argv) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err


def test_cli_grid_and_reduced(tmp_path, capsys):
    grid = tmp_path / "grid"
    assert (
        main(
            [
                "landscape",
                "--grid",
                "--p",
                "0.2",
                "--q",
                "0.3",
                "--archs",
                "untied-1",
                "--d-model",
                "4",
                "--n-ctx",
                "6",
                "--n-sequences",
                "48",
                "--out",
                str(grid),
            ]
        )
        == 0
    )
    rows = json.loads((grid / "grid.json").read_text())["rows"]
    assert [(r["architecture"], r["verdict"]) for r in rows] == [("untied-1", "saddle")]
    assert "| untied-1 | 0.2 | 0.3 |" in (grid / "grid.md").read_text()
    assert (grid / "grid.png").exists()
    red = tmp_path / "red"
    assert main(["landscape", "--reduced", "--p", "0.5", "--q", "0.8", "--out", str(red)]) == 0
    res = json.loads((red / "reduced.json").read_text())
    ends = {(f["w0"] > -0.7071, f["e0"] == pytest.approx(0.05)): f["end"] for f in res["flows"]}
    assert ends[(True, True)] == "unigram" and ends[(False, True)] == "global minimum"
    assert max(f["energy_drift"] for f in res["flows"]) < 1e-6


def test_cli_run_dir_mode_on_a_trained_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = ModelConfig.paper(d_model=4, n_ctx=16)
    tc = TrainConfig(
        iters=24,
        batch=8,
        seq_len=16,
        lr=1e-2,
        eval_every=8,
        eval_batches=1,
        save_every=0,
        device="cpu",
    )
    train(cfg, BinaryChain(0.5, 0.8), tc, seed=0, out_dir=run_dir, progress=False)
    assert (
        main(
            [
                "landscape",
                str(run_dir),
                "--n-sequences",
                "32",
                "--points",
                "5",
                "--plane",
                "anchors",
            ]
        )
        == 0
    )
    out = run_dir / "landscape"
    res = json.loads((out / "landscape.json").read_text())
    assert res["step"] == 24 and res["hessian"]["n_params"] > 0
    line = res["line_theta_pi_to_final"]
    assert line["labels"] == ["theta_pi", "final"] and 0.0 in line["alphas"]
    traj = res["trajectory"]
    assert traj["steps"][0] == 0 and traj["steps"][-1] == 24
    # The anchors plane contains the first and the final checkpoints exactly.
    assert traj["coords"][0] == pytest.approx([0.0, 1.0], abs=1e-9)
    assert traj["coords"][-1] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert traj["off_plane"][0] < 1e-9
    for name in ("hessian_spectrum.png", "line_theta_pi_to_final.png", "surface.png"):
        assert (out / name).exists()
    assert (
        main(
            [
                "landscape",
                str(run_dir),
                "--plane",
                "pca",
                "--n-sequences",
                "16",
                "--points",
                "3",
                "--out",
                str(tmp_path / "pca"),
            ]
        )
        == 0
    )


def test_cli_input_errors(tmp_path, capsys):
    assert main(["landscape", "--out", str(tmp_path / "x")]) == 2
    assert "give exactly one of RUN_DIR" in capsys.readouterr().err
    assert (
        main(["landscape", "--theta-pi", "--p", "1.5", "--q", "0.3", "--out", str(tmp_path / "y")])
        == 2
    )
    assert "probabilities in (0, 1)" in capsys.readouterr().err
    assert main(["landscape", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["landscape", "--reduced", "--p", "0.5", "--q", "0.8"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
    assert main(["landscape", str(tmp_path), "--p", "0.5"]) == 2
    assert "drop --p/--q" in capsys.readouterr().err
    assert main(["landscape", "--reduced", "--p", "0.5", "--q", "0.8", "--step", "3"]) == 2
    assert "needs RUN_DIR" in capsys.readouterr().err
    out = tmp_path / "z"
    args = ["landscape", "--theta-pi", "--p", "0.5", "--q", "0.8", "--out", str(out)]
    assert main(args + ["--n-sequences", "0"]) == 2  # v1: silently 2048
    assert "--n-sequences must be >= 1, got 0" in capsys.readouterr().err
    assert not out.exists()


def test_init_escape_study_counts_the_trainers_verdicts():
    from interp.landscape import init_escape_study

    chain = BinaryChain(0.5, 0.8)
    cfg = ModelConfig.paper(d_model=4, n_ctx=16)
    tc = TrainConfig(
        iters=12,
        batch=4,
        seq_len=16,
        eval_every=6,
        eval_batches=1,
        save_every=0,
        checkpoints_per_octave=0,
        device="cpu",
    )
    study = init_escape_study(chain, cfg, tc, seeds=[0, 1], inits=("paper", "good"))
    assert [(r["init"], r["seed"]) for r in study["rows"]] == [
        ("paper", 0),
        ("paper", 1),
        ("good", 0),
        ("good", 1),
    ]
    for init in ("paper", "good"):
        assert sum(study["fractions"][init].values()) == pytest.approx(1.0)
    again = train(
        ModelConfig.from_dict({**cfg.to_dict(), "init": "good"}), chain, tc, seed=1, progress=False
    )
    assert again["final_eval_loss"] == study["rows"][3]["final_eval_loss"]  # seeded
    with pytest.raises(ValueError, match="seeds"):
        init_escape_study(chain, cfg, tc, seeds=[])
