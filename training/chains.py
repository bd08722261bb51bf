"""Markov sources: binary, k-th order and in-context chains, with a vectorised sampler.

Conventions (used by every module that touches tokens):

- Tokens are integers 0..S-1. A sequence x_1..x_N is ``tokens[:, 0..N-1]``.
- A k-th order kernel K has shape ``[S]*k + [S]``: ``K[a_1, ..., a_k, :]`` is the law of
  x_{n+1} given (x_{n-k+1}, ..., x_n) = (a_1, ..., a_k), oldest token first.
- The lifted chain runs on k-tuples, indexed in base S with the newest token as the last
  digit: z = sum_j a_j S^(k-j), and a step is z -> (z S mod S^k) + x_{n+1}.
- ``next_token_probs(tokens)[:, i]`` is the law of ``tokens[:, i+1]`` given
  ``tokens[:, :i+1]``: exactly what a causal model's output at position i should be.
- Exact quantities (kernels, laws, probabilities) are float64.

Sampling draws one uniform u per position. At position n the step maps every lifted
state z to its successor through the inverse CDF, x_{n+1} = #{s < S-1 : cumK[z, s] <= u_n}.
These maps are composed with a work-efficient parallel scan (2 log2 N rounds of gathers),
so no Python loop runs over positions. ``sample_reference_loop`` uses the same uniforms and
the same inverse-CDF rule one position at a time, hence returns identical tokens.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from training.seeds import check_seed

INITS = ("stationary", "uniform")
FAMILIES = ("binary", "kth_order", "in_context")
ROW_SUM_TOL = 1e-6
SCAN_BUDGET = 1 << 24  # max elements of one [batch, positions, S^k] transition table
MAX_KERNEL_ENTRIES = 1 << 24  # S^(k+1): a kernel of 128 MiB (float64)
MAX_LIFTED_STATES = 1 << 12  # S^k for the exact stationary law (a dense S^k x S^k solve)
MAX_IN_CONTEXT_STATIONARY = 1 << 8  # S^k of in-context chains with init="stationary":
# every sequence solves its own S^k x S^k system

# ----------------------------------------------------------------------------- validation


def _check_prob(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects nan
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return value


def check_int(name: str, value: Any, minimum: int, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}{what}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{what}, got {value!r}")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_size(states: int, order: int) -> None:
    """ValueError unless a kernel [S]*k + [S] has at most MAX_KERNEL_ENTRIES entries."""
    if order >= 24 or states ** (order + 1) > MAX_KERNEL_ENTRIES:  # S >= 2: 2^25 > the cap
        raise ValueError(
            f"states={states}, order={order}: the kernel would have S^(k+1) = "
            f"{states}^{order + 1} entries, more than the {MAX_KERNEL_ENTRIES} supported; use "
            "fewer states or a lower order"
        )


def _check_init(init: Any) -> str:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return init


def _validate_kernel(kernel: Any) -> Float[Tensor, "*ctx S"]:
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


# ------------------------------------------------------------------------ lifted-chain math


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


def _batched_stationary(kernels: Float[Tensor, "B M S"]) -> Float[Tensor, "B M"]:
    """Stationary laws of a batch of lifted chains (each assumed irreducible), solved in
    chunks of sequences so that no [chunk, M, M] system exceeds SCAN_BUDGET elements."""
    B, M, _ = kernels.shape
    chunk = max(1, SCAN_BUDGET // (M * M))
    if B > chunk:
        return torch.cat([_batched_stationary(kernels[i : i + chunk]) for i in range(0, B, chunk)])
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


def _tuple_index(windows: Int[Tensor, "... k"], n_states: int) -> Int[Tensor, "..."]:
    """Base-S index of k-tuples, oldest token the most significant digit."""
    k = windows.shape[-1]
    powers = n_states ** torch.arange(k - 1, -1, -1, device=windows.device)
    return (windows * powers).sum(-1)


def _digits(z: Int[Tensor, " B"], n_states: int, k: int) -> Int[Tensor, "B k"]:
    powers = n_states ** torch.arange(k - 1, -1, -1, device=z.device)
    return z[:, None] // powers % n_states


def _dirichlet(
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


def _random_permutations(
    shape: tuple[int, ...], n: int, generator: torch.Generator | None, device
) -> Int[Tensor, "... n"]:
    u = torch.rand((*shape, n), generator=generator, device=device)
    return u.argsort(dim=-1)


# --------------------------------------------------------------------------------- sampling


def _scan_states(steps: Int[Tensor, "B T M"], z0: Int[Tensor, " B"]) -> Int[Tensor, "B T"]:
    """z_t = steps[:, t](z_{t-1}) for all t at once, with z_{-1} = z0.

    Work-efficient parallel scan (Blelloch style): compose neighbouring maps pairwise
    (f_{2i+1} o f_{2i}), solve the half-length problem for the odd states recursively, then
    fill in each even state from its odd predecessor. 2 log2(T) rounds of gathers, O(T M) work.
    """
    B, T, M = steps.shape
    first = steps[:, 0].gather(1, z0[:, None])[:, 0]
    if T == 1:
        return first[:, None]
    pairs = steps[:, 1::2].gather(2, steps[:, 0 : T - 1 : 2])  # f_{2i+1} o f_{2i}
    odd = _scan_states(pairs, z0)  # z_1, z_3, ...
    z = torch.empty(B, T, dtype=steps.dtype, device=steps.device)
    z[:, 0] = first
    z[:, 1::2] = odd
    z[:, 2::2] = steps[:, 2::2].gather(2, odd[:, : (T - 1) // 2, None])[:, :, 0]
    return z


def _successors(
    cum: Float[Tensor, "Bk M Sm1"], u: Float[Tensor, "B T"], shifted: Int[Tensor, " M"]
) -> Int[Tensor, "B T M"]:
    """Successor of every lifted state z at every position: (z S mod M) + x(z, u_t).

    x(z, u) = #{s : cum[z, s] <= u} is the inverse CDF (searchsorted, right=True).
    """
    B, T = u.shape
    Bk, M, Sm1 = cum.shape
    if Sm1 == 1:  # binary: one comparison, fused with the shift
        return shifted + (u[:, :, None] >= cum[:, None, :, 0])
    if Bk == 1:
        x = torch.searchsorted(cum[0], u.reshape(1, -1).expand(M, -1).contiguous(), right=True)
        return shifted + x.T.reshape(B, T, M)
    x = torch.searchsorted(cum, u[:, None, :].expand(B, M, T).contiguous(), right=True)
    return shifted + x.transpose(1, 2)


def draw_randomness(
    chain: MarkovChain, batch: int, length: int, generator, device
) -> tuple[Float[Tensor, "Bk M S"], Float[Tensor, "Bk M"], Float[Tensor, "B L"]]:
    """All randomness of one ``sample`` call, in a fixed order: kernels, then uniforms."""
    check_int("batch", batch, 1)
    check_int("length", length, 1)
    kernels = chain._draw_kernels(batch, generator, device)
    init_law = chain._init_law(kernels)
    u = torch.rand(batch, length, generator=generator, device=device, dtype=torch.float64)
    return kernels, init_law, u


def _first_states(init_law: Float[Tensor, "Bk M"], u0: Float[Tensor, " B"]) -> Int[Tensor, " B"]:
    cum = init_law.cumsum(-1)[:, :-1].expand(u0.shape[0], -1).contiguous()
    return torch.searchsorted(cum, u0[:, None].contiguous(), right=True)[:, 0]


def sample_scan(
    kernels: Float[Tensor, "Bk M S"],
    init_law: Float[Tensor, "Bk M"],
    u: Float[Tensor, "B L"],
    k: int,
) -> Int[Tensor, "B L"]:
    B, L = u.shape
    M, S = kernels.shape[1:]
    z = _first_states(init_law, u[:, 0])
    head = _digits(z, S, k)[:, :L]
    if L <= k:
        return head
    cum = kernels.cumsum(-1)[..., :-1].contiguous()
    shifted = torch.arange(M, device=u.device) * S % M  # z -> z S mod S^k
    chunk = max(1, SCAN_BUDGET // (B * M))  # positions per scan; one chunk in usual cases
    out = [head]
    for start in range(k, L, chunk):
        states = _scan_states(_successors(cum, u[:, start : start + chunk], shifted), z)
        z = states[:, -1]
        out.append(states % S)
    return torch.cat(out, dim=1)


def sample_reference_loop(
    chain: MarkovChain,
    batch: int,
    length: int,
    generator: torch.Generator | None = None,
    device=None,
) -> Int[Tensor, "batch length"]:
    """Naive per-position sampler (reference for tests and benchmarks).

    Consumes the generator exactly like ``chain.sample``, so with equal seeds both return
    identical tokens.
    """
    device = torch.device(device or (generator.device if generator is not None else "cpu"))
    kernels, init_law, u = draw_randomness(chain, batch, length, generator, device)
    S, k = chain.n_states, chain.order
    M = S**k
    z = _first_states(init_law, u[:, 0])
    tokens = torch.empty(batch, length, dtype=torch.long, device=device)
    tokens[:, : min(k, length)] = _digits(z, S, k)[:, :length]
    cum = kernels.cumsum(-1)[..., :-1]
    b = torch.arange(batch, device=device) * (cum.shape[0] > 1)  # which kernel each row uses
    for n in range(k, length):
        x = torch.searchsorted(cum[b, z], u[:, n : n + 1].contiguous(), right=True)[:, 0]
        tokens[:, n] = x
        z = z * S % M + x
    return tokens


# ------------------------------------------------------------------------ next-token laws


def _check_tokens(tokens: Tensor, n_states: int) -> None:
    if tokens.ndim != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(
            f"tokens must be an integer tensor [batch, pos], got {tuple(tokens.shape)} {tokens.dtype}"
        )
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= n_states):
        raise ValueError(f"tokens must lie in 0..{n_states - 1}")


def _oracle_probs(
    tokens: Int[Tensor, "B N"],
    kernels: Float[Tensor, "Bk M S"],
    init_law: Float[Tensor, "Bk M"],
    k: int,
) -> Float[Tensor, "B N S"]:
    """Law of x_{i+1} given x_1..x_i under a known kernel and initial law of the first k tokens.

    Positions with a full context (i >= k-1, 0-indexed) read the kernel row of the last k
    tokens; earlier ones use the conditional of ``init_law`` (uniform if the prefix has
    probability 0).
    """
    B, N = tokens.shape
    _, M, S = kernels.shape
    out = torch.empty(B, N, S, dtype=torch.float64, device=tokens.device)
    if N >= k:
        z = _tuple_index(tokens.unfold(1, k, 1), S)  # [B, N-k+1]
        if kernels.shape[0] == 1:
            out[:, k - 1 :] = kernels[0][z]
        else:
            out[:, k - 1 :] = kernels.gather(1, z[..., None].expand(-1, -1, S))
    for i in range(min(k - 1, N)):  # at most order-1 prefix positions
        joint = init_law.reshape(-1, S ** (i + 1), S, S ** (k - i - 2)).sum(-1)
        total = joint.sum(-1, keepdim=True)
        cond = torch.where(total > 0, joint / total.clamp_min(1e-300), 1.0 / S)
        prefix = _tuple_index(tokens[:, : i + 1], S)
        out[:, i] = cond[0][prefix] if cond.shape[0] == 1 else cond[torch.arange(B), prefix]
    return out


def add_pseudocount_probs(
    tokens: Int[Tensor, "batch pos"], n_states: int, order: int, pseudocount: float
) -> Float[Tensor, "batch pos S"]:
    """In-context add-beta order-j estimator, for every position at once (no loop).

    Output [:, i] predicts x_{i+1} from x_1..x_i (0-indexed tokens[:, :i+1]):
    (N_i(c, s) + beta) / (N_i(c) + S beta), where c is the last ``order`` tokens and N_i
    counts the (context, next) pairs seen so far. order = 0 is the unigram estimator
    (counts of all tokens so far); positions with fewer than ``order`` tokens get uniform.
    With beta = alpha this is the Dirichlet(alpha) posterior predictive (Bayes optimal for
    in-context chains with independent Dirichlet rows and uniform first tokens).
    """
    check_int("order", order, 0)
    check_positive("pseudocount", pseudocount)
    _check_tokens(tokens, n_states)
    B, N = tokens.shape
    S, j = n_states, order
    out = torch.full((B, N, S), 1.0 / S, dtype=torch.float64, device=tokens.device)
    if N < max(j, 1):
        return out
    M = S**j
    # contexts: windows of the last j tokens, win[:, s] covers tokens s..s+j-1
    win = _tuple_index(tokens.unfold(1, j, 1), S)  # [B, N-j+1]
    # (context, target) pairs for targets t = j..N-1, counted cumulatively over t
    pairs = win[:, : N - j] * S + tokens[:, j:]
    counts = torch.zeros(B, N - j + 1, M * S, dtype=torch.float32, device=tokens.device)
    counts[:, 1:].scatter_(2, pairs[..., None], 1.0)  # exact counts up to 2^24
    counts = torch.cumsum(counts, 1, out=counts).view(B, -1, M, S)  # [:, m]: first m targets
    # predictions at i = max(j-1, 0)..N-1: context win[:, i-j+1], counts of targets t <= i
    first = 1 if j == 0 else 0
    seen = counts[:, first:].gather(2, win[:, first:, None, None].expand(-1, -1, 1, S))[:, :, 0]
    seen = seen.to(torch.float64)
    out[:, max(j - 1, 0) :] = (seen + pseudocount) / (seen.sum(-1, keepdim=True) + S * pseudocount)
    return out


def transition_counts(
    tokens: Int[Tensor, "batch pos"], n_states: int, order: int
) -> Float[Tensor, "*ctx S"]:
    """Counts of (last k tokens, next token) over all sequences, float64 [S]*k + [S]."""
    _check_tokens(tokens, n_states)
    order = check_int("order", order, 0)
    S, k = n_states, order
    if tokens.shape[1] <= k:
        return torch.zeros([S] * (k + 1), dtype=torch.float64, device=tokens.device)
    grams = _tuple_index(tokens.unfold(1, k + 1, 1), S)  # (k+1)-tuple = context * S + next
    counts = torch.bincount(grams.flatten(), minlength=S ** (k + 1))
    return counts.to(torch.float64).reshape([S] * (k + 1))


# ---------------------------------------------------------------------------------- chains


class MarkovChain:
    """Shared interface of every chain family (see the module docstring for conventions)."""

    family: ClassVar[str]
    init: str

    @property
    def n_states(self) -> int:
        raise NotImplementedError

    @property
    def order(self) -> int:
        raise NotImplementedError

    def _draw_kernels(self, batch: int, generator, device) -> Float[Tensor, "Bk M S"]:
        raise NotImplementedError

    def _init_law(self, kernels: Float[Tensor, "Bk M S"]) -> Float[Tensor, "Bk M"]:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def sample(
        self,
        batch: int,
        length: int,
        *,
        generator: torch.Generator | None = None,
        device=None,
        return_kernels: bool = False,
    ) -> Int[Tensor, "batch length"] | tuple[Int[Tensor, "batch length"], Float[Tensor, "..."]]:
        """Draw ``batch`` sequences of ``length`` tokens on ``device`` from ``generator``.

        ``device`` defaults to the generator's (cpu without one); ``generator=None`` uses
        torch's default generator for that device. With ``return_kernels`` also return the
        kernels, float64 of shape [batch] + [S]*k + [S] (fixed chains: theirs, expanded).
        """
        device = torch.device(device or (generator.device if generator is not None else "cpu"))
        kernels, init_law, u = draw_randomness(self, batch, length, generator, device)
        tokens = sample_scan(kernels, init_law, u, self.order)
        if not return_kernels:
            return tokens
        shape = [batch] + [self.n_states] * (self.order + 1)
        return tokens, kernels.expand(batch, -1, -1).reshape(shape)

    def next_token_probs(
        self, tokens: Int[Tensor, "batch pos"], kernels: Float[Tensor, "..."] | None = None
    ) -> Float[Tensor, "batch pos S"]:
        """True law of x_{n+1} given x_1..x_n for every n: output [:, i] predicts tokens[:, i+1].

        Full context (i >= k-1): the kernel row of the last k tokens (``kernels``, one per
        sequence, if given). i < k-1: the conditional law under the initial law of the
        first k tokens. float64.
        """
        _check_tokens(tokens, self.n_states)
        S, k = self.n_states, self.order
        if kernels is None:
            flat = self._draw_kernels(1, None, tokens.device)
        else:
            flat = kernels.to(device=tokens.device, dtype=torch.float64).reshape(-1, S**k, S)
            if flat.shape[0] != tokens.shape[0]:
                raise ValueError(f"kernels must have shape [batch] + [{S}]*{k} + [{S}]")
        return _oracle_probs(tokens, flat, self._init_law(flat), k)


class _FixedKernelChain(MarkovChain):
    """A chain with one known kernel: ``kernel_tensor()`` defines everything else."""

    def kernel_tensor(self) -> Float[Tensor, "*ctx S"]:
        """The kernel, float64 [S]*k + [S] (a fresh copy)."""
        raise NotImplementedError

    @cached_property
    def _kernel(self) -> Float[Tensor, "*ctx S"]:
        return self.kernel_tensor()

    @cached_property
    def _initial_tuples(self) -> Float[Tensor, " M"]:
        M = self.n_states**self.order
        if self.init == "uniform":
            return torch.full((M,), 1.0 / M, dtype=torch.float64)
        return stationary_law(self._kernel).reshape(M)

    def _draw_kernels(self, batch, generator, device):
        return self._kernel.reshape(1, -1, self.n_states).to(device)

    def _init_law(self, kernels):
        return self._initial_tuples.to(kernels.device)[None]


@dataclass(frozen=True)
class BinaryChain(_FixedKernelChain):
    """First-order binary chain: p = P(1 | 0), q = P(0 | 1); pi = (q, p) / (p + q)."""

    p: float
    q: float
    init: str = "stationary"
    family: ClassVar[str] = "binary"

    def __post_init__(self):
        object.__setattr__(self, "p", _check_prob("p", self.p))
        object.__setattr__(self, "q", _check_prob("q", self.q))
        if self.p + self.q == 0:
            raise ValueError("p + q must be > 0 (p = q = 0 never switches: reducible chain)")
        _check_init(self.init)

    @property
    def n_states(self) -> int:
        return 2

    @property
    def order(self) -> int:
        return 1

    def kernel_tensor(self) -> Float[Tensor, "2 2"]:
        p, q = self.p, self.q
        return torch.tensor([[1 - p, p], [q, 1 - q]], dtype=torch.float64)

    def to_dict(self) -> dict:
        return {"family": self.family, "p": self.p, "q": self.q, "init": self.init}


@dataclass(frozen=True, eq=False)
class KthOrderChain(_FixedKernelChain):
    """k-th order chain over S states with an explicit kernel [S]*k + [S] (oldest token first).

    Rows are validated (entries in [0, 1], sums within 1e-6 of 1) and renormalised.
    ``label`` only names the chain in ``repr``.
    """

    kernel: Tensor
    init: str = "stationary"
    label: str = field(default="", compare=False)
    family: ClassVar[str] = "kth_order"

    def __post_init__(self):
        object.__setattr__(self, "kernel", _validate_kernel(self.kernel))
        _check_init(self.init)

    @property
    def n_states(self) -> int:
        return self.kernel.shape[-1]

    @property
    def order(self) -> int:
        return self.kernel.ndim - 1

    def kernel_tensor(self) -> Float[Tensor, "*ctx S"]:
        return self.kernel.clone()

    @classmethod
    def lag(cls, k: int, p: float, q: float, init: str = "stationary") -> KthOrderChain:
        """The paper's lag-k binary chain: x_{n+1} depends only on x_{n-k+1} (k steps back)."""
        k = check_int("k", k, 1, " (the lag is the chain's order)")
        _check_size(2, k)
        base = BinaryChain(p, q).kernel_tensor()
        kernel = base.view(2, *[1] * (k - 1), 2).expand([2] * (k + 1))
        return cls(kernel, init, label=f"lag(k={k}, p={float(p):g}, q={float(q):g})")

    @classmethod
    def symmetric(
        cls, states: int, p: float, order: int = 1, init: str = "stationary"
    ) -> KthOrderChain:
        """Stay with prob 1-p, move to each other state with p/(S-1); depends on x_n only."""
        S = check_int("states", states, 2)
        order = check_int("order", order, 1)
        _check_size(S, order)
        p = _check_prob("p", p)
        base = torch.full((S, S), p / (S - 1), dtype=torch.float64)
        base.fill_diagonal_(1 - p)
        kernel = base.view(*[1] * (order - 1), S, S).expand([S] * (order + 1))
        return cls(kernel, init, label=f"symmetric(states={S}, p={p:g}, order={order})")

    @classmethod
    def random(
        cls, states: int, order: int, alpha: float = 1.0, seed: int = 0, init: str = "stationary"
    ) -> KthOrderChain:
        """Rows drawn once from Dirichlet(alpha) with ``torch.Generator().manual_seed(seed)``."""
        S = check_int("states", states, 2)
        order = check_int("order", order, 1)
        _check_size(S, order)
        alpha = check_positive("alpha", alpha)
        gen = torch.Generator().manual_seed(check_seed(seed))
        kernel = _dirichlet(alpha, (S**order, S), gen, "cpu").reshape([S] * (order + 1))
        label = f"random(states={S}, order={order}, alpha={alpha:g}, seed={seed})"
        return cls(kernel, init, label=label)

    @classmethod
    def from_binary(cls, chain: BinaryChain) -> KthOrderChain:
        return cls(chain.kernel_tensor(), chain.init, label=repr(chain))

    def to_dict(self) -> dict:
        d = {"family": self.family, "kernel": self.kernel.tolist(), "init": self.init}
        return d | ({"label": self.label} if self.label else {})

    def __eq__(self, other) -> bool:
        if not isinstance(other, KthOrderChain):
            return NotImplemented
        return (
            self.init == other.init
            and self.kernel.shape == other.kernel.shape
            and bool(torch.equal(self.kernel, other.kernel))
        )

    def __hash__(self) -> int:
        return hash((self.init, tuple(self.kernel.shape), tuple(self.kernel.flatten().tolist())))

    def __repr__(self) -> str:
        what = self.label or f"states={self.n_states}, order={self.order}"
        return f"KthOrderChain({what}, init={self.init!r})"


