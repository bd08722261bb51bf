"""How landscape quantities are estimated, and the loss and gradient on a fixed sample.

``LandscapeConfig`` (the sample, the Hessian method and the verdict's error budget);
``sample_tokens`` (a fixed, seeded sample from a chain); ``analysis_copy`` (a frozen float64
copy of a model); ``population_loss`` (mean loss with its standard error from the
per-sequence losses) and ``population_gradient`` (the gradient with its sampling noise from
independent groups of sequences).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.func import grad

from interp.hessian import ParamLayout, sequence_losses
from training.chains import MarkovChain
from training.devices import resolve_device
from training.jsonconfig import JsonConfig

if TYPE_CHECKING:  # the model (transformer_lens) is imported where one is built
    from training.model import MarkovTransformer


METHODS = ("auto", "exact", "lanczos")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class LandscapeConfig(JsonConfig):
    """How landscape quantities are estimated.

    n_sequences, seq_len (None: the model's n_ctx), seed: the fixed sample from the chain.
    method: "exact" Hessian (torch.func, P x P), "lanczos" (Hessian-vector products), or
    "auto" (exact when P <= exact_max_params). n_groups: independent groups of sequences for
    the gradient's sampling noise (at most n_sequences / 2). lanczos_iters: Lanczos steps
    for the spectrum. noise_draws x noise_iters: random-sign draws, and Lanczos steps for the
    spectral norm of each, for the Hessian's sampling error. n_candidates: eigenvectors per
    end of each half's spectrum scored on the other half. k_sigma: held-out standard errors
    needed to call a saddle (or confirm positive curvature) for one candidate, corrected for
    n_candidates by Bonferroni. flat_factor: the flat band is flat_factor * noise_norm.
    include: parameter names or fnmatch patterns spanning the directions (None: all).
    batch_size: sequences per forward pass for losses.
    """

    config_name = "landscape config"

    n_sequences: int = 2048
    seq_len: int | None = None
    seed: int = 0
    method: str = "auto"
    exact_max_params: int = 400
    n_groups: int = 16
    lanczos_iters: int = 80
    noise_draws: int = 3
    noise_iters: int = 30
    n_candidates: int = 8
    k_sigma: float = 3.0
    flat_factor: float = 2.0
    include: list[str] | None = None
    dtype: str = "float64"
    batch_size: int = 512

    def __post_init__(self) -> None:
        for name in (
            "n_sequences",
            "exact_max_params",
            "lanczos_iters",
            "noise_draws",
            "n_candidates",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("noise_iters", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or self.seq_len < 2):
            raise ValueError(f"seq_len must be None or an integer >= 2, got {self.seq_len!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        g = self.n_groups
        if isinstance(g, bool) or not isinstance(g, int) or g < 2:
            raise ValueError(f"n_groups must be an integer >= 2, got {g!r}")
        if self.n_sequences < 8:
            raise ValueError(f"n_sequences must be at least 8, got {self.n_sequences}")
        for name in ("k_sigma", "flat_factor"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if isinstance(self.include, str):
            self.include = [self.include]


# ------------------------------------------------------------------------ population loss


def default_device() -> torch.device:
    """CUDA when available, else CPU (training.devices.resolve_device)."""
    return resolve_device()


def sample_tokens(
    chain: MarkovChain,
    n_sequences: int,
    seq_len: int,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Int[Tensor, "n_sequences seq_len"]:
    """A fixed sample from `chain` (reproducible from `seed`; drawn on the CPU, then moved)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = chain.sample(n_sequences, seq_len, generator=gen)
    return tokens.to(device or default_device())


def analysis_copy(model: MarkovTransformer, dtype: str = "float64") -> MarkovTransformer:
    """A frozen copy of `model` in `dtype` (eval mode), on the model's device."""
    out = copy.deepcopy(model).to(DTYPES[dtype]).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


@dataclass
class LossEstimate:
    """Mean next-token loss (nats) over a sample and its standard error (per-sequence losses
    are independent across sequences)."""

    mean: float
    se: float
    n_sequences: int
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def per_sequence_loss(
    model: MarkovTransformer, tokens: Int[Tensor, "n pos"], batch_size: int = 512
) -> Float[Tensor, " n"]:
    """Mean next-token cross-entropy of each sequence, nats."""
    out = []
    tokens = tokens.to(next(model.parameters()).device)
    with torch.no_grad():
        for chunk in tokens.split(batch_size):
            out.append(model(chunk, return_type="per_token_loss").mean(-1))
    return torch.cat(out)


def _estimate(values: Float[Tensor, " n"], n_tokens: int) -> LossEstimate:
    n = values.shape[0]
    se = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return LossEstimate(float(values.mean()), se, n, n_tokens)


def population_loss(
    model: MarkovTransformer, tokens: Int[Tensor, "n pos"], batch_size: int = 512
) -> LossEstimate:
    """The loss at the model's parameters on the fixed sample `tokens`, with its SE."""
    values = per_sequence_loss(model, tokens, batch_size)
    return _estimate(values.double(), tokens.shape[0] * (tokens.shape[1] - 1))


@dataclass
class GradientEstimate:
    """Gradient of the mean loss on a sample, flat over `layout`.

    norm: ||g||. noise_norm: estimated sqrt(E||g_sample - g_population||^2) from the spread
    of per-group gradients (what ||g|| would be if the population gradient were 0).
    by_param: per-parameter norms; noise_by_param likewise for the noise.
    """

    gradient: Tensor = field(repr=False)
    layout: ParamLayout = field(repr=False)
    norm: float
    noise_norm: float
    by_param: dict[str, float]
    noise_by_param: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "norm": self.norm,
            "noise_norm": self.noise_norm,
            "ratio": self.norm / self.noise_norm if self.noise_norm > 0 else None,
            "by_param": self.by_param,
            "noise_by_param": self.noise_by_param,
        }


