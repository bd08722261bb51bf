"""The two-parameter reduced model of "Local to Global" (Makkuva et al. 2024, arXiv 2406.03072).

docs/theory.md section 4. A rank-one reduction of the single-layer tied transformer on a binary
chain (p = P(1|0), q = P(0|1)) leaves two scalars, an embedding scale e and an MLP/attention
scale w, and the unembedding bias b. Its canonical logit for x_{n+1} = 1 given x_n = x in
{0, 1} is

    f(x) = e^2 (1 + 2 w|w|) x + b - e^2 / 2,

so the prediction depends on (e, w) only through the slope s = e^2 (1 + 2 w|w|). The
population loss is exact: the stationary law pi = (q, p) / (p + q) of x_n and the kernel give

    L(e, w, b) = sum_x pi(x) [softplus(f(x)) - P(1 | x) f(x)]      (nats),

with P(1 | 0) = p, P(1 | 1) = 1 - q. With b at its optimum b*(e, w) the reduced loss is
g(s) = min_c sum_x pi(x) [softplus(s x + c) - P(1|x)(s x + c)]; the optimal offset c solves
pi0 sigma(c) + pi1 sigma(s + c) = pi1, a quadratic in exp(c), and g'(s) = pi1 (sigma(s + c*)
- (1 - q)). Facts (derived here, checked in tests):

- Global minima: s = s* = log((1-p)(1-q) / (pq)), i.e. (1 + 2 w|w|) e^2 = s*; there the
  model predicts the kernel and the loss is the entropy rate.
- e = 0 is the unigram line (loss H(pi)); the Hessian in e there is
  2 pi0 pi1 (p + q - 1)(1 + 2 w|w|). So for p + q > 1 (s* < 0) the points e = 0,
  w > -1/sqrt 2 are local minima (flat along w), for p + q < 1 those with w < -1/sqrt 2.
- Saddle at (e, w) = (0, -1/sqrt 2), where the slope's factor 1 + 2 w|w| changes sign.
- Along the gradient flow of the reduced loss, E = e^2 - w^2 - sign(w) log|w| is conserved:
  dE/dt = 2 e^2 dL/db, which vanishes when b is optimal (b_mode "optimal"); with b a
  parameter of the flow (b_mode "flow") E drifts by that amount. w never changes sign.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

SADDLE_W = -1 / math.sqrt(2)
B_MODES = ("optimal", "flow")


def _t(x) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


@dataclass(frozen=True)
class ReducedModel:
    """The reduced model for the binary chain (p, q), 0 < p, q < 1. All functions broadcast
    over tensors of points and return float64."""

    p: float
    q: float

    def __post_init__(self) -> None:
        for name in ("p", "q"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ValueError(
                    f"{name} must be a probability strictly between 0 and 1, got {v!r}"
                )

    # --- chain quantities ---------------------------------------------------------------
    @property
    def pi1(self) -> float:
        return self.p / (self.p + self.q)

    @property
    def pi0(self) -> float:
        return self.q / (self.p + self.q)

    @property
    def s_star(self) -> float:
        """Optimal slope log((1-p)(1-q)/(pq)): > 0 iff p + q < 1."""
        p, q = self.p, self.q
        return math.log((1 - p) * (1 - q) / (p * q))

    def unigram_loss(self) -> float:
        """H(pi), nats: the loss on the line e = 0 with b optimal."""
        a, b = self.pi0, self.pi1
        return -(a * math.log(a) + b * math.log(b))

    def entropy_rate(self) -> float:
        """(q h(p) + p h(q)) / (p + q), nats: the global minimum of the loss."""

        def h(x: float) -> float:
            return -(x * math.log(x) + (1 - x) * math.log(1 - x))

        return (self.q * h(self.p) + self.p * h(self.q)) / (self.p + self.q)

    # --- the model ----------------------------------------------------------------------
    @staticmethod
    def slope(e, w) -> Tensor:
        """s = e^2 (1 + 2 w|w|)."""
        e, w = _t(e), _t(w)
        return e**2 * (1 + 2 * w * w.abs())

    def logits(self, e, w, b) -> tuple[Tensor, Tensor]:
        """(f(0), f(1)), the logits of x_{n+1} = 1 after x_n = 0 and after x_n = 1."""
        e, b = _t(e), _t(b)
        f0 = b - e**2 / 2
        return f0, f0 + self.slope(e, w)

    def loss(self, e, w, b) -> Tensor:
        """Exact population loss L(e, w, b), nats."""
        f0, f1 = self.logits(e, w, b)
        sp = torch.nn.functional.softplus
        return self.pi0 * (sp(f0) - self.p * f0) + self.pi1 * (sp(f1) - (1 - self.q) * f1)

    def optimal_offset(self, s) -> Tensor:
        """c*(s) = argmin_c of the loss with logits (c, s + c): the root of
        pi0 sigma(c) + pi1 sigma(s + c) = pi1, i.e. u = exp(c) solves
        pi0 e^s u^2 + (pi0 - pi1) u - pi1 = 0 (positive root, in a cancellation-free form)."""
        s = _t(s)
        a0, a1 = self.pi0, self.pi1
        d = a0 - a1
        # u = 2 a1 / (d + sqrt(d^2 + 4 a0 a1 e^s)), computed in logs for large |s|.
        log_disc = torch.logaddexp(
            torch.full_like(s, 2 * math.log(abs(d)) if d != 0 else -math.inf),
            math.log(4 * a0 * a1) + s,
        )
        root = torch.exp(log_disc / 2)
        if d >= 0:  # u = 2 a1 / (d + root): no cancellation
            return math.log(2 * a1) - torch.log(d + root)
        return torch.log(root - d) - math.log(2 * a0) - s  # u = (root - d) / (2 a0 e^s)

    def optimal_bias(self, e, w) -> Tensor:
        """b*(e, w) = c*(s) + e^2 / 2."""
        return self.optimal_offset(self.slope(e, w)) + _t(e) ** 2 / 2

    def reduced_loss(self, e, w) -> Tensor:
        """min_b L(e, w, b), nats."""
        return self.loss(e, w, self.optimal_bias(e, w))

    def dg_ds(self, s) -> Tensor:
        """g'(s) = pi1 (sigma(s + c*(s)) - (1 - q)): the reduced loss's slope derivative."""
        s = _t(s)
        return self.pi1 * (torch.sigmoid(s + self.optimal_offset(s)) - (1 - self.q))

    def reduced_gradient(self, e, w) -> tuple[Tensor, Tensor]:
        """(dL/de, dL/dw) at b = b*(e, w) (envelope theorem)."""
        e, w = _t(e), _t(w)
        g = self.dg_ds(self.slope(e, w))
        return g * 2 * e * (1 + 2 * w * w.abs()), g * 4 * e**2 * w.abs()

    def gradient(self, e, w, b) -> tuple[Tensor, Tensor, Tensor]:
        """(dL/de, dL/dw, dL/db)."""
        e, w, b = _t(e), _t(w), _t(b)
        f0, f1 = self.logits(e, w, b)
        r0 = self.pi0 * (torch.sigmoid(f0) - self.p)
        r1 = self.pi1 * (torch.sigmoid(f1) - (1 - self.q))
        k = 1 + 2 * w * w.abs()
        return -e * r0 + (2 * e * k - e) * r1, r1 * 4 * e**2 * w.abs(), r0 + r1

    def analytic_hessian(self, e: float, w: float, b: float) -> Float[Tensor, "3 3"]:
        """Exact Hessian of L in (e, w, b): sum_x pi(x) [sigma'(f) grad f grad f^T +
        (sigma(f) - P(1|x)) hess f], with grad f = (2e(1+2w|w|)x - e, 4e^2|w|x, 1) and
        hess f = [[2(1+2w|w|)x - 1, 8e|w|x, 0], [8e|w|x, 4e^2 sign(w) x, 0], [0, 0, 0]]
        (w != 0: |w| has a kink at 0)."""
        e, w, b = float(e), float(w), float(b)
        k = 1 + 2 * w * abs(w)
        H = torch.zeros(3, 3, dtype=torch.float64)
        for x, weight, target in ((0, self.pi0, self.p), (1, self.pi1, 1 - self.q)):
            f = k * e**2 * x + b - e**2 / 2
            sig = 1 / (1 + math.exp(-f))
            gf = torch.tensor([2 * e * k * x - e, 4 * e**2 * abs(w) * x, 1.0], dtype=torch.float64)
            hf = torch.tensor(
                [
                    [2 * k * x - 1, 8 * e * abs(w) * x, 0.0],
                    [8 * e * abs(w) * x, 4 * e**2 * math.copysign(1.0, w) * x, 0.0],
                    [0.0, 0.0, 0.0],
                ],
                dtype=torch.float64,
            )
            H += weight * (sig * (1 - sig) * torch.outer(gf, gf) + (sig - target) * hf)
        return H

    # --- geometry -----------------------------------------------------------------------
    @staticmethod
    def energy(e, w) -> Tensor:
        """E = e^2 - w^2 - sign(w) log|w| (defined for w != 0), conserved by the flow."""
        e, w = _t(e), _t(w)
        return e**2 - w**2 - torch.sign(w) * torch.log(w.abs())

    @staticmethod
    def saddle() -> tuple[float, float]:
        """(e, w) = (0, -1/sqrt 2)."""
        return 0.0, SADDLE_W

    def global_min_e(self, w) -> Tensor:
        """e >= 0 on the global-minimum curve (1 + 2w|w|) e^2 = s* at each w; nan where the
        curve does not exist (the factor and s* of opposite signs)."""
        w = _t(w)
        ratio = self.s_star / (1 + 2 * w * w.abs())
        return torch.where(ratio >= 0, ratio.clamp_min(0).sqrt(), torch.nan)

    def unigram_minima(self) -> tuple[float, float]:
        """The w-interval of e = 0 made of local minima: (-1/sqrt 2, inf) for p + q > 1,
        (-inf, -1/sqrt 2) for p + q < 1; empty (nan, nan) for p + q = 1."""
        if self.s_star < 0:
            return SADDLE_W, math.inf
        if self.s_star > 0:
            return -math.inf, SADDLE_W
        return math.nan, math.nan

    def excess(self, e, w) -> Tensor:
        """(reduced loss - entropy rate) / (unigram loss - entropy rate): 0 at the global
        minima, 1 on the unigram line."""
        lo, hi = self.entropy_rate(), self.unigram_loss()
        return (self.reduced_loss(e, w) - lo) / (hi - lo)

    def classify(self, e, w, tol: float = 1e-2) -> list[str]:
        """'global minimum' (excess <= tol), 'unigram' (|excess - 1| <= tol and e^2 <= tol),
        else 'in transit'."""
        r = self.excess(e, w).reshape(-1)
        e2 = (_t(e) ** 2).expand_as(self.excess(e, w)).reshape(-1)
        out = []
        for ri, ei in zip(r.tolist(), e2.tolist(), strict=True):
            if ri <= tol:
                out.append("global minimum")
            elif abs(ri - 1) <= tol and ei <= tol:
                out.append("unigram")
            else:
                out.append("in transit")
        return out

    # --- gradient flow ------------------------------------------------------------------
    def velocity(self, state: Float[Tensor, "n k"], b_mode: str = "optimal") -> Tensor:
        """-grad of the loss at each state (e, w) (b_mode "optimal") or (e, w, b) ("flow")."""
        if b_mode == "optimal":
            ge, gw = self.reduced_gradient(state[:, 0], state[:, 1])
            return -torch.stack([ge, gw], 1)
        ge, gw, gb = self.gradient(state[:, 0], state[:, 1], state[:, 2])
        return -torch.stack([ge, gw, gb], 1)

    def flow(
        self,
        e0,
        w0,
        t_max: float = 200.0,
        n_out: int = 201,
        b_mode: str = "optimal",
        b0=None,
        rtol: float = 1e-8,
        atol: float = 1e-10,
        max_steps: int = 200_000,
    ) -> GradientFlow:
        """Gradient flow d theta/dt = -grad L from every initial point at once (vectorised),
        by the Dormand-Prince 5(4) method with one adaptive step shared by all points
        (error per step below atol + rtol |y| for every point). Records n_out times evenly
        spaced in [0, t_max]. b_mode "flow" also flows b from b0 (default b*(e0, w0))."""
        if b_mode not in B_MODES:
            raise ValueError(f"b_mode must be one of {B_MODES}, got {b_mode!r}")
        if not (t_max > 0 and n_out >= 2):
            raise ValueError(f"need t_max > 0 and n_out >= 2, got {t_max}, {n_out}")
        e0, w0 = torch.broadcast_tensors(_t(e0).reshape(-1), _t(w0).reshape(-1))
        cols = [e0, w0]
        if b_mode == "flow":
            cols.append(self.optimal_bias(e0, w0) if b0 is None else _t(b0).expand_as(e0))
        y = torch.stack(cols, 1).clone()
        times = torch.linspace(0, t_max, n_out, dtype=torch.float64)
        out = [y.clone()]
        t, h, steps = 0.0, 1e-3, 0
        f = self.velocity(y, b_mode)
        for target in times[1:].tolist():
            while t < target - 1e-12:
                if steps >= max_steps:
                    raise RuntimeError(f"flow needed more than {max_steps} steps (stiff?)")
                h = min(h, target - t)
                y_new, f_new, err = _dopri_step(lambda z: self.velocity(z, b_mode), y, f, h)
                scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
                ratio = float((err / scale).abs().max())
                steps += 1
                if ratio <= 1.0:
                    t, y, f = t + h, y_new, f_new
                h *= min(5.0, max(0.2, 0.9 * (ratio if ratio > 0 else 1e-10) ** -0.2))
            out.append(y.clone())
        return GradientFlow(times, torch.stack(out), b_mode, steps)


@dataclass
class GradientFlow:
    """States [len(times), n_points, 2 or 3] = (e, w) or (e, w, b) at the recorded times."""

    times: Tensor
    states: Tensor
    b_mode: str
    n_steps: int

    @property
    def final(self) -> Tensor:
        return self.states[-1]

    def energy_drift(self) -> Tensor:
        """max over time of |E(t) - E(0)| for each point."""
        E = ReducedModel.energy(self.states[..., 0], self.states[..., 1])
        return (E - E[0]).abs().max(0).values


_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
_B5 = [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0]
_B4 = [5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]


def _dopri_step(fn, y: Tensor, f0: Tensor, h: float) -> tuple[Tensor, Tensor, Tensor]:
    """One Dormand-Prince step: (y_next (5th order), f(y_next), y5 - y4)."""
    ks = [f0]
    for i in range(1, 7):
        yi = y + h * sum(a * k for a, k in zip(_A[i], ks, strict=False))
        ks.append(fn(yi))
    y5 = y + h * sum(b * k for b, k in zip(_B5, ks, strict=True))
    y4 = y + h * sum(b * k for b, k in zip(_B4, ks, strict=True))
    return y5, ks[6], y5 - y4


def plot_reduced_landscape(
    model: ReducedModel,
    flows: GradientFlow | None = None,
    e_range: tuple[float, float] = (-2.0, 2.0),
    w_range: tuple[float, float] = (-2.0, 2.0),
    resolution: int = 201,
    ax=None,
):
    """Filled contours of the relative excess loss (min_b L - entropy rate) / (unigram -
    entropy rate) over (w, e) (0: global minimum, 1: unigram; clipped at 3), level sets of
    the conserved E (thin grey), the global-minimum curve, the unigram local-minimum segment,
    the saddle, and the flows' trajectories (start: white dot, end: black square)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    if ax is None:
        ax = Figure(layout="constrained", figsize=(6.2, 5)).subplots()
    w = torch.linspace(*w_range, resolution, dtype=torch.float64)
    e = torch.linspace(*e_range, resolution, dtype=torch.float64)
    W, E_ = torch.meshgrid(w, e, indexing="xy")
    excess = model.excess(E_, W).clamp(max=3.0)
    cs = ax.contourf(W, E_, excess, levels=torch.linspace(0, 3, 31).tolist(), cmap="viridis")
    ax.figure.colorbar(cs, ax=ax, label="relative excess loss (0 kernel, 1 unigram)")
    ax.contour(W, E_, excess, levels=[1.0], colors="orange", linewidths=0.6, linestyles="--")
    energy = model.energy(E_, torch.where(W == 0, 1e-12, W))
    finite = energy[(W.abs() > 0.1)]
    levels = torch.linspace(float(finite.quantile(0.02)), float(finite.quantile(0.98)), 16)
    ax.contour(W, E_, energy, levels=levels.tolist(), colors="0.8", linewidths=0.4)
    ge = model.global_min_e(w)
    ax.plot(w, ge, "r-", lw=2, label="global minima")
    ax.plot(w, -ge, "r-", lw=2)
    lo, hi = model.unigram_minima()
    if not math.isnan(lo):
        lo_, hi_ = max(lo, w_range[0]), min(hi, w_range[1])
        ax.plot([lo_, hi_], [0, 0], color="orange", lw=3, label="unigram local minima")
    ax.plot([SADDLE_W], [0], "wX", ms=10, mec="k", label="saddle (0, -1/sqrt 2)")
    if flows is not None:
        S = flows.states
        for i in range(S.shape[1]):
            ax.plot(S[:, i, 1], S[:, i, 0], "w-", lw=0.8)
        ax.plot(S[0, :, 1], S[0, :, 0], "wo", ms=3)
        ax.plot(S[-1, :, 1], S[-1, :, 0], "ks", ms=3)
    ax.set_xlim(*w_range)
    ax.set_ylim(*e_range)
    ax.set_xlabel("w")
    ax.set_ylabel("e")
    ax.set_title(
        f"reduced model, p={model.p:g}, q={model.q:g} (s* = {model.s_star:.3g})", fontsize=9
    )
    ax.legend(fontsize=7, loc="lower right")
    return ax
