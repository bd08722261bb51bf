"""interp.paths: vectorised loss evaluation, lines, filter-normalised directions, planes."""

import pytest
import torch

from interp.hessian import ParamLayout, set_params
from interp.landscape import population_loss
from interp.paths import (
    filter_normalize,
    filter_normalized_direction,
    line_path,
    loss_surface,
    losses_at,
    pca_directions,
    plot_line,
    plot_surface,
    project_onto_plane,
)
from training.chains import BinaryChain
from training.config import ModelConfig
from training.model import MarkovTransformer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    cfg = ModelConfig.paper(d_model=4, n_ctx=8, d_mlp=8, init_range=0.3)
    model = MarkovTransformer(cfg, seed=0).double()
    for p in model.parameters():
        p.requires_grad_(False)
    layout = ParamLayout.from_model(model)
    tokens = BinaryChain(0.5, 0.8).sample(64, 8, generator=torch.Generator().manual_seed(0))
    return model, layout, tokens


def loss_with(model, layout, theta, tokens):
    other = MarkovTransformer(model.cfg).double()
    set_params(other, layout, theta)
    return population_loss(other, tokens)


def test_vmapped_losses_equal_one_model_at_a_time(setup, gen):
    model, layout, tokens = setup
    theta = layout.flatten(model)
    thetas = theta + 0.2 * torch.randn(5, layout.size, generator=gen, dtype=torch.float64)
    res = losses_at(model, layout, thetas, tokens, chunk_size=2, batch_size=24)
    for g in range(5):
        ref = loss_with(model, layout, thetas[g], tokens)
        assert float(res.mean[g]) == pytest.approx(ref.mean, rel=1e-12)
        assert float(res.se[g]) == pytest.approx(ref.se, rel=1e-9)
    with pytest.raises(ValueError, match="thetas must have shape"):
        losses_at(model, layout, thetas[:, :-1], tokens)


def test_line_path_endpoints_and_barrier(setup, gen, tmp_path):
    model, layout, tokens = setup
    a = layout.flatten(model)
    b = a + 0.5 * torch.randn(layout.size, generator=gen, dtype=torch.float64)
    path = line_path(model, layout, a, b, tokens, n_points=6, extend=0.2, labels=("A", "B"))
    assert 0.0 in path.alphas and 1.0 in path.alphas and min(path.alphas) == pytest.approx(-0.2)
    assert path.losses[path.alphas.index(0.0)] == pytest.approx(
        loss_with(model, layout, a, tokens).mean, rel=1e-12
    )
    assert path.losses[path.alphas.index(1.0)] == pytest.approx(
        loss_with(model, layout, b, tokens).mean, rel=1e-12
    )
    assert path.distance == pytest.approx(float((b - a).norm()))
    inside = [x for al, x in zip(path.alphas, path.losses, strict=True) if 0 <= al <= 1]
    ends = max(path.losses[path.alphas.index(0.0)], path.losses[path.alphas.index(1.0)])
    assert path.barrier() == pytest.approx(max(inside) - ends) and path.barrier() >= 0
    ax = plot_line(path, references={"unigram": 0.666})
    ax.figure.savefig(tmp_path / "line.png")
    with pytest.raises(ValueError, match="n_points"):
        line_path(model, layout, a, b, tokens, n_points=1)


def test_filter_normalisation_matches_filter_norms(setup, gen):
    model, layout, _ = setup
    theta = layout.flatten(model)
    d = filter_normalized_direction(layout, theta, gen)
    D, T = layout.unflatten(d), layout.unflatten(theta)
    # Embedding tables: one filter per row (token / position).
    torch.testing.assert_close(D["embed.W_E"].norm(dim=-1), T["embed.W_E"].norm(dim=-1))
    torch.testing.assert_close(D["pos_embed.W_pos"].norm(dim=-1), T["pos_embed.W_pos"].norm(dim=-1))
    # x @ W matrices: one filter per output unit (norm over the input dimension).
    for name in ("blocks.0.attn.W_Q", "blocks.0.attn.W_O", "blocks.0.mlp.W_in"):
        torch.testing.assert_close(D[name].norm(dim=-2), T[name].norm(dim=-2))
    # 1-D parameters (LayerNorm weights, biases) are left out by default ...
    assert D["ln_final.w"].abs().sum() == 0 and D["unembed.b_U"].abs().sum() == 0
    # ... or rescaled as one filter.
    full = layout.unflatten(filter_normalize(layout, torch.randn_like(theta), theta, False))
    assert float(full["ln_final.w"].norm()) == pytest.approx(float(T["ln_final.w"].norm()))


