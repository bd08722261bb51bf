"""The loss landscape around a point: population loss, gradient, Hessian spectrum and verdict.

The population loss is the expected next-token cross-entropy (nats) of sequences from a chain;
it is estimated on a large fixed sample, and its standard error comes from the per-sequence
mean losses, which are independent across sequences. All second-order quantities are computed
in float64 on a copy of the model.

The Hessian verdict (`hessian_report`) uses no magic threshold, only sampling error:

- Curvature of either sign is certified out of sample. The sequences are split into halves
  A and B; the k lowest (and k highest) eigenvectors v of the Hessian on A are scored on B by
  the per-sequence curvatures v^T H_i v, whose mean is an unbiased estimate of v^T H v
  (H: the population Hessian; lambda_min(H) <= v^T H v <= lambda_max(H) for a unit v) and
  whose standard error is their standard deviation / sqrt(n_B); the same with the halves
  swapped, and the two estimates averaged. A saddle needs a candidate below -z standard
  errors, confirmed positive curvature one above +z, with z = k_sigma corrected for the k
  candidates (Bonferroni): the false-alarm rate is that of one k_sigma test.
- "Flat" means within the sampling error of the Hessian itself: noise_norm estimates
  ||H_sample - H|| (spectral norm) as that of sum_i (eps_i - mean eps) / n H_i for random
  signs eps_i (the same covariance as the sampling error; Lanczos on Hessian-vector
  products), and by Weyl's inequality every sample eigenvalue is within that of the
  population one. Eigenvalues with |lambda| <= flat_factor * noise_norm are flat within error.

Verdicts: "saddle" (negative curvature confirmed out of sample); "local minimum" (every
eigenvalue above the flat band); "local minimum (up to flat directions)" (no negative
curvature beyond error, lambda_min within the flat band, positive curvature confirmed out of
sample: the second-order test cannot see past the flat directions); "degenerate (flat)" (no
curvature of either sign confirmed: the Hessian is zero within error); "inconclusive"
(lambda_min below the band but not confirmed out of sample, or Lanczos not converged: use more
sequences or iterations).

theta_pi (docs/theory.md sections 1 and 4): `training.inits.init_theta_pi` with pi the chain's
stationary marginal. Its loss is the unigram loss H(pi) and its gradient vanishes in
expectation; on a finite sample only the unembedding bias and the (tied or untied) W_U get a
nonzero gradient, pi - (empirical next-token frequencies) times the final-LayerNorm output,
of order 1/sqrt(tokens). `hessian_proxy` is the paper code's proxy
lambda_min(2 (p + q - 1) I_d + Cov_n(p_n)) over the positional embeddings p_n.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.func import grad

from interp.hessian import (
    HessianOperator,
    ParamLayout,
    lanczos,
    sequence_curvatures,
    sequence_losses,
    spectral_norm,
)
from training.chains import BinaryChain, MarkovChain
from training.config import ModelConfig
from training.devices import resolve_device
from training.inits import init_theta_pi
from training.references import entropy_rate, stationary_marginal, unigram_loss

if TYPE_CHECKING:  # the model (transformer_lens) is imported where one is built
    from training.model import MarkovTransformer

METHODS = ("auto", "exact", "lanczos")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
VERDICTS = (
    "saddle",
    "local minimum",
    "local minimum (up to flat directions)",
    "degenerate (flat)",
    "inconclusive",
)


@dataclass
class LandscapeConfig:
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LandscapeConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown landscape config keys {unknown}; allowed: {sorted(names)}")
        return cls(**d)


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


# --------------------------------------------------------------------------------- Hessian


@dataclass
class HessianReport:
    """Spectrum of the Hessian of the mean loss on a sample, and the verdict (module doc).

    lambda_min / lambda_max: extreme eigenvalues of the sample Hessian (Lanczos: Ritz values,
    with their residual norms); *_se: delta-method standard errors (std of the per-sequence
    curvatures along the eigenvector / sqrt(n); meaningful for a well-separated eigenvalue);
    *_split: share of the eigenvector's squared norm in each parameter. eigenvalues: all
    (exact) or the Ritz values (Lanczos). noise_norm, flat_tol = flat_factor * noise_norm.
    heldout_curvature +- heldout_se: the most significantly negative cross-fitted
    out-of-sample curvature among the n_candidates lowest eigenvectors of each half (scored
    on the other half); heldout_max_curvature likewise for the highest; heldout_z: the
    Bonferroni-corrected number of standard errors a candidate needs (k_sigma for one
    candidate). n_flat / n_negative / n_positive: eigenvalue counts inside,
    below and above the flat band (exact only). positive_space_split: where the curved-up
    eigenspace lives (exact only).
    """

    method: str
    n_params: int
    n_sequences: int
    n_tokens: int
    lambda_min: float
    lambda_min_se: float
    lambda_max: float
    lambda_max_se: float
    lambda_min_split: dict[str, float]
    lambda_max_split: dict[str, float]
    eigenvalues: list[float]
    noise_norm: float
    flat_tol: float
    heldout_curvature: float
    heldout_se: float
    heldout_max_curvature: float
    heldout_max_se: float
    heldout_z: float
    n_candidates: int
    verdict: str
    reason: str
    n_flat: int | None = None
    n_negative: int | None = None
    n_positive: int | None = None
    positive_space_split: dict[str, float] | None = None
    lanczos_residual_min: float | None = None
    lanczos_residual_max: float | None = None
    n_hvp: int = 0
    seconds: float = 0.0
    v_min: Tensor | None = field(default=None, repr=False)
    v_max: Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d.pop("v_min")
        d.pop("v_max")
        return d


def _ends(vectors: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k lowest and k highest of the eigenvector columns (ascending order), as [k, P]."""
    return vectors[:, :k].T, vectors[:, -k:].flip(1).T


