"""The loss along lines and planes in parameter space, and training trajectories on them.

- `line_path`: the loss on the straight line theta_a + alpha (theta_b - theta_a) between two
  points (two checkpoints, or theta_pi and a trained model).
- `filter_normalized_direction` (Li et al. 2018, "Visualizing the loss landscape of neural
  nets"): a Gaussian direction rescaled filter by filter to the norm of the point's filter, so
  that a step of 1 is comparable across layers of different scale.
- `loss_surface`: the loss on the plane center + alpha d1 + beta d2 (random filter-normalised
  directions; the directions towards two anchor points such as theta_pi and a kernel
  solution; or the top principal directions of a trajectory).
- `project_onto_plane`: least-squares coordinates of checkpoints on such a plane, with the
  share of each point's offset that lies off the plane (so a trajectory drawn on a contour
  plot says how faithful it is).

Every grid is evaluated with torch.func.vmap over the parameter sets and functional_call
(chunked), the losses are per-sequence means, and each point carries its standard error.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.func import functional_call, vmap

from interp.hessian import ParamLayout

EMBEDDING_TABLES = ("W_E", "W_pos")


@dataclass
class PointLosses:
    """Mean loss (nats) over the sample at each of G parameter sets, and its standard error."""

    mean: Float[Tensor, " G"]
    se: Float[Tensor, " G"]


def losses_at(
    model: nn.Module,
    layout: ParamLayout,
    thetas: Float[Tensor, "G P"],
    tokens: Int[Tensor, "n pos"],
    chunk_size: int = 8,
    batch_size: int = 512,
) -> PointLosses:
    """The loss at every parameter vector thetas[g]: vmap over the parameter sets (chunk_size
    at a time) of functional_call on batches of batch_size sequences."""
    if thetas.ndim != 2 or thetas.shape[1] != layout.size:
        raise ValueError(f"thetas must have shape [G, {layout.size}], got {tuple(thetas.shape)}")
    dtype = next(iter(model.parameters())).dtype
    thetas = thetas.to(dtype=dtype, device=tokens.device)

    def per_sequence(theta: Tensor, chunk: Tensor) -> Tensor:
        out = functional_call(
            model, layout.unflatten(theta), (chunk,), {"return_type": "per_token_loss"}
        )
        return out.mean(-1)

    batched = vmap(per_sequence, in_dims=(0, None), chunk_size=chunk_size)
    with torch.no_grad():
        per_seq = torch.cat([batched(thetas, chunk) for chunk in tokens.split(batch_size)], 1)
    per_seq = per_seq.double()
    n = per_seq.shape[1]
    se = (
        per_seq.std(1, unbiased=True) / math.sqrt(n)
        if n > 1
        else torch.full_like(per_seq[:, 0], float("nan"))
    )
    return PointLosses(per_seq.mean(1).cpu(), se.cpu())


# ------------------------------------------------------------------------------------ lines


@dataclass
class LinePath:
    """Loss along theta_a + alpha (theta_b - theta_a): alphas [A], losses and SEs [A] (nats);
    distance = ||theta_b - theta_a||."""

    alphas: list[float]
    losses: list[float]
    se: list[float]
    distance: float
    labels: tuple[str, str] = ("a", "b")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def barrier(self) -> float:
        """Highest loss on the segment 0 <= alpha <= 1 minus the larger endpoint loss (nats,
        >= 0; 0 means no barrier between the two points at this resolution)."""
        inside = [loss for a, loss in zip(self.alphas, self.losses, strict=True) if 0 <= a <= 1]
        ends = [loss for a, loss in zip(self.alphas, self.losses, strict=True) if a in (0.0, 1.0)]
        return max(inside) - max(ends)


def line_path(
    model: nn.Module,
    layout: ParamLayout,
    theta_a: Float[Tensor, " P"],
    theta_b: Float[Tensor, " P"],
    tokens: Int[Tensor, "n pos"],
    n_points: int = 21,
    extend: float = 0.0,
    labels: tuple[str, str] = ("a", "b"),
    chunk_size: int = 8,
) -> LinePath:
    """The loss at n_points evenly spaced alphas in [-extend, 1 + extend] (0 and 1 included
    when the spacing allows) on the line from theta_a (alpha 0) to theta_b (alpha 1)."""
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    if extend < 0:
        raise ValueError(f"extend must be >= 0, got {extend}")
    alphas = torch.linspace(-extend, 1 + extend, n_points, dtype=torch.float64)
    alphas = torch.unique(torch.cat([alphas, torch.tensor([0.0, 1.0], dtype=torch.float64)]))
    a, b = theta_a.double().cpu(), theta_b.double().cpu()
    thetas = a + alphas[:, None] * (b - a)
    res = losses_at(model, layout, thetas, tokens, chunk_size)
    return LinePath(
        alphas.tolist(), res.mean.tolist(), res.se.tolist(), float((b - a).norm()), labels
    )


# ------------------------------------------------------------------------------- directions


def filter_slices(layout: ParamLayout) -> dict[str, int]:
    """For each parameter, the dimension its filters are normed over: the last dimension
    (d_model) for the embedding tables W_E and W_pos (a filter is one token's or position's
    vector), the input dimension (-2) for the x @ W matrices (a filter is the weights into one
    output unit), and None for 1-D parameters (biases, LayerNorm weights)."""
    out = {}
    for name, shape in zip(layout.names, layout.shapes, strict=True):
        leaf = name.split(".")[-1]
        if len(shape) < 2:
            out[name] = None
        elif leaf in EMBEDDING_TABLES:
            out[name] = -1
        else:
            out[name] = -2
    return out


def filter_normalize(
    layout: ParamLayout,
    direction: Float[Tensor, " P"],
    theta: Float[Tensor, " P"],
    ignore_1d: bool = True,
) -> Float[Tensor, " P"]:
    """Rescale every filter of `direction` to the norm of the same filter of theta (Li et al.
    2018). 1-D parameters get a zero direction (ignore_1d, as Li et al. do for biases and
    normalisation weights) or are rescaled as one filter."""
    d = layout.unflatten(direction.clone())
    t = layout.unflatten(theta)
    dims = filter_slices(layout)
    out = {}
    for name in layout.names:
        dim = dims[name]
        if dim is None:
            if ignore_1d:
                out[name] = torch.zeros_like(d[name])
            else:
                out[name] = d[name] * t[name].norm() / d[name].norm().clamp_min(1e-30)
            continue
        scale = t[name].norm(dim=dim, keepdim=True) / d[name].norm(dim=dim, keepdim=True).clamp_min(
            1e-30
        )
        out[name] = d[name] * scale
    return layout.flatten(out)


def filter_normalized_direction(
    layout: ParamLayout,
    theta: Float[Tensor, " P"],
    generator: torch.Generator | None = None,
    ignore_1d: bool = True,
) -> Float[Tensor, " P"]:
    """A random Gaussian direction, filter-normalised to theta (Li et al. 2018)."""
    d = torch.randn(layout.size, generator=generator, dtype=torch.float64)
    return filter_normalize(layout, d, theta.double().cpu(), ignore_1d)


def pca_directions(
    points: Float[Tensor, "T P"], center: Float[Tensor, " P"]
) -> tuple[Tensor, Tensor, list[float]]:
    """The top two principal directions (unit vectors) of the offsets points - center, and the
    share of the offsets' total squared norm each explains (Li et al. 2018, section 7)."""
    X = (points - center).double()
    if X.shape[0] < 2:
        raise ValueError(f"PCA directions need at least 2 points, got {X.shape[0]}")
    _, S, Vh = torch.linalg.svd(X, full_matrices=False)
    total = float(S.pow(2).sum()) or 1.0
    return Vh[0], Vh[1], [float(S[0] ** 2) / total, float(S[1] ** 2) / total]


