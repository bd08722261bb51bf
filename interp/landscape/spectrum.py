"""The Hessian spectrum at a point and its sampling-error-aware verdict.

``hessian_report`` computes the spectrum (exact or Lanczos, ``interp.hessian``), the
out-of-sample curvatures of each half's extreme eigenvectors, the flat band from the
Hessian's own sampling error, and the verdict (one of ``VERDICTS``); the rules are in the
``interp.landscape`` package docstring.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.hessian import (
    HessianOperator,
    ParamLayout,
    lanczos,
    sequence_curvatures,
    spectral_norm,
)
from interp.landscape.sample import LandscapeConfig, analysis_copy

if TYPE_CHECKING:  # the model (transformer_lens) is imported where one is built
    from training.model import MarkovTransformer
    from training.progress import Counter


VERDICTS = (
    "saddle",
    "local minimum",
    "local minimum (up to flat directions)",
    "degenerate (flat)",
    "inconclusive",
)


@dataclass
class HessianReport:
    """Spectrum of the Hessian of the mean loss on a sample, and the verdict (the
    ``interp.landscape`` package docstring).

    lambda_min / lambda_max: extreme eigenvalues of the sample Hessian (Lanczos: Ritz values,
    with their residual norms); *_se: delta-method standard errors (std of the per-sequence
    curvatures along the eigenvector / sqrt(n); meaningful for a well-separated eigenvalue);
    *_split: share of the eigenvector's squared norm in each parameter. eigenvalues: all
    (exact) or the Ritz values (Lanczos). noise_norm, flat_tol = flat_factor * noise_norm (the
    Weyl band: every eigenvalue's sampling error is within it). flat_band: the band the verdict
    and the counts use, flat_tol tightened for the cluster of eigenvalues inside it (exact
    only, ``flat_cluster_band``; flat_band_detail: its terms); flat_tol with Lanczos.
    heldout_curvature +- heldout_se: the most significantly negative cross-fitted
    out-of-sample curvature among the n_candidates lowest eigenvectors of each half (scored
    on the other half); heldout_max_curvature likewise for the highest; heldout_z: the
    Bonferroni-corrected number of standard errors a candidate needs (k_sigma for one
    candidate). heldout_lowest_* / heldout_top_*: the same held-out curvature along the
    lowest / highest eigenvector itself (candidate 1 of each end), which the reason states
    next to the most significant candidate. n_flat / n_negative / n_positive: eigenvalue counts inside,
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
    flat_band: float
    heldout_curvature: float
    heldout_se: float
    heldout_max_curvature: float
    heldout_max_se: float
    heldout_z: float
    n_candidates: int
    verdict: str
    reason: str
    heldout_lowest_curvature: float | None = None
    heldout_lowest_se: float | None = None
    heldout_top_curvature: float | None = None
    heldout_top_se: float | None = None
    flat_band_detail: dict[str, float] | None = None
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
    progress: Counter | None = None,
) -> HessianReport:
    """Hessian spectrum of the mean loss over `tokens` at the model's parameters, with the
    sampling-error-aware verdict described in the ``interp.landscape`` package docstring.
    progress: a ``training.progress.Counter`` of Hessian-vector products (an exact Hessian
    counts P), its total set here to the plan's upper bound and its phase to the step."""
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
    tick = progress.advance if progress is not None else None

    def phase(name: str) -> None:
        if progress is not None:
            progress.phase = name
            progress.advance(0)

    if progress is not None:  # at most: spectra, noise_draws norms, the cluster band's (exact)
        noise_iters = min(cfg.noise_iters, P)
        spectra = 2 * P if method == "exact" else 3 * min(cfg.lanczos_iters, P)
        cluster = 3 * cfg.noise_draws * noise_iters if method == "exact" else 0
        progress.total = spectra + cfg.noise_draws * noise_iters + cluster
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    full = HessianOperator(work, layout, theta, tokens, on_products=tick)
    half = n // 2
    idx_a, idx_b = torch.arange(half), torch.arange(half, n)
    ops_a = HessianOperator(work, layout, theta, tokens[:half], on_products=tick)
    extra: dict[str, Any] = {}
    n_hvp = 0
    if method == "exact":
        phase("exact Hessian, full sample and one half")
        H = full.dense()
        ev, V = torch.linalg.eigh(H)
        v_min, v_max = V[:, 0], V[:, -1]
        H_a = ops_a.dense()
        H_b = (n * H - half * H_a) / (n - half)  # the mean over the other half, exactly
        k = min(cfg.n_candidates, P)
        ends_a, ends_b = (_ends(torch.linalg.eigh(M)[1], k) for M in (H_a, H_b))
        n_hvp += 2 * P
    else:
        phase("Lanczos, full sample then each half")
        res = lanczos(full.matvec, P, cfg.lanczos_iters, generator=gen, device=theta.device)
        ev = res.values
        v_min, v_max = res.vectors[:, 0], res.vectors[:, -1]
        extra["lanczos_residual_min"] = float(res.residuals[0])
        extra["lanczos_residual_max"] = float(res.residuals[-1])
        ops_b = HessianOperator(work, layout, theta, tokens[half:], on_products=tick)
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
    norms, weights = [], []
    for draw in range(cfg.noise_draws):
        phase(f"sampling noise, draw {draw + 1}/{cfg.noise_draws}")
        eps = torch.randint(0, 2, (n,), generator=gen).to(theta) * 2 - 1
        weights.append((eps - eps.mean()) / n)
        noise = HessianOperator(work, layout, theta, tokens, weights[-1], on_products=tick)
        norms.append(
            spectral_norm(noise.matvec, P, cfg.noise_iters, generator=gen, device=theta.device)
        )
        n_hvp += noise.n_matvecs
        del noise  # its graph spans the whole sample: free it before the next draw's
    lam_min, lam_max = float(ev[0]), float(ev[-1])
    noise_norm = float(sum(norms) / len(norms))
    tol = cfg.flat_factor * noise_norm

    def same_draws() -> Iterator[HessianOperator]:
        """The noise operators of the draws above, rebuilt one at a time (each holds a graph
        over the whole sample, so they are not kept between the two uses)."""
        nonlocal n_hvp
        for w in weights:
            noise = HessianOperator(work, layout, theta, tokens, w, on_products=tick)
            yield noise
            n_hvp += noise.n_matvecs

    band, band_detail = tol, None
    if method == "exact":
        phase("flat band of the eigenvalue cluster")
        band, band_detail = flat_cluster_band(ev, V, same_draws(), tol, cfg, gen)
    # Out-of-sample curvature along each half's k lowest (highest) eigenvectors, scored on
    # the other half; k candidates per side, so the threshold is Bonferroni-corrected.
    z = NormalDist().inv_cdf(1 - NormalDist().cdf(-cfg.k_sigma) / k)
    # Exactly flat directions give curvatures of rounding size (~1e-16) with rounding-size
    # spreads; a floor at 1000 ulps of the spectrum's scale keeps them from counting.
    numerical = 1e3 * torch.finfo(theta.dtype).eps * max(float(ev.abs().max()), noise_norm)
    heldout, extremes = [], []
    phase("held-out curvatures")
    for side in (0, 1):
        c_a = sequence_curvatures(work, layout, theta, tokens[idx_b], ends_a[side], cfg.batch_size)
        c_b = sequence_curvatures(work, layout, theta, tokens[idx_a], ends_b[side], cfg.batch_size)
        mean = (c_a.mean(1) + c_b.mean(1)) / 2
        se = (c_a.var(1) / c_a.shape[1] + c_b.var(1) / c_b.shape[1]).sqrt() / 2
        se = (se**2 + numerical**2).sqrt()
        t = mean / se.clamp_min(1e-300)
        j = int(t.argmin()) if side == 0 else int(t.argmax())
        heldout.append((float(mean[j]), float(se[j]), j))
        extremes.append((float(mean[0]), float(se[0])))  # candidate 0: the extreme eigenvector
        phase(f"held-out curvatures, {('lowest', 'highest')[side]} end done")
    (ho_min, ho_min_se, j_min), (ho_max, ho_max_se, j_max) = heldout
    _, se_min = _mean_se(sequence_curvatures(work, layout, theta, tokens, v_min, cfg.batch_size))
    _, se_max = _mean_se(sequence_curvatures(work, layout, theta, tokens, v_max, cfg.batch_size))
    if method == "exact":
        extra["n_flat"] = int((ev.abs() <= band).sum())
        extra["n_negative"] = int((ev < -band).sum())
        extra["n_positive"] = int((ev > band).sum())
        extra["flat_band_detail"] = band_detail
        pos = V[:, ev > band]
        if pos.shape[1]:
            share = pos.pow(2).sum(1)
            extra["positive_space_split"] = {
                name: float(share[sl].sum() / pos.shape[1]) for name, sl in layout.slices().items()
            }
    verdict, reason = _verdict(
        lam_min,
        band,
        (ho_min, ho_min_se),
        (ho_max, ho_max_se),
        z,
        extra.get("lanczos_residual_min"),
        n_cand=k,
        ranks=(j_min, j_max),
        top=extremes[1],
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
        flat_band=band,
        heldout_curvature=ho_min,
        heldout_se=ho_min_se,
        heldout_max_curvature=ho_max,
        heldout_max_se=ho_max_se,
        heldout_z=z,
        n_candidates=k,
        heldout_lowest_curvature=extremes[0][0],
        heldout_lowest_se=extremes[0][1],
        heldout_top_curvature=extremes[1][0],
        heldout_top_se=extremes[1][1],
        verdict=verdict,
        reason=reason,
        n_hvp=n_hvp,
        seconds=time.perf_counter() - start,
        v_min=v_min.detach().cpu(),
        v_max=v_max.detach().cpu(),
        **extra,
    )