def _mean_se(values: Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std(unbiased=True) / math.sqrt(values.shape[0]))


def hessian_report(
    model: MarkovTransformer,
    tokens: Int[Tensor, "n pos"],
    config: LandscapeConfig | None = None,
) -> HessianReport:
    """Hessian spectrum of the mean loss over `tokens` at the model's parameters, with the
    sampling-error-aware verdict described in the module docstring."""
    cfg = config or LandscapeConfig()
    start = time.perf_counter()
    work = analysis_copy(model, cfg.dtype)
    layout = ParamLayout.from_model(work, cfg.include)
    theta = layout.flatten(work)
    tokens = tokens.to(theta.device)
    n = tokens.shape[0]
    if n < 8:
        raise ValueError(f"the Hessian verdict needs at least 8 sequences, got {n}")
    P = layout.size
    method = cfg.method
    if method == "auto":
        method = "exact" if P <= cfg.exact_max_params else "lanczos"
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    full = HessianOperator(work, layout, theta, tokens)
    half = n // 2
    idx_a, idx_b = torch.arange(half), torch.arange(half, n)
    ops_a = HessianOperator(work, layout, theta, tokens[:half])
    extra: dict[str, Any] = {}
    n_hvp = 0
    if method == "exact":
        H = full.dense()
        ev, V = torch.linalg.eigh(H)
        v_min, v_max = V[:, 0], V[:, -1]
        H_a = ops_a.dense()
        H_b = (n * H - half * H_a) / (n - half)  # the mean over the other half, exactly
        k = min(cfg.n_candidates, P)
        ends_a, ends_b = (_ends(torch.linalg.eigh(M)[1], k) for M in (H_a, H_b))
        n_hvp += 2 * P
    else:
        res = lanczos(full.matvec, P, cfg.lanczos_iters, generator=gen, device=theta.device)
        ev = res.values
        v_min, v_max = res.vectors[:, 0], res.vectors[:, -1]
        extra["lanczos_residual_min"] = float(res.residuals[0])
        extra["lanczos_residual_max"] = float(res.residuals[-1])
        ops_b = HessianOperator(work, layout, theta, tokens[half:])
        halves = [
            lanczos(op.matvec, P, cfg.lanczos_iters, generator=gen, device=theta.device)
            for op in (ops_a, ops_b)
        ]
        k = min(cfg.n_candidates, min(r.n_iter for r in halves))
        ends_a, ends_b = (_ends(r.vectors, k) for r in halves)
        n_hvp += full.n_matvecs + ops_a.n_matvecs + ops_b.n_matvecs
    # Sampling error of H: sum_i (eps_i - mean eps) / n * H_i for random signs eps (own
    # generator, so that the estimate does not depend on the method).
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    norms = []
    for _ in range(cfg.noise_draws):
        eps = torch.randint(0, 2, (n,), generator=gen).to(theta) * 2 - 1
        noise = HessianOperator(work, layout, theta, tokens, (eps - eps.mean()) / n)
        norms.append(
            spectral_norm(noise.matvec, P, cfg.noise_iters, generator=gen, device=theta.device)
        )
        n_hvp += noise.n_matvecs
    lam_min, lam_max = float(ev[0]), float(ev[-1])
    noise_norm = float(sum(norms) / len(norms))
    tol = cfg.flat_factor * noise_norm
    # Out-of-sample curvature along each half's k lowest (highest) eigenvectors, scored on
    # the other half; k candidates per side, so the threshold is Bonferroni-corrected.
    z = NormalDist().inv_cdf(1 - NormalDist().cdf(-cfg.k_sigma) / k)
    # Exactly flat directions give curvatures of rounding size (~1e-16) with rounding-size
    # spreads; a floor at 1000 ulps of the spectrum's scale keeps them from counting.
    numerical = 1e3 * torch.finfo(theta.dtype).eps * max(float(ev.abs().max()), noise_norm)
    heldout = []
    for side in (0, 1):
        c_a = sequence_curvatures(work, layout, theta, tokens[idx_b], ends_a[side], cfg.batch_size)
        c_b = sequence_curvatures(work, layout, theta, tokens[idx_a], ends_b[side], cfg.batch_size)
        mean = (c_a.mean(1) + c_b.mean(1)) / 2
        se = (c_a.var(1) / c_a.shape[1] + c_b.var(1) / c_b.shape[1]).sqrt() / 2
        se = (se**2 + numerical**2).sqrt()
        t = mean / se.clamp_min(1e-300)
        j = int(t.argmin()) if side == 0 else int(t.argmax())
        heldout.append((float(mean[j]), float(se[j])))
    (ho_min, ho_min_se), (ho_max, ho_max_se) = heldout
    _, se_min = _mean_se(sequence_curvatures(work, layout, theta, tokens, v_min, cfg.batch_size))
    _, se_max = _mean_se(sequence_curvatures(work, layout, theta, tokens, v_max, cfg.batch_size))
    if method == "exact":
        extra["n_flat"] = int((ev.abs() <= tol).sum())
        extra["n_negative"] = int((ev < -tol).sum())
        extra["n_positive"] = int((ev > tol).sum())
        pos = V[:, ev > tol]
        if pos.shape[1]:
            share = pos.pow(2).sum(1)
            extra["positive_space_split"] = {
                name: float(share[sl].sum() / pos.shape[1]) for name, sl in layout.slices().items()
            }
    verdict, reason = _verdict(
        lam_min,
        tol,
        (ho_min, ho_min_se),
        (ho_max, ho_max_se),
        z,
        extra.get("lanczos_residual_min"),
    )
    return HessianReport(
        method=method,
        n_params=P,
        n_sequences=int(n),
        n_tokens=int(n * (tokens.shape[1] - 1)),
        lambda_min=lam_min,
        lambda_min_se=se_min,
        lambda_max=lam_max,
        lambda_max_se=se_max,
        lambda_min_split=layout.split(v_min),
        lambda_max_split=layout.split(v_max),
        eigenvalues=[float(x) for x in ev],
        noise_norm=noise_norm,
        flat_tol=tol,
        heldout_curvature=ho_min,
        heldout_se=ho_min_se,
        heldout_max_curvature=ho_max,
        heldout_max_se=ho_max_se,
        heldout_z=z,
        n_candidates=k,
        verdict=verdict,
        reason=reason,
        n_hvp=n_hvp,
        seconds=time.perf_counter() - start,
        v_min=v_min.detach().cpu(),
        v_max=v_max.detach().cpu(),
        **extra,
    )