@dataclass
class Projection:
    """Coordinates [T, 2] of points on the plane center + a d1 + b d2 (least squares) and, per
    point, the share ||residual|| / ||point - center|| of its offset that lies off the plane."""

    coords: Float[Tensor, "T 2"]
    off_plane: Float[Tensor, " T"]


def project_onto_plane(
    points: Float[Tensor, "T P"],
    center: Float[Tensor, " P"],
    d1: Float[Tensor, " P"],
    d2: Float[Tensor, " P"],
) -> Projection:
    """Least-squares coordinates of points on the (not necessarily orthogonal) plane."""
    D = torch.stack([d1, d2], 1).double()  # [P, 2]
    X = (points - center).double()  # [T, P]
    gram = D.T @ D
    if torch.linalg.matrix_rank(gram) < 2:
        raise ValueError("the two plane directions are parallel (or zero)")
    coords = torch.linalg.solve(gram, D.T @ X.T).T
    resid = X - coords @ D.T
    norms = X.norm(dim=1)
    off = torch.where(norms > 0, resid.norm(dim=1) / norms.clamp_min(1e-300), 0.0)
    return Projection(coords, off)


# ---------------------------------------------------------------------------------- surfaces


@dataclass
class Surface:
    """Loss on the plane center + alpha d1 + beta d2: losses and se [len(betas), len(alphas)]
    (row = beta), nats. d1_norm, d2_norm: lengths of the directions in parameter space."""

    alphas: list[float]
    betas: list[float]
    losses: list[list[float]]
    se: list[list[float]]
    d1_norm: float
    d2_norm: float
    kind: str = "random"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def loss_surface(
    model: nn.Module,
    layout: ParamLayout,
    center: Float[Tensor, " P"],
    d1: Float[Tensor, " P"],
    d2: Float[Tensor, " P"],
    tokens: Int[Tensor, "n pos"],
    alphas: list[float] | Tensor,
    betas: list[float] | Tensor,
    kind: str = "random",
    chunk_size: int = 8,
) -> Surface:
    """The loss at every grid point center + alpha d1 + beta d2 (vectorised over the grid)."""
    a = torch.as_tensor(alphas, dtype=torch.float64)
    b = torch.as_tensor(betas, dtype=torch.float64)
    if a.ndim != 1 or b.ndim != 1 or not len(a) or not len(b):
        raise ValueError("alphas and betas must be non-empty 1-D sequences")
    c, u, v = center.double().cpu(), d1.double().cpu(), d2.double().cpu()
    BB, AA = torch.meshgrid(b, a, indexing="ij")
    thetas = c + AA.reshape(-1, 1) * u + BB.reshape(-1, 1) * v
    res = losses_at(model, layout, thetas, tokens, chunk_size)
    shape = (len(b), len(a))
    return Surface(
        a.tolist(),
        b.tolist(),
        res.mean.reshape(shape).tolist(),
        res.se.reshape(shape).tolist(),
        float(u.norm()),
        float(v.norm()),
        kind,
    )