def flat_cluster_band(
    ev: Float[Tensor, " P"],
    V: Float[Tensor, "P P"],
    noises: Iterable[HessianOperator],
    tol: float,
    cfg: LandscapeConfig,
    generator: torch.Generator,
) -> tuple[float, dict[str, float] | None]:
    """The flat band tightened for the cluster C of eigenvalues with |lambda| <= tol.

    Weyl's bound (tol = f ||E||, E the Hessian's sampling error, f = flat_factor) is set by the
    noisiest direction, usually a strongly curved one. The eigenvalues of C move by at most
    ||E_CC|| + ||E_perp,C||^2 / gap (the quadratic residual bound for a perturbed eigenvalue
    cluster; Li & Li 2005), where E_CC = V_C^T E V_C is the noise inside C's eigenspace,
    E_perp,C = (I - V_C V_C^T) E V_C its coupling to the rest, and gap the distance from C's
    eigenvalues to the others. Each norm is estimated, like ||E||, on the random-sign noise
    draws (Lanczos; mean over draws) and scaled by f. Returns (band, its terms), the band
    being at most tol; (tol, None) when no eigenvalue is inside the band.
    """
    inside = ev.abs() <= tol
    if not inside.any():
        return tol, None
    V_C = V[:, inside]
    lo, hi = float(ev[inside].min()), float(ev[inside].max())
    outside = ev[~inside]
    gaps = [lo - float(x) for x in outside[outside < lo]] + [
        float(x) - hi for x in outside[outside > hi]
    ]
    gap = min(gaps, default=math.inf)
    dim = V_C.shape[1]
    within, coupling = [], []
    for noise in noises:

        def cc(x: Tensor, noise=noise) -> Tensor:
            return V_C.T @ noise.matvec(V_C @ x)

        def coupled(x: Tensor, noise=noise) -> Tensor:  # R^T R x, R = (I - V_C V_C^T) E V_C
            y = noise.matvec(V_C @ x)
            return V_C.T @ noise.matvec(y - V_C @ (V_C.T @ y))

        iters = min(cfg.noise_iters, dim)
        within.append(spectral_norm(cc, dim, iters, generator=generator, device=ev.device))
        if math.isfinite(gap):
            coupling.append(
                spectral_norm(coupled, dim, iters, generator=generator, device=ev.device) ** 0.5
            )
    f = cfg.flat_factor
    e_cc = sum(within) / len(within)
    e_perp = sum(coupling) / len(coupling) if coupling else 0.0
    band = f * e_cc + ((f * e_perp) ** 2 / gap if math.isfinite(gap) else 0.0)
    detail = {"noise_within": e_cc, "noise_coupling": e_perp, "gap": gap, "cluster_size": dim}
    return min(tol, band), detail


