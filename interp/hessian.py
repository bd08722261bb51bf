"""Hessians of a model's loss over a flattened parameter vector: exact and by Lanczos.

A `ParamLayout` names the parameters that form the vector theta (HookedTransformer names:
embed.W_E, blocks.0.attn.W_Q, unembed.b_U ...; a tied W_U is embed.W_E, one Parameter, so a
tied model keeps its tie in every direction). The loss at theta is evaluated with
`torch.func.functional_call`, the other parameters keep the module's values.

- `exact_hessian(f, theta)`: torch.func.hessian of a scalar f on the flat vector, [P, P].
- `HessianOperator`: the Hessian of a weighted sum of per-sequence losses as an operator:
  Hessian-vector products (HVPs) by double backward, or `.dense()` exactly. The weights
  select the full sample, one half of it, or a random-sign combination (the sampling noise).
- `lanczos(matvec, dim, n_iter)`: Lanczos with full reorthogonalisation (Ritz pairs and
  residual norms), for parameter counts where P x P is too big.
- `sequence_curvatures`: v^T (d^2 loss_i / d theta^2) v for every sequence i, by forward-mode
  differentiation twice: the per-sequence curvatures along a direction are independent
  across sequences, which gives standard errors without any assumption on the spectrum.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.func import functional_call, jvp, vmap

# ------------------------------------------------------------------------- parameter vectors


@dataclass(frozen=True)
class ParamLayout:
    """Which named parameters form the flat vector theta, in order, and their shapes."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def from_model(cls, model: nn.Module, include: Iterable[str] | None = None) -> ParamLayout:
        """Layout of `model`'s parameters (named_parameters order). `include`: names or
        fnmatch patterns ("blocks.*.attn.*"); None takes every parameter. ValueError names a
        pattern that matches nothing."""
        params = dict(model.named_parameters())
        if include is None:
            chosen = list(params)
        else:
            patterns = [include] if isinstance(include, str) else list(include)
            chosen = []
            for pattern in patterns:
                hits = [n for n in params if fnmatch.fnmatchcase(n, pattern)]
                if not hits:
                    raise ValueError(
                        f"parameter pattern {pattern!r} matches no parameter; the model has "
                        f"{sorted(params)}"
                    )
                chosen += [n for n in hits if n not in chosen]
            chosen = [n for n in params if n in chosen]  # keep the model's order
        if not chosen:
            raise ValueError("the parameter layout is empty")
        return cls(tuple(chosen), tuple(tuple(params[n].shape) for n in chosen))

    @property
    def numels(self) -> tuple[int, ...]:
        out = []
        for shape in self.shapes:
            n = 1
            for s in shape:
                n *= s
            out.append(n)
        return tuple(out)

    @property
    def size(self) -> int:
        """P, the length of theta."""
        return sum(self.numels)

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, n in zip(self.names, self.numels, strict=True):
            out[name] = slice(start, start + n)
            start += n
        return out

    def flatten(self, params: Mapping[str, Tensor] | nn.Module) -> Float[Tensor, " P"]:
        """theta from a module or a name -> tensor mapping (detached copy)."""
        if isinstance(params, nn.Module):
            params = dict(params.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ValueError(f"parameters {missing} are missing from the mapping")
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, theta: Float[Tensor, "*batch P"]) -> dict[str, Tensor]:
        """Name -> view of theta with the parameter's shape (leading batch dims kept)."""
        if theta.shape[-1] != self.size:
            raise ValueError(f"theta has {theta.shape[-1]} entries, the layout {self.size}")
        lead = tuple(theta.shape[:-1])
        return {
            name: theta[..., sl].reshape(lead + shape)
            for (name, sl), shape in zip(self.slices().items(), self.shapes, strict=True)
        }

    def split(self, vector: Float[Tensor, " P"]) -> dict[str, float]:
        """Share of vector's squared norm in each parameter (sums to 1)."""
        total = float(vector.pow(2).sum())
        if total == 0:
            return {name: 0.0 for name in self.names}
        return {n: float(vector[sl].pow(2).sum()) / total for n, sl in self.slices().items()}

    def to_dict(self) -> dict:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}


