"""The vectorised sampler and its per-position reference.

Sampling draws one uniform u per position (``draw_randomness``: kernels, initial law, then
uniforms, in that order). At position n the step maps every lifted state z to its successor
through the inverse CDF, x_{n+1} = #{s < S-1 : cumK[z, s] <= u_n}. ``sample_scan`` composes
these maps with a work-efficient parallel scan (2 log2 N rounds of gathers), so no Python
loop runs over positions; at most SCAN_BUDGET table entries are built at once (positions are
scanned in chunks beyond that). ``sample_reference_loop`` uses the same uniforms and the same
inverse-CDF rule one position at a time, hence returns identical tokens.
"""

from __future__ import annotations

from typing import Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from training.chains.checks import check_int
from training.chains.kernels import SCAN_BUDGET, tuple_digits


class SamplerSource(Protocol):
    """What the samplers need of a chain (every ``MarkovChain`` is one): its size and its
    draws of kernels [Bk, S^k, S] (Bk = 1 for a fixed kernel) and initial laws [Bk, S^k]."""

    @property
    def n_states(self) -> int: ...

    @property
    def order(self) -> int: ...

    def _draw_kernels(self, batch: int, generator, device) -> Float[Tensor, "Bk M S"]: ...

    def _init_law(self, kernels: Float[Tensor, "Bk M S"]) -> Float[Tensor, "Bk M"]: ...


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
    chain: SamplerSource, batch: int, length: int, generator, device
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
    head = tuple_digits(z, S, k)[:, :L]
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
    chain: SamplerSource,
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
    tokens[:, : min(k, length)] = tuple_digits(z, S, k)[:, :length]
    cum = kernels.cumsum(-1)[..., :-1]
    b = torch.arange(batch, device=device) * (cum.shape[0] > 1)  # which kernel each row uses
    for n in range(k, length):
        x = torch.searchsorted(cum[b, z], u[:, n : n + 1].contiguous(), right=True)[:, 0]
        tokens[:, n] = x
        z = z * S % M + x
    return tokens