def population_gradient(
    model: MarkovTransformer,
    tokens: Int[Tensor, "n pos"],
    n_groups: int = 16,
    include: list[str] | None = None,
    dtype: str = "float64",
) -> GradientEstimate:
    """Gradient of the mean loss over `tokens` at the model's parameters (in `dtype`), with
    its sampling noise from `n_groups` independent groups of sequences."""
    work = analysis_copy(model, dtype)
    layout = ParamLayout.from_model(work, include)
    theta = layout.flatten(work)
    tokens = tokens.to(theta.device)
    n = tokens.shape[0]
    if n < 4:
        raise ValueError(f"the gradient's noise estimate needs at least 4 sequences, got {n}")
    n_groups = max(2, min(n_groups, n // 2))  # at least 2 sequences per group
    groups = torch.tensor_split(torch.arange(n, device=tokens.device), n_groups)
    grads, sizes = [], []
    for idx in groups:
        chunk = tokens[idx]
        grads.append(grad(lambda t, c=chunk: sequence_losses(work, layout, t, c).mean())(theta))
        sizes.append(len(idx))
    G = torch.stack(grads)
    n_b = torch.tensor(sizes, dtype=G.dtype, device=G.device)
    g = (n_b[:, None] * G).sum(0) / n_b.sum()
    # Per-sequence variance V ~ sum_b n_b (g_b - g)^2 / (G - 1); Var(g) = V / n.
    noise = (n_b[:, None] * (G - g).pow(2)).sum(0) / (len(groups) - 1) / n_b.sum()
    by, noise_by = {}, {}
    for name, sl in layout.slices().items():
        by[name] = float(g[sl].norm())
        noise_by[name] = float(noise[sl].sum().sqrt())
    return GradientEstimate(
        gradient=g.detach(),
        layout=layout,
        norm=float(g.norm()),
        noise_norm=float(noise.sum().sqrt()),
        by_param=by,
        noise_by_param=noise_by,
    )