@dataclass(frozen=True)
class InContextChain(MarkovChain):
    """Every sequence draws its own order-k kernel; rows ~ Dirichlet(alpha).

    ``doubly_stochastic=True``: for each sequence and each context of the k-1 newest tokens
    c, the S x S matrix A[a, s] = K[a, c, s] is drawn as A[a, s] = w[(tau(s) - sigma(a)) mod S]
    with w ~ Dirichlet(alpha) and sigma, tau uniform random permutations: a circulant (a
    Dirichlet-weighted mixture of the S cyclic-shift permutation matrices) with permuted
    rows and columns. Rows and columns of A sum to 1, so the stationary law on k-tuples is
    uniform, and each row is still marginally Dirichlet(alpha) (rows are now dependent).

    ``init``: "uniform" (default) draws the first k tokens uniformly; "stationary" from the
    stationary law of the sequence's own kernel (the convention that reproduces the
    reference in-context losses, see ``references.in_context_losses``).
    """

    states: int = 2
    order: int = 1
    alpha: float = 1.0
    doubly_stochastic: bool = False
    init: str = "uniform"
    family: ClassVar[str] = "in_context"

    def __post_init__(self):
        object.__setattr__(self, "states", check_int("states", self.states, 2))
        object.__setattr__(self, "order", check_int("order", self.order, 1))
        _check_size(self.states, self.order)
        object.__setattr__(self, "alpha", check_positive("alpha", self.alpha))
        if not isinstance(self.doubly_stochastic, bool):
            raise ValueError(f"doubly_stochastic must be a bool, got {self.doubly_stochastic!r}")
        _check_init(self.init)
        M = self.states**self.order
        if (
            self.init == "stationary"
            and not self.doubly_stochastic
            and M > MAX_IN_CONTEXT_STATIONARY
        ):
            raise ValueError(
                f"init='stationary' solves a {M} x {M} system per sequence (states={self.states}, "
                f"order={self.order}); at most {MAX_IN_CONTEXT_STATIONARY} contexts are "
                "supported: use init='uniform'"
            )

    @property
    def n_states(self) -> int:
        return self.states

    def sample_kernels(
        self, batch: int, *, generator: torch.Generator | None = None, device=None
    ) -> Float[Tensor, "batch *ctx S"]:
        """``batch`` kernels from the prior, float64 [batch] + [S]*k + [S]."""
        device = torch.device(device or (generator.device if generator is not None else "cpu"))
        flat = self._draw_kernels(check_int("batch", batch, 1), generator, device)
        return flat.reshape([batch] + [self.states] * (self.order + 1))

    def _draw_kernels(self, batch, generator, device):
        S, k = self.states, self.order
        if not self.doubly_stochastic:
            return _dirichlet(self.alpha, (batch, S**k, S), generator, device)
        C = S ** (k - 1)  # contexts of the k-1 newest tokens
        w = _dirichlet(self.alpha, (batch, C, S), generator, device)
        sigma = _random_permutations((batch, C), S, generator, device)
        tau = _random_permutations((batch, C), S, generator, device)
        idx = (tau[:, :, None, :] - sigma[:, :, :, None]) % S  # [B, C, a, s]
        A = w.gather(2, idx.reshape(batch, C, S * S)).reshape(batch, C, S, S)
        return A.permute(0, 2, 1, 3).reshape(batch, S**k, S)  # z = a * C + c

    def _init_law(self, kernels):
        B, M = kernels.shape[:2]
        if self.init == "uniform" or self.doubly_stochastic:
            return torch.full((1, M), 1.0 / M, dtype=torch.float64, device=kernels.device)
        return _batched_stationary(kernels)

    def next_token_probs(
        self, tokens: Int[Tensor, "batch pos"], kernels: Float[Tensor, "..."] | None = None
    ) -> Float[Tensor, "batch pos S"]:
        """With ``kernels`` ([batch] + [S]*k + [S]): the oracle law (see MarkovChain).

        Without: the Bayes posterior predictive under the Dirichlet(alpha) prior, i.e.
        add-alpha counts of the (last k tokens, next) pairs seen so far in the sequence,
        uniform while fewer than k tokens are seen. Exact for independent rows and uniform
        init; for ``doubly_stochastic`` or ``init='stationary'`` it ignores the extra
        prior structure (then it is the add-alpha estimator, not exact Bayes).
        """
        if kernels is not None:
            return super().next_token_probs(tokens, kernels)
        return add_pseudocount_probs(tokens, self.states, self.order, self.alpha)

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "states": self.states,
            "order": self.order,
            "alpha": self.alpha,
            "doubly_stochastic": self.doubly_stochastic,
            "init": self.init,
        }