def _verdict(
    lam_min: float,
    tol: float,
    heldout_min: tuple[float, float],
    heldout_max: tuple[float, float],
    k: float,
    residual: float | None,
) -> tuple[str, str]:
    """The verdict from the extreme eigenvalue, the flat band and the held-out curvatures."""
    (lo, lo_se), (hi, hi_se) = heldout_min, heldout_max
    down = f"held-out curvature along the lowest eigenvector {lo:.3g} +- {lo_se:.2g}"
    up = f"along the highest {hi:.3g} +- {hi_se:.2g}"
    band = f"flat band +-{tol:.2g}"
    if lo + k * lo_se < 0:
        return "saddle", f"negative curvature confirmed out of sample: {down} (< -{k:.2f} SE)"
    if lam_min < -tol:
        return "inconclusive", (
            f"lambda_min {lam_min:.3g} is below the {band} but not confirmed out of sample "
            f"({down}): use more sequences"
        )
    if lam_min > tol:
        if residual is not None and residual > tol:
            return "inconclusive", (
                f"lambda_min {lam_min:.3g} is above the {band} but its Lanczos residual "
                f"{residual:.2g} exceeds the band: use more Lanczos iterations"
            )
        return "local minimum", f"every eigenvalue is above the {band} ({down})"
    if hi - k * hi_se > 0:
        return "local minimum (up to flat directions)", (
            f"no negative curvature beyond sampling error ({down}; lambda_min {lam_min:.3g} "
            f"within the {band}); positive curvature confirmed out of sample ({up}); some "
            "directions are flat within error and the second-order test cannot decide along them"
        )
    return "degenerate (flat)", (
        f"no curvature of either sign beyond sampling error ({down}, {up}; {band})"
    )