# ------------------------------------------------------------------------------------- plots


def plot_line(
    path: LinePath, ax=None, references: dict[str, float] | None = None, title: str | None = None
):
    """Loss along a line with a +-2 SE band and horizontal reference losses."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    if ax is None:
        ax = Figure(layout="constrained", figsize=(5.5, 3.4)).subplots()
    a = torch.tensor(path.alphas)
    m = torch.tensor(path.losses)
    s = torch.tensor(path.se)
    ax.plot(a, m, "-o", ms=3, label="loss")
    ax.fill_between(a, m - 2 * s, m + 2 * s, alpha=0.25, label="+-2 SE")
    for i, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, ls="--", lw=0.8, color=f"C{i + 1}", label=f"{name} {value:.3f}")
    ax.set_xticks(sorted({0.0, 1.0, *ax.get_xticks()}))
    ax.set_xlim(a.min(), a.max())
    ax.set_xlabel(f"alpha ({path.labels[0]} = 0, {path.labels[1]} = 1)")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title or f"loss from {path.labels[0]} to {path.labels[1]}", fontsize=9)
    ax.legend(fontsize=7)
    return ax


def plot_surface(
    surface: Surface,
    ax=None,
    trajectory: Projection | None = None,
    trajectory_labels: list[str] | None = None,
    points: dict[str, tuple[float, float]] | None = None,
    references: dict[str, float] | None = None,
    n_levels: int = 25,
    title: str | None = None,
):
    """Filled contours of a loss surface; reference losses as labelled contour lines; the
    projected trajectory (colour = order) and named points. Labels never overlap: the named
    points' and the contour labels are kept, then the trajectory's from its last point back,
    each only where it overlaps none already kept (checkpoints crowd near the end)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    if ax is None:
        ax = Figure(layout="constrained", figsize=(5.5, 4.6)).subplots()
    fixed, optional = [], []  # labels kept whatever; labels dropped where they would overlap
    A = torch.tensor(surface.alphas)
    B = torch.tensor(surface.betas)
    L = torch.tensor(surface.losses)
    lo, hi = float(L.min()), float(L.quantile(0.95))
    levels = torch.linspace(lo, max(hi, lo + 1e-9), n_levels).tolist()
    cs = ax.contourf(A, B, L.clamp(max=hi), levels=levels, cmap="viridis")
    ax.figure.colorbar(cs, ax=ax, label="loss (nats)")
    for i, (name, value) in enumerate((references or {}).items()):
        if lo < value < float(L.max()):
            c = ax.contour(A, B, L, levels=[value], colors=[f"C{i + 1}"], linewidths=1.2)
            fixed += ax.clabel(c, fmt={value: name}, fontsize=7)
    if trajectory is not None:
        xy = trajectory.coords
        ax.plot(xy[:, 0], xy[:, 1], "-", color="w", lw=1)
        ax.scatter(xy[:, 0], xy[:, 1], c=range(len(xy)), cmap="autumn", s=14, zorder=3)
        if trajectory_labels:
            for (x, y), lab in zip(xy.tolist(), trajectory_labels, strict=True):
                optional.append(ax.annotate(lab, (x, y), fontsize=6, color="w"))
    for name, (x, y) in (points or {}).items():
        ax.plot([x], [y], "k*", ms=9)
        fixed.append(
            ax.annotate(name, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
        )
    ax.set_xlabel(f"alpha (|d1| = {surface.d1_norm:.3g})")
    ax.set_ylabel(f"beta (|d2| = {surface.d2_norm:.3g})")
    ax.set_title(title or f"loss surface ({surface.kind} directions)", fontsize=9)
    drop_overlapping_labels(ax, fixed, optional[::-1])
    return ax


def drop_overlapping_labels(ax, fixed: list, optional: list, pad: float = 1.0) -> None:
    """Hide each text of ``optional`` (in order) that overlaps a text of ``fixed`` or one of
    ``optional`` kept before it (boxes as drawn, grown by ``pad`` pixels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = ax.figure
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()  # the final layout, so the boxes are where the figure will show them
    renderer = canvas.get_renderer()
    kept = [t.get_window_extent(renderer).expanded(1, 1).padded(pad) for t in fixed]
    for text in optional:
        box = text.get_window_extent(renderer).padded(pad)
        if any(box.overlaps(other) for other in kept):
            text.set_visible(False)
        else:
            kept.append(box)


def run_trajectory(run, layout: ParamLayout | None = None, device="cpu"):
    """(steps, thetas [T, P], layout) of every checkpoint of a `training.runs.Run`, in order."""
    steps = run.checkpoint_steps()
    if not steps:
        raise FileNotFoundError(f"run {run.path} has no checkpoints")
    thetas = []
    for step in steps:
        model = run.model(step, device=device)
        layout = layout or ParamLayout.from_model(model)
        thetas.append(layout.flatten(model).double().cpu())
    return steps, torch.stack(thetas), layout