# ---------------------------------------------------------------------------- (de)serialise

_KEYS = {
    "binary": ({"p", "q"}, {"init"}),
    "kth_order": ({"kernel"}, {"init", "label"}),
    "in_context": (set(), {"states", "order", "alpha", "doubly_stochastic", "init"}),
}


def chain_from_dict(d: dict) -> MarkovChain:
    """Inverse of ``chain.to_dict()``; validates keys and values (ValueError if bad)."""
    if not isinstance(d, dict) or "family" not in d:
        raise ValueError(f"a chain dict needs a 'family' key, one of {FAMILIES}; got {d!r}")
    family = d["family"]
    if not isinstance(family, str) or family not in _KEYS:
        raise ValueError(f"unknown chain family {family!r}; expected one of {FAMILIES}")
    required, optional = _KEYS[family]
    args = {key: value for key, value in d.items() if key != "family"}
    missing, unknown = required - args.keys(), args.keys() - required - optional
    if missing:
        raise ValueError(f"{family} chain dict is missing {sorted(missing)}")
    if unknown:
        raise ValueError(
            f"unknown keys {sorted(unknown)} for a {family} chain; allowed: "
            f"{sorted(required | optional)}"
        )
    cls = {"binary": BinaryChain, "kth_order": KthOrderChain, "in_context": InContextChain}
    return cls[family](**args)
