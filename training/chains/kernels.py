"""Kernels and the lifted chain on k-tuples: validation, the lifted transition matrix, its
closed class and stationary law, and random kernels.

A k-th order kernel K has shape ``[S]*k + [S]`` (oldest token first). The lifted chain runs
on k-tuples indexed in base S with the newest token as the last digit (``tuple_index``,
``tuple_digits``), and a step is z -> (z S mod S^k) + x_{n+1} (``lifted_matrix``).

The stationary law is exact: ``closed_class`` finds the unique closed class by a graph search
on the transitions of probability > 0, and the law on it comes from GTH state reduction
(``_gth``, no subtraction) or, for large classes, a linear solve scaled by exit rates
(``_scaled_solve``). ``batched_stationary`` solves one law per sequence for in-context chains.
``dirichlet`` and ``random_permutations`` draw random kernels from a generator.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

ROW_SUM_TOL = 1e-6
SCAN_BUDGET = 1 << 24  # max elements of one dense table: a [batch, positions, S^k] transition
# table of the sampler (training.chains.sampling), a [chunk, S^k, S^k] batch of systems here
MAX_LIFTED_STATES = 1 << 12  # S^k for the exact stationary law (a dense S^k x S^k solve)


def validate_kernel(kernel: Any) -> Float[Tensor, "*ctx S"]:
    """Kernel as a float64 CPU tensor [S]*k + [S], rows renormalised; ValueError if bad."""
    try:
        kernel = torch.as_tensor(kernel, dtype=torch.float64).detach().cpu().clone()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"kernel must be a numeric array of shape [S]*k + [S]: {err}") from None
    shape = tuple(kernel.shape)
    if kernel.ndim < 2:
        raise ValueError(f"kernel must have shape [S]*k + [S] with order k >= 1, got {shape}")
    if len(set(shape)) != 1:
        raise ValueError(f"every kernel dimension must equal the number of states S, got {shape}")
    if shape[0] < 2:
        raise ValueError(f"a kernel needs S >= 2 states, got S = {shape[0]}")
    bad = ~((kernel >= 0) & (kernel <= 1))
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"kernel{list(idx)} = {kernel[idx].item()!r} is not a probability in [0, 1]"
        )
    sums = kernel.sum(-1)
    off = (sums - 1).abs() > ROW_SUM_TOL
    if off.any():
        idx = tuple(int(i) for i in off.nonzero()[0])
        raise ValueError(
            f"kernel row {list(idx)} sums to {sums[idx].item():.9g}; rows must sum to 1 "
            f"within {ROW_SUM_TOL}"
        )
    if (sums - 1).abs().max() > 1e-12:  # renormalise, idempotently (to_dict round trips)
        kernel = kernel / sums[..., None]
    return kernel


def lifted_matrix(kernel: Float[Tensor, "*ctx S"]) -> Float[Tensor, "M M"]:
    """Transition matrix of the chain on k-tuples (M = S^k): P[z, (z S mod M) + s] = K[z, s]."""
    S, k = kernel.shape[-1], kernel.ndim - 1
    M = S**k
    flat = kernel.reshape(M, S)
    P = torch.zeros(M, M, dtype=flat.dtype, device=flat.device)
    z = torch.arange(M, device=flat.device)
    cols = (z * S % M)[:, None] + torch.arange(S, device=flat.device)
    return P.scatter_(1, cols, flat)


def _lifted_successors(kernel: Float[Tensor, "*ctx S"]) -> tuple[Tensor, Tensor]:
    """Edges (z, z') of the lifted chain with K[z, s] > 0, as two index tensors."""
    S, k = kernel.shape[-1], kernel.ndim - 1
    M = S**k
    z = torch.arange(M, device=kernel.device)
    dst = (z * S % M)[:, None] + torch.arange(S, device=kernel.device)
    keep = kernel.reshape(M, S) > 0
    return z[:, None].expand(M, S)[keep], dst[keep]


def _reach(start: int, src: Tensor, dst: Tensor, M: int) -> Tensor:
    """Boolean [M]: the states reachable from `start` along the edges src -> dst (BFS)."""
    seen = torch.zeros(M, dtype=torch.bool, device=src.device)
    seen[start] = True
    frontier = seen.clone()
    while frontier.any():
        nxt = torch.zeros_like(seen)
        nxt[dst[frontier[src]]] = True
        frontier = nxt & ~seen
        seen |= frontier
    return seen


def closed_class(kernel: Float[Tensor, "*ctx S"]) -> Tensor | None:
    """Boolean mask [S^k] of the lifted chain's closed communicating class if it has exactly
    one (then its stationary law is unique and lives on that class), else None. Exact: a
    graph search on the transitions of probability > 0 (no eigenvalues, no tolerance).

    Walks down the classes from state 0: a state c all of whose successors can reach c back
    is in a closed class (its forward set); the class is the only one iff every state can
    reach c.
    """
    S, k = kernel.shape[-1], kernel.ndim - 1
    M = S**k
    src, dst = _lifted_successors(kernel)
    c = 0
    while True:
        forward = _reach(c, src, dst, M)
        backward = _reach(c, dst, src, M)
        escaped = forward & ~backward
        if escaped.any():  # c is transient: go down to a state it cannot come back from
            c = int(escaped.nonzero()[0])
            continue
        return forward if backward.all() else None


GTH_MAX_STATES = 256  # classes up to this size use GTH; bigger ones a scaled LU solve first


def _gth(P: Float[Tensor, "n n"]) -> Float[Tensor, " n"]:
    """Stationary law of an irreducible stochastic matrix by Grassmann-Taksar-Heyman state
    reduction: no subtraction anywhere (the diagonal is never read), so transition
    probabilities from 1 down to subnormal numbers keep full relative accuracy. The back
    substitution rescales as it goes, so laws spanning more than the float range (pi_1 / pi_2
    = 5e-324) come out with the small entries underflowing to 0, never as inf or nan; a
    state whose way back has underflowed to 0 is treated as holding all the mass so far."""
    A = P.clone()
    n = A.shape[0]
    out = torch.zeros(n, dtype=A.dtype, device=A.device)
    for j in range(n - 1, 0, -1):
        out[j] = A[j, :j].sum()  # probability of leaving j towards the states still kept
        if out[j] > 0:
            A[:j, :j] += A[:j, j, None] * (A[j, None, :j] / out[j])
    pi = torch.zeros(n, dtype=A.dtype, device=A.device)
    pi[0] = 1.0
    for j in range(1, n):
        t = pi[:j] @ A[:j, j]
        value = t / out[j] if out[j] > 0 else (torch.inf if t > 0 else 0.0)
        if not torch.isfinite(torch.as_tensor(value)):
            pi[:j] *= out[j] / t  # rescale so that pi[j] = 1
            value = 1.0
        pi[j] = value
        top = pi[: j + 1].max()
        if top > 1e100:
            pi[: j + 1] /= top
    return pi / pi.sum()


def _scaled_solve(P: Float[Tensor, "n n"]) -> Float[Tensor, " n"]:
    """pi Q = 0 for the generator Q = P - I written with exit rates e_z (the sum of the row's
    off-diagonal entries) instead of 1 - P[z, z], which loses every probability below 1e-16;
    rows scaled by 1/e_z, so pi = w / e for the solution w of the scaled system."""
    n = P.shape[0]
    off = P.clone().fill_diagonal_(0.0)
    exit_rate = off.sum(1)
    A = (off / exit_rate[:, None]).fill_diagonal_(-1.0).T.contiguous()
    A[-1] = 1.0  # the rows of A are dependent; swap one for the normalisation
    b = torch.zeros(n, dtype=torch.float64, device=P.device)
    b[-1] = 1.0
    w = torch.linalg.solve_ex(A, b)[0].clamp_min(0.0)
    pi = w * (exit_rate.min() / exit_rate)
    return pi / pi.sum()


def stationary_law(kernel: Float[Tensor, "*ctx S"]) -> Float[Tensor, "*ctx"]:
    """Unique stationary law of the lifted chain, shape [S]*k (float64).

    Raises ValueError when the chain is reducible, i.e. it has more than one closed class of
    states (closed_class: exact, from which transitions have probability > 0, so a nearly
    reducible chain such as p = q = 1e-300 still has its law), or when S^k >
    MAX_LIFTED_STATES (the solve is dense). Periodic chains are fine. The law is computed on
    the closed class (transient states get 0): GTH state reduction for classes up to
    GTH_MAX_STATES states, else a scaled linear solve (GTH if that one is not finite).
    """
    S, k = kernel.shape[-1], kernel.ndim - 1
    M = S**k
    if M > MAX_LIFTED_STATES:
        raise ValueError(
            f"the exact stationary law of a chain with S^k = {S}^{k} = {M} contexts needs a "
            f"dense {M} x {M} solve; at most {MAX_LIFTED_STATES} contexts are supported"
        )
    kernel = kernel.to(torch.float64)
    keep = closed_class(kernel)
    if keep is None:
        raise ValueError(
            "the chain is reducible: it has more than one closed class of states, so its "
            "stationary law is not unique; use init='uniform' or a kernel whose states all "
            "communicate"
        )
    P = lifted_matrix(kernel)[keep][:, keep]  # the closed class: rows still sum to 1
    n = P.shape[0]
    if n == 1:
        law = torch.ones(1, dtype=torch.float64)
    else:
        law = _scaled_solve(P) if n > GTH_MAX_STATES else None
        if law is None or not torch.isfinite(law).all():
            law = _gth(P)
    if not (torch.isfinite(law).all() and law.sum() > 0):
        raise ValueError("the stationary law could not be computed (a numerically singular chain)")
    pi = torch.zeros(M, dtype=torch.float64)
    pi[keep] = law
    return pi.reshape([S] * k)


def batched_stationary(kernels: Float[Tensor, "B M S"]) -> Float[Tensor, "B M"]:
    """Stationary laws of a batch of lifted chains (each assumed irreducible), solved in
    chunks of sequences so that no [chunk, M, M] system exceeds SCAN_BUDGET elements."""
    B, M, _ = kernels.shape
    chunk = max(1, SCAN_BUDGET // (M * M))
    if B > chunk:
        return torch.cat([batched_stationary(kernels[i : i + chunk]) for i in range(0, B, chunk)])
    B, M, S = kernels.shape
    z = torch.arange(M, device=kernels.device)
    cols = ((z * S % M)[:, None] + torch.arange(S, device=kernels.device)).expand(B, M, S)
    P = torch.zeros(B, M, M, dtype=torch.float64, device=kernels.device).scatter_(2, cols, kernels)
    A = P.transpose(1, 2) - torch.eye(M, dtype=torch.float64, device=kernels.device)
    A[:, -1] = 1.0  # as in stationary_law
    b = torch.zeros(B, M, dtype=torch.float64, device=kernels.device)
    b[:, -1] = 1.0
    pi, info = torch.linalg.solve_ex(A, b)
    if (info != 0).any() or not torch.isfinite(pi).all():
        raise ValueError("a sampled kernel is reducible (alpha too small?): no stationary law")
    pi = pi.clamp_min(0.0)
    return pi / pi.sum(-1, keepdim=True)


def tuple_index(windows: Int[Tensor, "... k"], n_states: int) -> Int[Tensor, "..."]:
    """Base-S index of k-tuples, oldest token the most significant digit."""
    k = windows.shape[-1]
    powers = n_states ** torch.arange(k - 1, -1, -1, device=windows.device)
    return (windows * powers).sum(-1)


def tuple_digits(z: Int[Tensor, " B"], n_states: int, k: int) -> Int[Tensor, "B k"]:
    powers = n_states ** torch.arange(k - 1, -1, -1, device=z.device)
    return z[:, None] // powers % n_states


def dirichlet(
    alpha: float, shape: tuple[int, ...], generator: torch.Generator | None, device
) -> Float[Tensor, "..."]:
    """Rows ~ Dirichlet(alpha) along the last dim, float64, drawn from ``generator``.

    Gamma variates in log space; for alpha < 1, Gamma(alpha) = Gamma(alpha + 1) U^(1/alpha),
    so tiny alpha does not underflow to 0/0.
    """
    a = torch.full(shape, alpha, dtype=torch.float64, device=device)
    if alpha >= 1:
        log_g = torch._standard_gamma(a, generator=generator).log()
    else:
        u = 1 - torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
        lg = torch._standard_gamma(a + 1, generator=generator).log()
        log_g = lg + u.log() / alpha
        dead = torch.isneginf(log_g.amax(-1, keepdim=True))  # alpha ~ 1e-300: all -inf
        if dead.any():  # the same draws, shifted by the row max before dividing by alpha
            y = alpha * lg + u.log()
            log_g = torch.where(dead, (y - y.amax(-1, keepdim=True)) / alpha, log_g)
    return torch.softmax(log_g, dim=-1)


def random_permutations(
    shape: tuple[int, ...], n: int, generator: torch.Generator | None, device
) -> Int[Tensor, "... n"]:
    u = torch.rand((*shape, n), generator=generator, device=device)
    return u.argsort(dim=-1)