def _verdict(
    lam_min: float,
    tol: float,
    heldout_min: tuple[float, float],
    heldout_max: tuple[float, float],
    k: float,
    residual: float | None,
    *,
    n_cand: int = 1,
    ranks: tuple[int, int] = (0, 0),
    top: tuple[float, float] | None = None,
) -> tuple[str, str]:
    """The verdict from the extreme eigenvalue, the flat band and the held-out curvatures
    (the most significant of n_cand candidates per end, at 0-based ranks; top: the held-out
    curvature along the highest eigenvector itself)."""
    (lo, lo_se), (hi, hi_se) = heldout_min, heldout_max
    down = (
        f"held-out curvature along the lowest eigenvector {lo:.3g} +- {lo_se:.2g}"
        if ranks[0] == 0
        else f"held-out curvature {lo:.3g} +- {lo_se:.2g} along eigenvector {ranks[0] + 1} "
        f"from the bottom (the most negative of {n_cand} candidates)"
    )
    up = (
        f"along the highest eigenvector {hi:.3g} +- {hi_se:.2g}"
        if ranks[1] == 0
        else f"along eigenvector {ranks[1] + 1} from the top {hi:.3g} +- {hi_se:.2g} (the most "
        f"significant of {n_cand} candidates"
        + (f"; along the highest itself {top[0]:.3g} +- {top[1]:.2g}" if top else "")
        + ")"
    )
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