def test_projection_recovers_in_plane_coordinates(gen):
    P = 30
    center = torch.randn(P, generator=gen, dtype=torch.float64)
    d1 = torch.randn(P, generator=gen, dtype=torch.float64)
    d2 = d1 + torch.randn(P, generator=gen, dtype=torch.float64)  # not orthogonal
    coords = torch.randn(7, 2, generator=gen, dtype=torch.float64)
    points = center + coords[:, :1] * d1 + coords[:, 1:] * d2
    proj = project_onto_plane(points, center, d1, d2)
    torch.testing.assert_close(proj.coords, coords)
    assert proj.off_plane.max() < 1e-10
    normal = torch.randn(P, generator=gen, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.stack([d1, d2], 1))
    normal = normal - basis @ (basis.T @ normal)
    off = project_onto_plane((center + normal)[None], center, d1, d2)
    assert float(off.off_plane[0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="parallel"):
        project_onto_plane(points, center, d1, 2 * d1)
    u, v, shares = pca_directions(points, center)
    assert shares[0] + shares[1] == pytest.approx(1.0)  # the points span exactly a plane
    assert float(u @ v) == pytest.approx(0.0, abs=1e-12)


def test_surface_through_anchors(setup, gen, tmp_path):
    model, layout, tokens = setup
    c = layout.flatten(model)
    a = c + 0.3 * torch.randn(layout.size, generator=gen, dtype=torch.float64)
    b = c + 0.3 * torch.randn(layout.size, generator=gen, dtype=torch.float64)
    grid = [-0.5, 0.0, 1.0]
    surf = loss_surface(model, layout, c, a - c, b - c, tokens, grid, grid, "anchors")
    L = torch.tensor(surf.losses, dtype=torch.float64)
    assert L.shape == (3, 3)
    assert float(L[1, 1]) == pytest.approx(loss_with(model, layout, c, tokens).mean, rel=1e-12)
    assert float(L[1, 2]) == pytest.approx(loss_with(model, layout, a, tokens).mean, rel=1e-12)
    assert float(L[2, 1]) == pytest.approx(loss_with(model, layout, b, tokens).mean, rel=1e-12)
    proj = project_onto_plane(torch.stack([c, a, b]), c, a - c, b - c)
    ax = plot_surface(
        surf,
        trajectory=proj,
        trajectory_labels=["c", "a", "b"],
        points={"a": (1.0, 0.0)},
        references={"x": float(L.mean())},
    )
    ax.figure.savefig(tmp_path / "surface.png")
    assert (tmp_path / "surface.png").stat().st_size > 0
    assert ax.get_xlabel().startswith("alpha (|d1| = ") and ax.get_ylabel().startswith("beta")
    texts = [t.get_text() for t in ax.texts]
    assert {"c", "a", "b"} <= set(texts) and "a" in texts  # trajectory and named points
    trajectory = ax.lines[0]
    assert list(trajectory.get_xdata()) == pytest.approx(proj.coords[:, 0].tolist())
    assert list(trajectory.get_ydata()) == pytest.approx(proj.coords[:, 1].tolist())


def test_surface_labels_do_not_overlap(setup):
    """Log-spaced checkpoints crowd near the final one: their step labels piled onto each
    other and onto the named points; now each label is shown only where it has room."""
    import itertools

    from interp.paths import Projection

    model, layout, tokens = setup
    c = layout.flatten(model)
    d1 = torch.zeros(layout.size, dtype=torch.float64)
    d2 = torch.zeros(layout.size, dtype=torch.float64)
    d1[0], d2[1] = 1.0, 1.0
    grid = torch.linspace(-1.0, 1.0, 5).tolist()
    surf = loss_surface(model, layout, c, d1, d2, tokens, grid, grid, "random")
    t = torch.tensor([0.8**k for k in range(30)], dtype=torch.float64)  # 1 -> 0.002
    coords = torch.stack([t, 0.5 * t], dim=1)  # ends at the final point (0, 0)
    proj = Projection(coords=coords, off_plane=torch.zeros(30, dtype=torch.float64))
    steps = [str(2**k) for k in range(30)]
    ax = plot_surface(surf, trajectory=proj, trajectory_labels=steps, points={"final": (0, 0)})
    renderer = ax.figure.canvas.get_renderer()
    shown = [x for x in ax.texts if x.get_visible() and x.get_text()]
    names = [x.get_text() for x in shown]
    assert "final" in names and steps[0] in names  # the named point, the first checkpoint
    assert 3 <= len(shown) < 31  # some steps stay labelled, the crowded ones are not
    boxes = [x.get_window_extent(renderer) for x in shown]
    for (a, ta), (b, tb) in itertools.combinations(zip(boxes, names, strict=True), 2):
        assert not a.overlaps(b), (ta, tb)
