"""The chain families: the MarkovChain interface, BinaryChain, KthOrderChain (explicit kernel,
with lag, symmetric and random constructors) and InContextChain (a kernel per sequence, or per
group of sequences of a minibatch).

Conventions are in the package docstring (``training.chains``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from training.chains.checks import (
    check_init,
    check_int,
    check_positive,
    check_prob,
    check_size,
    check_tokens,
)
from training.chains.estimates import add_pseudocount_probs, oracle_probs
from training.chains.kernels import (
    batched_stationary,
    dirichlet,
    random_permutations,
    stationary_law,
    validate_kernel,
)
from training.chains.sampling import draw_randomness, sample_scan
from training.seeds import check_seed

MAX_IN_CONTEXT_STATIONARY = 1 << 8  # S^k of in-context chains with init="stationary":
# every sequence solves its own S^k x S^k system


class MarkovChain:
    """Shared interface of every chain family (conventions: the ``training.chains`` package
    docstring)."""

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
        check_tokens(tokens, self.n_states)
        S, k = self.n_states, self.order
        if kernels is None:
            flat = self._draw_kernels(1, None, tokens.device)
        else:
            flat = kernels.to(device=tokens.device, dtype=torch.float64).reshape(-1, S**k, S)
            if flat.shape[0] != tokens.shape[0]:
                raise ValueError(f"kernels must have shape [batch] + [{S}]*{k} + [{S}]")
        return oracle_probs(tokens, flat, self._init_law(flat), k)


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
        object.__setattr__(self, "p", check_prob("p", self.p))
        object.__setattr__(self, "q", check_prob("q", self.q))
        if self.p + self.q == 0:
            raise ValueError("p + q must be > 0 (p = q = 0 never switches: reducible chain)")
        check_init(self.init)

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
        object.__setattr__(self, "kernel", validate_kernel(self.kernel))
        check_init(self.init)

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
        check_size(2, k)
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
        check_size(S, order)
        p = check_prob("p", p)
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
        check_size(S, order)
        alpha = check_positive("alpha", alpha)
        gen = torch.Generator().manual_seed(check_seed(seed))
        kernel = dirichlet(alpha, (S**order, S), gen, "cpu").reshape([S] * (order + 1))
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
    """Every sequence (or group of sequences) draws its own order-k kernel; rows ~ Dirichlet(alpha).

    ``group_size``: consecutive sequences of one ``sample`` call (a minibatch) share one kernel
    in groups of ``group_size`` (the last group may be shorter); 1 (default) = a kernel per
    sequence; None = one kernel per minibatch, the authors' ``--chain random``
    (Bond1995/Markov, Markov-LLM-depth; binary rows P(1|.) ~ Uniform(0, 1) is states=2,
    alpha=1). Each sequence's law, hence every per-sequence reference, is the same whatever
    the group size; ``sample_kernels`` draws independent kernels from the prior.

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
    group_size: int | None = 1
    family: ClassVar[str] = "in_context"

    def __post_init__(self):
        object.__setattr__(self, "states", check_int("states", self.states, 2))
        object.__setattr__(self, "order", check_int("order", self.order, 1))
        check_size(self.states, self.order)
        object.__setattr__(self, "alpha", check_positive("alpha", self.alpha))
        if not isinstance(self.doubly_stochastic, bool):
            raise ValueError(f"doubly_stochastic must be a bool, got {self.doubly_stochastic!r}")
        check_init(self.init)
        if self.group_size is not None:
            what = " (sequences per kernel; None: one kernel per minibatch)"
            object.__setattr__(
                self, "group_size", check_int("group_size", self.group_size, 1, what)
            )
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

    @property
    def add_alpha_is_bayes(self) -> bool:
        """Whether the add-alpha predictor (``next_token_probs`` without kernels) is the exact
        Bayes posterior predictive: independent Dirichlet(alpha) rows and uniform first tokens.
        The doubly stochastic prior couples the rows (not Dirichlet per row) and
        init="stationary" makes the first tokens informative, so there it is only add-alpha."""
        return not self.doubly_stochastic and self.init == "uniform"

    def per_sequence(self) -> InContextChain:
        """This chain with a kernel per sequence (group_size=1): each sequence has the same law,
        and independent sequences estimate per-sequence expectations (losses) best."""
        return dataclasses.replace(self, group_size=1)

    def sample_kernels(
        self, batch: int, *, generator: torch.Generator | None = None, device=None
    ) -> Float[Tensor, "batch *ctx S"]:
        """``batch`` independent kernels from the prior, float64 [batch] + [S]*k + [S]."""
        device = torch.device(device or (generator.device if generator is not None else "cpu"))
        flat = self._draw_prior(check_int("batch", batch, 1), generator, device)
        return flat.reshape([batch] + [self.states] * (self.order + 1))

    def _draw_kernels(self, batch, generator, device):
        """One prior draw per group of ``group_size`` consecutive sequences, repeated over it."""
        g = batch if self.group_size is None else min(self.group_size, batch)
        if g == 1:
            return self._draw_prior(batch, generator, device)
        groups = -(-batch // g)
        return self._draw_prior(groups, generator, device).repeat_interleave(g, 0)[:batch]

    def _draw_prior(self, batch, generator, device) -> Float[Tensor, "batch M S"]:
        S, k = self.states, self.order
        if not self.doubly_stochastic:
            return dirichlet(self.alpha, (batch, S**k, S), generator, device)
        C = S ** (k - 1)  # contexts of the k-1 newest tokens
        w = dirichlet(self.alpha, (batch, C, S), generator, device)
        sigma = random_permutations((batch, C), S, generator, device)
        tau = random_permutations((batch, C), S, generator, device)
        idx = (tau[:, :, None, :] - sigma[:, :, :, None]) % S  # [B, C, a, s]
        A = w.gather(2, idx.reshape(batch, C, S * S)).reshape(batch, C, S, S)
        return A.permute(0, 2, 1, 3).reshape(batch, S**k, S)  # z = a * C + c

    def _init_law(self, kernels):
        B, M = kernels.shape[:2]
        if self.init == "uniform" or self.doubly_stochastic:
            return torch.full((1, M), 1.0 / M, dtype=torch.float64, device=kernels.device)
        return batched_stationary(kernels)

    def next_token_probs(
        self, tokens: Int[Tensor, "batch pos"], kernels: Float[Tensor, "..."] | None = None
    ) -> Float[Tensor, "batch pos S"]:
        """With ``kernels`` ([batch] + [S]*k + [S]): the oracle law (see MarkovChain).

        Without: the Bayes posterior predictive under the Dirichlet(alpha) prior, i.e.
        add-alpha counts of the (last k tokens, next) pairs seen so far in the sequence,
        uniform while fewer than k tokens are seen. Exact for independent rows and uniform
        init (``add_alpha_is_bayes``); for ``doubly_stochastic`` or ``init='stationary'`` it
        ignores the extra prior structure (then it is the add-alpha estimator, not exact
        Bayes). Per sequence, so the same for every ``group_size``.
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
        } | ({} if self.group_size == 1 else {"group_size": self.group_size})
