"""interp.hessian: parameter layouts, exact Hessians, Lanczos, HVP operators, curvatures.

Checked against answers known in closed form: a quadratic with a known spectrum and the
reduced model's analytic Hessian; and Lanczos against the exact Hessian of a small model.
"""

import math

import pytest
import torch

from interp.hessian import (
    HessianOperator,
    ParamLayout,
    dense_matvec,
    exact_hessian,
    lanczos,
    mean_loss_fn,
    sequence_curvatures,
    set_params,
    spectral_norm,
)
from interp.reduced_model import ReducedModel
from tests.tiny_runs import one_thread
from training.chains import BinaryChain
from training.config import ModelConfig
from training.model import MarkovTransformer

pytestmark = pytest.mark.usefixtures("one_thread")


def known_spectrum(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A symmetric matrix Q diag(ev) Q^T with distinct eigenvalues of both signs."""
    ev = torch.linspace(-3.0, 5.0, n, dtype=torch.float64) + 0.01 * torch.arange(n) ** 1.5
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return Q @ torch.diag(ev) @ Q.T, ev.sort().values


def small_model(seed: int = 0, **kw) -> MarkovTransformer:
    cfg = ModelConfig.paper(d_model=4, n_ctx=6, d_mlp=4, init_range=0.5, **kw)
    model = MarkovTransformer(cfg, seed=seed).double()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ------------------------------------------------------------------------ quadratic, closed form


def test_exact_hessian_of_a_quadratic(gen):
    A, _ = known_spectrum(12, gen)
    b = torch.randn(12, generator=gen, dtype=torch.float64)

    def f(x):
        return 0.5 * x @ A @ x + b @ x + torch.sin(torch.zeros((), dtype=x.dtype))

    x = torch.randn(12, generator=gen, dtype=torch.float64)
    for chunk in (None, 5):
        torch.testing.assert_close(exact_hessian(f, x, chunk), A, atol=1e-12, rtol=0)


def test_lanczos_full_run_recovers_every_eigenvalue(gen):
    A, ev = known_spectrum(40, gen)
    res = lanczos(dense_matvec(A), 40, 40, generator=gen)
    assert res.n_iter == 40
    torch.testing.assert_close(res.values, ev, atol=1e-9, rtol=0)
    # Ritz vectors are eigenvectors: A y = theta y.
    resid = A @ res.vectors - res.vectors * res.values
    assert resid.norm(dim=0).max() < 1e-8


def test_lanczos_extremes_converge_first_without_ghost_copies(gen):
    # A bulk in [-1, 1] and isolated extremes -3 and 5 (as a Hessian with a few curved
    # directions and many nearly flat ones).
    ev = (
        torch.cat(
            [torch.tensor([-3.0, 5.0], dtype=torch.float64), torch.linspace(-1, 1, 198).double()]
        )
        .sort()
        .values
    )
    Q, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen, dtype=torch.float64))
    A = Q @ torch.diag(ev) @ Q.T
    res = lanczos(dense_matvec(A), 200, 60, generator=gen)
    assert res.n_iter == 60
    # The extreme Ritz values are within their residual norms of the true extremes.
    assert abs(res.values[0] - ev[0]) <= res.residuals[0] + 1e-10
    assert abs(res.values[-1] - ev[-1]) <= res.residuals[-1] + 1e-10
    assert res.residuals[0] < 1e-6 and res.residuals[-1] < 1e-6
    # Full reorthogonalisation: no spurious second copy of a converged extreme eigenvalue.
    assert int((res.values - ev[-1]).abs().lt(1e-6).sum()) == 1
    assert spectral_norm(dense_matvec(A), 200, 60, generator=gen) == pytest.approx(
        float(ev.abs().max()), rel=1e-6
    )


def test_lanczos_stops_on_an_invariant_subspace():
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    v0 = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)  # spans only 2 eigenvectors
    res = lanczos(dense_matvec(A), 4, 10, v0=v0)
    assert res.n_iter == 2
    torch.testing.assert_close(res.values, torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_lanczos_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_iter"):
        lanczos(lambda v: v, 3, 0)
    with pytest.raises(ValueError, match="dim"):
        lanczos(lambda v: v, 0, 3)


# --------------------------------------------------------------------- reduced model, closed form


@pytest.mark.parametrize("p,q", [(0.5, 0.8), (0.2, 0.3)])
def test_exact_and_lanczos_hessians_match_the_reduced_models_analytic_one(p, q, gen):
    model = ReducedModel(p, q)

    def f(theta):
        return model.loss(theta[0], theta[1], theta[2])

    points = [(0.7, -0.3, 0.2), (1.3, 0.9, -0.5), (0.0, -1.1, 0.4), (0.4, -1 / math.sqrt(2), 0.0)]
    for e, w, b in points:
        theta = torch.tensor([e, w, b], dtype=torch.float64)
        H = model.analytic_hessian(e, w, b)
        torch.testing.assert_close(exact_hessian(f, theta), H, atol=1e-12, rtol=1e-10)

        def hvp(v, theta=theta):
            x = theta.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(f(x), x, create_graph=True)
            return torch.autograd.grad(g, x, v)[0]

        res = lanczos(hvp, 3, 3, generator=gen)
        torch.testing.assert_close(res.values, torch.linalg.eigvalsh(H), atol=1e-10, rtol=0)


# ------------------------------------------------------------------------------ layouts


def test_layout_roundtrip_patterns_and_tie():
    tied = small_model()
    layout = ParamLayout.from_model(tied)
    assert "unembed.W_U" not in layout.names  # tied: W_U is embed.W_E, one Parameter
    assert layout.size == sum(p.numel() for p in tied.parameters())
    theta = layout.flatten(tied)
    params = layout.unflatten(theta)
    for name, p in tied.named_parameters():
        torch.testing.assert_close(params[name], p)
    split = layout.split(theta)
    assert sum(split.values()) == pytest.approx(1.0)
    attn = ParamLayout.from_model(tied, ["blocks.*.attn.*", "unembed.b_U"])
    assert attn.names == (
        "blocks.0.attn.W_Q",
        "blocks.0.attn.W_K",
        "blocks.0.attn.W_V",
        "blocks.0.attn.W_O",
        "unembed.b_U",
    )
    untied = small_model(tie_embeddings=False)
    assert "unembed.W_U" in ParamLayout.from_model(untied).names
    with pytest.raises(ValueError, match="matches no parameter"):
        ParamLayout.from_model(tied, ["blocks.*.nope"])
    with pytest.raises(ValueError, match="entries"):
        layout.unflatten(theta[:-1])
    other = small_model(seed=1)
    set_params(other, layout, theta)
    torch.testing.assert_close(ParamLayout.from_model(other).flatten(other), theta)


# ----------------------------------------------------------------- a small transformer


@pytest.fixture(scope="module")
def small_problem():
    model = small_model(seed=3)
    tokens = BinaryChain(0.3, 0.6).sample(48, 6, generator=torch.Generator().manual_seed(1))
    layout = ParamLayout.from_model(model)
    theta = layout.flatten(model)
    with one_thread():
        H = exact_hessian(mean_loss_fn(model, layout, tokens), theta)
    return model, tokens, layout, theta, H


def test_lanczos_on_hvps_agrees_with_the_exact_hessian(small_problem, gen):
    model, tokens, layout, theta, H = small_problem
    op = HessianOperator(model, layout, theta, tokens)
    v = torch.randn(layout.size, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(op.dense(), H, atol=1e-10, rtol=1e-8)
    ev = torch.linalg.eigvalsh(H)
    res = lanczos(op.matvec, layout.size, 60, generator=gen)
    # Extreme eigenvalues agree (well separated here: the model is far from theta_pi).
    assert res.values[0] == pytest.approx(float(ev[0]), abs=1e-6 * float(ev.abs().max()))
    assert res.values[-1] == pytest.approx(float(ev[-1]), rel=1e-8)


def test_weighted_operators_are_linear_in_the_weights(small_problem, gen):
    model, tokens, layout, theta, H = small_problem
    n, half = tokens.shape[0], tokens.shape[0] // 2
    H_a = HessianOperator(model, layout, theta, tokens[:half]).dense()
    w_b = torch.zeros(n, dtype=torch.float64)
    w_b[half:] = 1.0 / (n - half)
    H_b = HessianOperator(model, layout, theta, tokens, w_b).dense()
    torch.testing.assert_close((half * H_a + (n - half) * H_b) / n, H, atol=1e-10, rtol=1e-8)
    with pytest.raises(ValueError, match="weights must have shape"):
        HessianOperator(model, layout, theta, tokens, torch.ones(3, dtype=torch.float64))


def test_sequence_curvatures_average_to_the_rayleigh_quotient(small_problem, gen):
    model, tokens, layout, theta, H = small_problem
    v = torch.randn(layout.size, generator=gen, dtype=torch.float64)
    c = sequence_curvatures(model, layout, theta, tokens, v, batch_size=20)
    assert c.shape == (tokens.shape[0],)
    assert float(c.mean()) == pytest.approx(float(v @ H @ v), rel=1e-9)
    V = torch.randn(3, layout.size, generator=gen, dtype=torch.float64)
    C = sequence_curvatures(model, layout, theta, tokens, V, batch_size=20)
    assert C.shape == (3, tokens.shape[0])
    torch.testing.assert_close(C.mean(1), torch.einsum("kp,pq,kq->k", V, H, V))