def set_params(model: nn.Module, layout: ParamLayout, theta: Float[Tensor, " P"]) -> nn.Module:
    """Copy theta into `model`'s parameters in place; returns the model."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in layout.unflatten(theta).items():
            params[name].copy_(value.to(params[name]))
    return model


def sequence_losses(
    model: nn.Module,
    layout: ParamLayout,
    theta: Float[Tensor, " P"],
    tokens: Int[Tensor, "batch pos"],
) -> Float[Tensor, " batch"]:
    """Mean next-token cross-entropy of each sequence (nats) with the parameters theta."""
    per_token = functional_call(
        model, layout.unflatten(theta), (tokens,), {"return_type": "per_token_loss"}
    )
    return per_token.mean(-1)


def mean_loss_fn(
    model: nn.Module, layout: ParamLayout, tokens: Int[Tensor, "batch pos"]
) -> Callable[[Tensor], Tensor]:
    """theta -> mean loss over `tokens` (a scalar function for torch.func transforms)."""
    return lambda theta: sequence_losses(model, layout, theta, tokens).mean()


# ----------------------------------------------------------------------------- exact Hessian


def exact_hessian(
    f: Callable[[Tensor], Tensor], theta: Float[Tensor, " P"], chunk_size: int | None = 64
) -> Float[Tensor, "P P"]:
    """Exact Hessian of the scalar function f at theta by torch.func, symmetrised, [P, P].

    chunk_size None: torch.func.hessian (forward-over-reverse, all P tangents at once);
    an int: torch.func.jacrev(jacrev(f), chunk_size) (reverse-over-reverse, that many rows
    per pass: bounded memory, and faster on CPU for these models). Both are exact.
    """
    if chunk_size is None:
        h = torch.func.hessian(f)(theta)
    else:
        h = torch.func.jacrev(torch.func.jacrev(f), chunk_size=chunk_size)(theta)
    return (h + h.T) / 2


class HessianOperator:
    """The Hessian of a weighted sum of per-sequence losses, sum_i w_i loss_i(theta), as an
    operator on P-vectors (w_i = 1/n by default: the Hessian of the mean loss).

    `matvec(v)` is a Hessian-vector product by double backward through the gradient's graph,
    built once and reused for every product; `dense()` is the exact P x P Hessian by
    torch.func (`exact_hessian`). Per-sequence weights give, with the same code, the Hessian
    of a subsample (weights on one half) or the sign-flipped sampling-noise operator
    sum_i (eps_i - mean eps) / n * H_i. ``on_products(k)`` (e.g. a
    ``training.progress.Counter``'s advance) is called after every k products.
    """

    def __init__(
        self,
        model: nn.Module,
        layout: ParamLayout,
        theta: Float[Tensor, " P"],
        tokens: Int[Tensor, "n pos"],
        weights: Float[Tensor, " n"] | None = None,
        on_products: Callable[[int], None] | None = None,
    ):
        n = tokens.shape[0]
        if weights is None:
            weights = torch.full((n,), 1.0 / n, dtype=theta.dtype, device=theta.device)
        if weights.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), got {tuple(weights.shape)}")
        self.model, self.layout, self.tokens = model, layout, tokens
        self.weights = weights.to(theta)
        self.theta = theta.detach().clone().requires_grad_(True)
        self._grad: Tensor | None = None
        self.n_matvecs = 0
        self.on_products = on_products

    @property
    def dim(self) -> int:
        return self.layout.size

    def loss(self, theta: Float[Tensor, " P"]) -> Tensor:
        """sum_i w_i loss_i(theta) (a scalar function for torch.func transforms)."""
        return (sequence_losses(self.model, self.layout, theta, self.tokens) * self.weights).sum()

    def gradient(self) -> Float[Tensor, " P"]:
        """The weighted loss's gradient, with its graph (built on first use)."""
        if self._grad is None:
            (self._grad,) = torch.autograd.grad(
                self.loss(self.theta), self.theta, create_graph=True
            )
        return self._grad

    def matvec(self, v: Float[Tensor, " P"]) -> Float[Tensor, " P"]:
        """H v."""
        (hv,) = torch.autograd.grad(self.gradient(), self.theta, v, retain_graph=True)
        self._count(1)
        return hv.detach()

    def dense(self, chunk_size: int | None = 64) -> Float[Tensor, "P P"]:
        """The exact Hessian [P, P] (counted as P products)."""
        h = exact_hessian(self.loss, self.theta.detach(), chunk_size)
        self._count(self.dim)
        return h

    def _count(self, n: int) -> None:
        self.n_matvecs += n
        if self.on_products is not None:
            self.on_products(n)


def sequence_curvatures(
    model: nn.Module,
    layout: ParamLayout,
    theta: Float[Tensor, " P"],
    tokens: Int[Tensor, "n pos"],
    directions: Float[Tensor, "*k P"],
    batch_size: int = 1024,
) -> Float[Tensor, "*k n"]:
    """v^T (Hessian of sequence i's mean loss) v for each sequence i and each direction v
    (directions [P] or [k, P]), via d^2/dt^2 loss_i(theta + t v) at t = 0: forward-mode
    twice, vmapped over the directions."""
    theta = theta.detach()
    single = directions.ndim == 1
    V = directions.detach().to(theta).reshape(-1, theta.shape[0])
    t0 = torch.zeros((), dtype=theta.dtype, device=theta.device)
    one = torch.ones_like(t0)
    out = []
    for start in range(0, tokens.shape[0], batch_size):
        chunk = tokens[start : start + batch_size]

        def second(v: Tensor, chunk=chunk) -> Tensor:
            def along(t: Tensor) -> Tensor:
                return sequence_losses(model, layout, theta + t * v, chunk)

            def slope(t: Tensor) -> Tensor:
                return jvp(along, (t,), (one,))[1]

            return jvp(slope, (t0,), (one,))[1]

        out.append(vmap(second)(V).detach())
    res = torch.cat(out, dim=1)
    return res[0] if single else res


# ----------------------------------------------------------------------------------- Lanczos


@dataclass
class LanczosResult:
    """Ritz values (ascending) [m], Ritz vectors [P, m] (unit columns), residual norms [m]
    (||A y - theta y|| for each Ritz pair: a Ritz value lies within its residual of an
    eigenvalue of A), and the number of iterations run."""

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    n_iter: int


def lanczos(
    matvec: Callable[[Tensor], Tensor],
    dim: int,
    n_iter: int,
    *,
    v0: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    breakdown_tol: float = 1e-12,
) -> LanczosResult:
    """Lanczos iteration on a symmetric operator with full reorthogonalisation.

    matvec: v [dim] -> A v [dim]. Runs min(n_iter, dim) steps (stops early on an invariant
    subspace) from v0 (default: a Gaussian vector from `generator`); each new Krylov vector
    is orthogonalised against all previous ones twice (classical Gram-Schmidt, "twice is
    enough"), so no spurious copies of converged eigenvalues appear. With n_iter >= dim the
    Ritz values are the eigenvalues of A (to rounding).
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    m = min(n_iter, dim)
    if v0 is None:
        v0 = torch.randn(dim, generator=generator, dtype=dtype)
    q = v0.to(dtype=dtype, device=device).clone()
    device = q.device
    q = q / q.norm()
    Q = torch.zeros(m, dim, dtype=dtype, device=device)
    alphas, betas = [], []
    scale = 0.0
    for j in range(m):
        Q[j] = q
        w = matvec(q).to(dtype)
        alpha = torch.dot(q, w)
        alphas.append(alpha)
        w = w - alpha * q - (betas[-1] * Q[j - 1] if j > 0 else 0.0)
        for _ in range(2):
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        beta = w.norm()
        scale = max(scale, abs(float(alpha)), float(beta))
        if j == m - 1 or float(beta) <= breakdown_tol * max(scale, 1e-300):
            betas.append(beta)
            break
        betas.append(beta)
        q = w / beta
    k = len(alphas)
    T = torch.diag(torch.stack(alphas))
    if k > 1:
        off = torch.stack(betas[: k - 1])
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    values, S = torch.linalg.eigh(T)
    vectors = Q[:k].T @ S
    residuals = (betas[k - 1] * S[-1]).abs()
    return LanczosResult(values, vectors, residuals, k)


def spectral_norm(
    matvec: Callable[[Tensor], Tensor],
    dim: int,
    n_iter: int = 30,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> float:
    """max |eigenvalue| of a symmetric operator, by Lanczos (extreme Ritz values converge
    first; the result is a lower bound that is tight once they have converged)."""
    res = lanczos(matvec, dim, n_iter, generator=generator, dtype=dtype, device=device)
    return float(res.values.abs().max())


def dense_matvec(matrix: Tensor) -> Callable[[Tensor], Tensor]:
    """A symmetric matrix as a matvec (for tests and small problems)."""
    return lambda v: matrix @ v