# -------------------------------------------------------------------------------- theta_pi


def theta_pi_of(model: MarkovTransformer, chain: MarkovChain) -> MarkovTransformer:
    """A copy of `model` moved to theta_pi for `chain` (W_Q, W_K, W_V, W_pos, LayerNorm
    weights kept: the unigram stationary point nearest in those coordinates)."""
    out = copy.deepcopy(model)
    return init_theta_pi(out, stationary_marginal(chain))


def theta_pi_model(
    model_config: ModelConfig,
    chain: MarkovChain,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> MarkovTransformer:
    """MarkovTransformer(model_config, seed) in `dtype`, set to theta_pi for `chain` (paper
    init for the arbitrary parameters W_Q, W_K, W_V, W_pos; b_U = log pi in `dtype`)."""
    if model_config.d_vocab != chain.n_states:
        raise ValueError(
            f"model d_vocab={model_config.d_vocab} but the chain has {chain.n_states} states"
        )
    from training.model import MarkovTransformer

    model = MarkovTransformer(model_config, seed=seed).to(dtype)
    return init_theta_pi(model, stationary_marginal(chain))


def hessian_proxy(model: MarkovTransformer, p: float, q: float, n_positions: int) -> float:
    """The paper code's Hessian proxy: lambda_min(2 (p + q - 1) I_d + (1/N) sum_n
    (p_n - pbar)(p_n - pbar)^T) over the first N positional embeddings p_n = W_pos[n]
    (docs/theory.md section 1). Positive predicts a local minimum (tied, one layer)."""
    if model.cfg.positional_embedding_type != "standard":
        raise ValueError("the Hessian proxy needs learned positional embeddings")
    W = model.pos_embed.W_pos[:n_positions].detach().double()
    centred = W - W.mean(0)
    cov = centred.T @ centred / W.shape[0]
    d = W.shape[1]
    mat = 2 * (p + q - 1) * torch.eye(d, dtype=W.dtype, device=W.device) + cov
    return float(torch.linalg.eigvalsh(mat)[0])


def paper_prediction(p: float, q: float, tied: bool, n_layers: int) -> str | None:
    """What docs/theory.md section 1 predicts for theta_pi: None where it claims nothing."""
    s = p + q
    if math.isclose(s, 1.0, abs_tol=1e-12):
        return "global minimum (p + q = 1: i.i.d. chain)"
    if n_layers != 1:
        return None
    if not tied:
        return "saddle"
    return "local minimum" if s > 1 else "saddle"


def agreement(verdict: str, prediction: str | None) -> str:
    """'agrees', 'disagrees', 'no prediction', 'undecided' (verdict degenerate/inconclusive) or,
    for "local minimum (up to flat directions)", 'no negative curvature beyond sampling error':
    its flat band can be far wider than lambda_min, so it neither confirms a minimum nor rules
    out a saddle along the flat directions."""
    if prediction is None:
        return "no prediction"
    if verdict in ("inconclusive", "degenerate (flat)"):
        return "undecided"
    if verdict == "local minimum (up to flat directions)":
        return "no negative curvature beyond sampling error"
    minimum_like = verdict.startswith("local minimum")
    wants_minimum = prediction != "saddle"
    return "agrees" if minimum_like == wants_minimum else "disagrees"


def theta_pi_analysis(
    chain: MarkovChain,
    model_config: ModelConfig,
    config: LandscapeConfig | None = None,
    model_seed: int = 0,
    device: str | torch.device | None = None,
    with_report: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], HessianReport]:
    """Everything about theta_pi for one chain and architecture, as a JSON-able dict (and the
    HessianReport itself, with its eigenvectors, if with_report).

    Keys: chain, model, landscape (configs); loss (LossEstimate dict), unigram_loss,
    entropy_rate, loss_z ((loss - unigram)/se); gradient (GradientEstimate dict); hessian
    (HessianReport dict); proxy (binary chains with learned positions, else None);
    prediction (paper_prediction) and agreement.
    """
    cfg = config or LandscapeConfig()
    device = torch.device(device) if device is not None else default_device()
    model = theta_pi_model(model_config, chain, model_seed, DTYPES[cfg.dtype]).to(device)
    seq_len = cfg.seq_len or model_config.n_ctx
    if seq_len > model_config.n_ctx:
        raise ValueError(f"seq_len={seq_len} is longer than the model's n_ctx={model_config.n_ctx}")
    tokens = sample_tokens(chain, cfg.n_sequences, seq_len, cfg.seed, device)
    loss = population_loss(analysis_copy(model, cfg.dtype), tokens, cfg.batch_size)
    grad_est = population_gradient(model, tokens, cfg.n_groups, cfg.include, cfg.dtype)
    report = hessian_report(model, tokens, cfg)
    u = unigram_loss(chain)
    binary = isinstance(chain, BinaryChain)
    proxy = None
    if binary and model_config.positional_embedding_type == "standard":
        proxy = hessian_proxy(model, chain.p, chain.q, seq_len)
    prediction = (
        paper_prediction(chain.p, chain.q, model_config.tie_embeddings, model_config.n_layers)
        if binary
        else None
    )
    result = {
        "chain": chain.to_dict(),
        "model": model_config.to_dict(),
        "model_seed": model_seed,
        "landscape": cfg.to_dict(),
        "loss": loss.to_dict(),
        "unigram_loss": u,
        "entropy_rate": entropy_rate(chain),
        "loss_z": (loss.mean - u) / loss.se if loss.se > 0 else None,
        "gradient": grad_est.to_dict(),
        "hessian": report.to_dict(),
        "proxy": proxy,
        "proxy_prediction": None if proxy is None else ("local minimum" if proxy > 0 else "saddle"),
        "prediction": prediction,
        "agreement": agreement(report.verdict, prediction),
    }
    return (result, report) if with_report else result


