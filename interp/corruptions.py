"""In-distribution corruptions for activation patching (docs/theory.md section 5).

A ``PatchingData`` holds a clean batch, a corrupted batch of the same shape, the true next token
after the clean context (the label) and the true law of the next token under both contexts.
The model reads both batches and is scored at the last position N-1, whose output predicts
x_{N+1}; the corrupted token is x_n = tokens[:, position] (default the last one, n = N-1).

Corruptions (all keep the inputs in the chain's support, no Gaussian noise):

- "flip": x_n -> another token (binary: 1 - x_n; S > 2: uniform over the other S - 1 tokens).
- "resample": x_n redrawn from its law given the past, P(x_n | x_1..x_{n-1}) (for in-context
  chains from the sequence's own kernel); about P(x_n | past) of the examples keep their token
  and are unchanged, which the batch-mean normalisation absorbs.
- "kernel_swap" (in-context chains only): the context is re-drawn under another kernel and
  the current token kept, x'_1..x'_{n-1} ~ a fresh sequence with a fresh kernel K' from the
  prior, x'_n = x_n. The corrupted prefix is exactly in distribution, the current token is
  shared, so the only difference is the in-context evidence about the kernel. (With
  ``position`` < N-1, the tokens after the position are kept too.)

True next-token laws are the chain's ``next_token_probs``: kernel rows for fixed chains, the
Bayes posterior predictive (add-alpha counts) for in-context chains, which is what a model that
does not know the kernel should output. The label x_{N+1} is drawn from the true kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from training.chains import InContextChain, MarkovChain

CORRUPTIONS = ("flip", "resample", "kernel_swap")
NO_CHANGE_TOL = 1e-9  # |P_clean - P_corrupt| below this: the corruption changed nothing


@dataclass
class PatchingData:
    """A clean/corrupted pair of batches plus what the metrics need (module docstring)."""

    clean: Int[Tensor, "batch pos"]
    corrupt: Int[Tensor, "batch pos"]
    labels: Int[Tensor, " batch"]
    clean_probs: Float[Tensor, "batch S"]
    corrupt_probs: Float[Tensor, "batch S"]
    position: int
    corruption: str

    @property
    def n_states(self) -> int:
        return self.clean_probs.shape[-1]

    @property
    def answer(self) -> Int[Tensor, " batch"]:
        """The token whose probability the corruption lowers most (the clean answer)."""
        return (self.clean_probs - self.corrupt_probs).argmax(-1)

    @property
    def foil(self) -> Int[Tensor, " batch"]:
        """The token whose probability the corruption raises most (binary: the other one)."""
        return (self.clean_probs - self.corrupt_probs).argmin(-1)

    @property
    def informative(self) -> Bool[Tensor, " batch"]:
        """Examples whose true next-token law the corruption changes."""
        return (self.clean_probs - self.corrupt_probs).abs().amax(-1) > NO_CHANGE_TOL

    @property
    def changed(self) -> Bool[Tensor, " batch"]:
        """Pairs whose corrupted input differs from the clean one ("resample" keeps the token
        of about P(x_n | past) of them: those pairs carry no information)."""
        return (self.clean != self.corrupt).any(-1)

    def true_metric(self, metric: str) -> tuple[Float[Tensor, " batch"], Float[Tensor, " batch"]]:
        """A perfect predictor's per-example metric under the clean and the corrupted law:
        "logit_diff" log P(answer) - log P(foil) (0 for uninformative examples), "logprob"
        log P(label) (nats)."""
        out = []
        for probs in (self.clean_probs, self.corrupt_probs):
            lp = probs.clamp_min(1e-300).log()
            if metric == "logit_diff":
                picked = lp.gather(-1, torch.stack([self.answer, self.foil], -1))
                out.append((picked[:, 0] - picked[:, 1]) * self.informative.to(lp.dtype))
            else:
                out.append(lp.gather(-1, self.labels[:, None])[:, 0])
        return out[0], out[1]

    def true_logit_diff(self) -> tuple[float, float]:
        """Batch means of log P(answer) - log P(foil) under the clean and the corrupted law
        (0 for uninformative examples): the logit-diff metric of a perfect predictor."""
        clean, corrupt = self.true_metric("logit_diff")
        return float(clean.mean()), float(corrupt.mean())

    def true_logprob(self) -> tuple[float, float]:
        """Batch means of log P(label) under the clean and the corrupted law (nats)."""
        clean, corrupt = self.true_metric("logprob")
        return float(clean.mean()), float(corrupt.mean())

    def to(self, device) -> PatchingData:
        return PatchingData(
            clean=self.clean.to(device),
            corrupt=self.corrupt.to(device),
            labels=self.labels.to(device),
            clean_probs=self.clean_probs.to(device),
            corrupt_probs=self.corrupt_probs.to(device),
            position=self.position,
            corruption=self.corruption,
        )


def _true_probs(chain: MarkovChain, tokens: Tensor) -> Float[Tensor, "batch S"]:
    """Law of the token after ``tokens`` (last position) as the model should predict it."""
    return chain.next_token_probs(tokens)[:, -1]


def make_patching_data(
    chain: MarkovChain,
    corruption: str,
    batch: int,
    length: int,
    generator: torch.Generator,
    position: int = -1,
) -> PatchingData:
    """Sample ``batch`` clean sequences of ``length`` tokens (plus the label x_{N+1}) from
    ``chain`` with ``generator`` and corrupt token ``position`` (negative counts from the end)."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {corruption!r}")
    if not isinstance(length, int) or length < 2:
        raise ValueError(f"length must be an int >= 2, got {length!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    pos = position + length if position < 0 else position
    if not 0 <= pos < length:
        raise ValueError(f"position {position} is outside a sequence of {length} tokens")
    in_context = isinstance(chain, InContextChain)
    if corruption == "kernel_swap" and not in_context:
        raise ValueError(
            f"corruption 'kernel_swap' needs an in-context chain, got a {chain.family} chain; "
            "use 'flip' or 'resample'"
        )
    if corruption == "resample" and pos == 0:
        raise ValueError("corruption 'resample' needs position >= 1 (x_n given a non-empty past)")

    tokens, kernels = chain.sample(batch, length + 1, generator=generator, return_kernels=True)
    clean, labels = tokens[:, :length], tokens[:, length]
    corrupt = clean.clone()
    S = chain.n_states
    if corruption == "flip":
        shift = torch.randint(1, S, (batch,), generator=generator) if S > 2 else 1
        corrupt[:, pos] = (clean[:, pos] + shift) % S
    elif corruption == "resample":
        law = chain.next_token_probs(clean[:, :pos], kernels if in_context else None)[:, -1]
        corrupt[:, pos] = torch.multinomial(law.float(), 1, generator=generator)[:, 0]
    else:  # kernel_swap
        other = chain.sample(batch, length, generator=generator)
        corrupt[:, :pos] = other[:, :pos]
    return PatchingData(
        clean=clean,
        corrupt=corrupt,
        labels=labels,
        clean_probs=_true_probs(chain, clean),
        corrupt_probs=_true_probs(chain, corrupt),
        position=pos,
        corruption=corruption,
    )