# ---------------------------------------------------------------------- escaping the basin


def init_escape_study(
    chain: MarkovChain,
    model_config: ModelConfig,
    train_config,
    seeds: list[int],
    inits: tuple[str, ...] = ("paper", "good"),
    progress: bool = False,
) -> dict[str, Any]:
    """Train one run per (init, seed) with `training.trainer.train` (in memory) and count
    the trainer's verdicts: the fraction of seeds that escape the unigram basin ("bigram")
    under each named initialisation (training.inits). Returns {"rows": one dict per run
    (init, seed, verdict, final_eval_loss, plateau_exit_step, plateau_steps, wall_seconds),
    "fractions": {init: {verdict: share}}, "n_seeds", "chain", "model", "train"}."""
    from training.trainer import train

    if not seeds:
        raise ValueError("seeds must name at least one seed")
    rows = []
    for init in inits:
        mcfg = ModelConfig.from_dict({**model_config.to_dict(), "init": init})
        for seed in seeds:
            res = train(mcfg, chain, train_config, seed=seed, progress=False)
            row = {
                "init": init,
                "seed": seed,
                "verdict": res["verdict"],
                "final_eval_loss": res["final_eval_loss"],
                "plateau_exit_step": res.get("plateau_exit_step"),
                "plateau_steps": res.get("plateau_steps"),
                "wall_seconds": res.get("wall_seconds"),
            }
            rows.append(row)
            if progress:
                print(f"init {init} seed {seed}: {row['verdict']}", flush=True)
    fractions = {}
    for init in inits:
        verdicts = [r["verdict"] for r in rows if r["init"] == init]
        fractions[init] = {v: verdicts.count(v) / len(verdicts) for v in dict.fromkeys(verdicts)}
    return {
        "rows": rows,
        "fractions": fractions,
        "n_seeds": len(seeds),
        "chain": chain.to_dict(),
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
    }


# ------------------------------------------------------------------------------------ grids


def theta_pi_grid(
    ps: list[float],
    qs: list[float],
    architectures: dict[str, ModelConfig],
    config: LandscapeConfig | None = None,
    model_seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """theta_pi_analysis over every (architecture, p, q): one flat row per cell with the
    architecture label, p, q, loss, gradient ratio, lambda_min (+- se), lambda_max,
    flat_tol, held-out curvature, verdict, proxy, prediction and agreement."""
    rows = []
    for label, mcfg in architectures.items():
        for p in ps:
            for q in qs:
                chain = BinaryChain(p, q)
                res = theta_pi_analysis(chain, mcfg, config, model_seed, device)
                h = res["hessian"]
                row = {
                    "architecture": label,
                    "tied": mcfg.tie_embeddings,
                    "n_layers": mcfg.n_layers,
                    "p": p,
                    "q": q,
                    "loss": res["loss"]["mean"],
                    "loss_se": res["loss"]["se"],
                    "unigram_loss": res["unigram_loss"],
                    "grad_ratio": res["gradient"]["ratio"],
                    "lambda_min": h["lambda_min"],
                    "lambda_min_se": h["lambda_min_se"],
                    "lambda_max": h["lambda_max"],
                    "flat_tol": h["flat_tol"],
                    "heldout_curvature": h["heldout_curvature"],
                    "heldout_se": h["heldout_se"],
                    "n_flat": h["n_flat"],
                    "method": h["method"],
                    "n_params": h["n_params"],
                    "verdict": h["verdict"],
                    "proxy": res["proxy"],
                    "prediction": res["prediction"],
                    "agreement": res["agreement"],
                    "seconds": h["seconds"],
                }
                rows.append(row)
                if progress:
                    print(
                        f"{label} p={p} q={q}: lambda_min {row['lambda_min']:.3g}, "
                        f"verdict {row['verdict']} ({row['agreement']})",
                        flush=True,
                    )
    return rows


def grid_table_markdown(rows: list[dict[str, Any]]) -> str:
    """The grid as a markdown table (one line per cell)."""
    head = (
        "| architecture | p | q | p+q | lambda_min (+- se) | flat band | held-out curv. (+- se) "
        "| lambda_max | verdict | proxy | paper | agreement |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        proxy = "" if r["proxy"] is None else f"{r['proxy']:.3g}"
        lines.append(
            f"| {r['architecture']} | {r['p']:g} | {r['q']:g} | {r['p'] + r['q']:.2g} "
            f"| {r['lambda_min']:.3g} +- {r['lambda_min_se']:.2g} | {r['flat_tol']:.2g} "
            f"| {r['heldout_curvature']:.3g} +- {r['heldout_se']:.2g} | {r['lambda_max']:.3g} "
            f"| {r['verdict']} | {proxy} | {r['prediction'] or '-'} | {r['agreement']} |"
        )
    return head + "\n".join(lines) + "\n"


def symlog_ticks(low: float, high: float, linthresh: float, n_max: int = 7) -> list[float]:
    """Major ticks for a symlog axis (linscale 1) over [low, high]: 0 and powers of ten
    (+-linthresh where no power of ten fits), at most about ``n_max``, kept greedily from
    the largest magnitude inward only where they are at least 1/n_max of the axis apart, so
    labels of a small figure spanning many decades do not overlap."""

    def position(y: float) -> float:  # where symlog draws y, in decades
        a = abs(y)
        return y / linthresh if a <= linthresh else math.copysign(1 + math.log10(a / linthresh), y)

    top, bottom = position(max(high, linthresh)), position(min(low, -linthresh))
    gap = (top - bottom) / n_max
    candidates = []
    for sign, end in ((1.0, high), (-1.0, -low)):
        if end > linthresh:
            first = math.ceil(math.log10(linthresh) - 1e-9)
            last = math.floor(math.log10(end) + 1e-9)
            powers = [10.0**d for d in range(last, first - 1, -1)]
            candidates += [sign * v for v in powers] or [sign * linthresh]
        elif end > 0:
            candidates.append(sign * linthresh)
    ticks = [0.0]
    for y in sorted(candidates, key=lambda v: -abs(position(v))):
        if all(abs(position(y) - position(t)) >= gap for t in ticks):
            ticks.append(y)
    return sorted(ticks)


def plot_spectrum(report: HessianReport, ax=None, title: str | None = None):
    """Eigenvalues (exact: all; Lanczos: Ritz values) on a symlog axis with the flat band."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import FixedLocator, FuncFormatter

    if ax is None:
        ax = Figure(layout="constrained", figsize=(6, 3.2)).subplots()
    ev = sorted(report.eigenvalues)
    ax.plot(range(len(ev)), ev, ".", ms=3)
    ax.axhspan(-report.flat_tol, report.flat_tol, color="0.85", label="flat within error")
    ax.axhline(0, color="k", lw=0.5)
    linthresh = max(report.flat_tol, 1e-8)
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.yaxis.set_major_locator(FixedLocator(symlog_ticks(min(ev), max(ev), linthresh)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: "0" if y == 0 else f"{y:.2g}"))
    what = "eigenvalue" if report.method == "exact" else "Lanczos Ritz value"
    ax.set_xlabel(f"{what} index (ascending)")
    ax.set_ylabel("eigenvalue")
    ax.set_title(title or f"Hessian spectrum ({report.method}): {report.verdict}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return ax


def plot_grid(rows: list[dict[str, Any]], path=None):
    """One panel per architecture: lambda_min over (p, q) (sign-symmetric log colour scale),
    the verdict written in each cell, and the line p + q = 1."""
    from matplotlib.colors import SymLogNorm
    from matplotlib.figure import Figure

    archs = list(dict.fromkeys(r["architecture"] for r in rows))
    fig = Figure(figsize=(4.2 * len(archs), 3.8), layout="constrained")
    axes = fig.subplots(1, len(archs), squeeze=False)
    short = {
        "saddle": "saddle",
        "local minimum": "min",
        "local minimum (up to flat directions)": "min*",
        "degenerate (flat)": "flat",
        "inconclusive": "?",
    }
    vmax = max(abs(r["lambda_min"]) for r in rows) or 1.0
    tols = sorted(r["flat_tol"] for r in rows)
    linthresh = max(tols[len(tols) // 2], 1e-8)  # linear (pale) inside a typical flat band
    for ax, arch in zip(axes[0], archs, strict=True):
        sub = [r for r in rows if r["architecture"] == arch]
        ps = sorted({r["p"] for r in sub})
        qs = sorted({r["q"] for r in sub})
        grid = torch.full((len(qs), len(ps)), float("nan"))
        for r in sub:
            grid[qs.index(r["q"]), ps.index(r["p"])] = r["lambda_min"]
        im = ax.imshow(
            grid.numpy(),
            origin="lower",
            cmap="RdBu",
            norm=SymLogNorm(linthresh, vmin=-vmax, vmax=vmax),
        )
        for r in sub:
            ax.text(
                ps.index(r["p"]),
                qs.index(r["q"]),
                short[r["verdict"]],
                ha="center",
                va="center",
                fontsize=8,
            )
        ax.set_xticks(range(len(ps)), [f"{p:g}" for p in ps])
        ax.set_yticks(range(len(qs)), [f"{q:g}" for q in qs])
        ax.set_xlabel("p")
        ax.set_ylabel("q")
        ax.set_title(f"{arch}: lambda_min at theta_pi", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.text(0.01, 0.01, "min* = local minimum up to flat directions", fontsize=7)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


__all__ = [
    "LandscapeConfig",
    "LossEstimate",
    "GradientEstimate",
    "HessianReport",
    "sample_tokens",
    "analysis_copy",
    "per_sequence_loss",
    "population_loss",
    "population_gradient",
    "hessian_report",
    "theta_pi_of",
    "theta_pi_model",
    "hessian_proxy",
    "paper_prediction",
    "agreement",
    "theta_pi_analysis",
    "theta_pi_grid",
    "init_escape_study",
    "grid_table_markdown",
    "plot_spectrum",
    "plot_grid",
]
