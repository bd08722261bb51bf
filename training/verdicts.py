"""Did a run learn the kernel ("bigram"), the marginal ("unigram"), or neither? And the plateau.

Two reference losses bracket every run (nats): the optimal loss L* (fixed chains: the entropy
rate, i.e. the optimal order-k predictor; in-context chains: the loss of the add-alpha order-k
estimator of the sequence's counts, the Bayes loss under independent Dirichlet(alpha) rows) and
the unigram loss L_u (fixed chains: H(pi); in-context chains: the in-context add-alpha
unigram loss). gap = L_u - L* > 0. Measured on the fixed evaluation batches:

- rel_excess r = KL(true law || model) / gap, averaged over positions. Its expectation is
  (eval loss - L*) / gap: 0 at the kernel, 1 at the marginal (for fixed chains exactly:
  E_x KL(K[x] || pi) = I(X_n+1; context) = gap). KL instead of the raw loss removes the noise
  of the sampled targets, which matters where gap is small (p + q near 1).
- rel_unigram u = KL(unigram predictor || model) / gap: 0 when the model predicts the marginal
  pi (in-context: the add-alpha token frequencies) at every position.
- dependence d: how much the prediction depends on the context the optimal predictor uses.
  Fixed chains: I_model / I_true, where I_f = sum_z w_z KL(m_z || m) is the information the
  mean prediction m_z given the last k tokens z carries about z (w_z: frequency of z, m: the
  overall mean prediction); 1 for the kernel, 0 for any context-free prediction. In-context
  chains: u / (u + r), 1 at the Bayes predictor, 0 at the in-context unigram predictor.

- context dependence c (fixed chains): mean_n KL(p_n || mean p) / I_true, how much the
  predictions vary with their whole context; 0 for a context-free predictor. A model reading
  x_{n-1} instead of x_n (rows of K^2; p=0.5, q=0.8: loss 0.6620 < L_u = 0.6663) has d ~ 0
  but c ~ 0.085.

Verdict (VerdictRule defaults): "bigram" if r <= 0.2 and d >= 0.5; "unigram" if u <= 0.1,
d <= 0.2 and c <= 0.02 (the prediction does not depend on the context; then r is near 1);
otherwise "neither" (with a verdict_reason when only c kept it from "unigram"). If gap < 1e-4 nats the two references
coincide (p + q = 1: an i.i.d. chain) and the verdict is "bigram" when KL <= 1e-3, else
"neither".

Order reached (chains of order k; L_j = order_losses[j], the best loss from the last j
tokens, L_0 = H(pi), L_k = L*; in-context chains: L_j = the add-alpha order-j estimator's loss,
L_0 the in-context unigram, L_k the add-alpha optimum): the excess over the order-j predictor
is e_j = KL - (L_j - L_k)
(in expectation the model's loss minus L_j; negative when the model does better). Order j >= 1
is reached when -0.2 (L_j - L_{j+1}) <= e_j <= 0.2 (L_{j-1} - L_j) (bigram_max_excess: within
20% of the step order j adds, and not 20% of the next step beyond it), order 0 (the marginal)
when -0.2 (L_0 - L_1) <= e_0 <= unigram_max_distance * gap; orders that add less than min_gap
nats are not told apart from the order below (their steps are merged). The run is labelled
with the highest order reached: "order-k (optimal)", "order-j", "marginal", or "neither". For k >= 2,
"bigram" also requires order k: a first-order predictor on a full-history order-2 chain
(about 10% of the gap above L*, within the 0.2 rule) is "neither", labelled "order-1".

Converged, and a sample large enough (``summarise_metrics``): "unigram" is a claim about where
training ends (a stationary point), so it also needs the approach to be over: the relative
measures r and u of the last ``converged_evals`` evaluations within
``converged_max_drift`` of the last one's. A model still moving towards the marginal (a
30-step run: u 0.17, 0.06, 0.03 at steps 10, 20, 30) is "not converged", not "unigram".
With the evaluation sample's size (eval_targets: predicted tokens), a sample below
``min_eval_targets`` gives no verdict: "undecided" (r's sampling error there is of the order
of its thresholds: its per-token values on p=0.5, q=0.8 have a standard deviation of about
0.5, so 200 tokens put one standard error near 0.04).

Plateau (docs/theory.md section 3): ``plateau_exit_step`` is the first evaluated step with
r < 1/2 (eval loss below the midpoint of L* and L_u) after an evaluation with r >= 1/2, None
if that never happens (also when the run starts below the midpoint). ``plateau_steps`` counts
the updates spent at the unigram point: the sum of the evaluation intervals that start at an
evaluation with |r - 1| <= 0.1 (loss within 10% of the gap from the unigram loss) and
u <= 0.1 (predicting the marginal; this keeps out a model that merely passes through that
loss, like the tied paper init whose loss on a sticky chain starts near it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from training.stats import finite

VERDICTS = ("bigram", "unigram", "neither", "not converged", "undecided")


@dataclass
class VerdictRule:
    """Thresholds of the verdict and the plateau statistics (relative to the gap)."""

    bigram_max_excess: float = 0.2
    bigram_min_dependence: float = 0.5
    unigram_max_distance: float = 0.1
    unigram_max_dependence: float = 0.2
    unigram_max_context: float = 0.02
    near_unigram: float = 0.1
    min_gap: float = 1e-4
    degenerate_max_kl: float = 1e-3
    converged_evals: int = 3
    converged_max_drift: float = 0.05
    min_eval_targets: int = 200

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def verdict(
    rel_excess: float | None,
    rel_unigram: float | None,
    dependence: float | None,
    *,
    gap: float,
    kl: float | None = None,
    rule: VerdictRule | None = None,
    context_dependence: float | None = None,
) -> str:
    """ "bigram", "unigram" or "neither" from one evaluation's relative measures (see module)."""
    return verdict_and_reason(
        rel_excess,
        rel_unigram,
        dependence,
        gap=gap,
        kl=kl,
        rule=rule,
        context_dependence=context_dependence,
    )[0]


def verdict_and_reason(
    rel_excess: float | None,
    rel_unigram: float | None,
    dependence: float | None,
    *,
    gap: float,
    kl: float | None = None,
    rule: VerdictRule | None = None,
    context_dependence: float | None = None,
) -> tuple[str, str | None]:
    """verdict, and for "neither" a reason when the model is close to a label but not it."""
    rule = rule or VerdictRule()
    label = _verdict(rel_excess, rel_unigram, dependence, gap, kl, rule)
    if (
        label == "unigram"
        and finite(context_dependence)
        and context_dependence > rule.unigram_max_context
    ):
        return "neither", (
            f"close to the unigram loss, but the prediction depends on the context "
            f"(context dependence {context_dependence:.3f} > {rule.unigram_max_context})"
        )
    return label, None


def _verdict(rel_excess, rel_unigram, dependence, gap, kl, rule) -> str:
    if gap < rule.min_gap:
        return "bigram" if finite(kl) and kl <= rule.degenerate_max_kl else "neither"
    if not (finite(rel_excess) and finite(rel_unigram)):
        return "neither"
    dep = dependence if finite(dependence) else None
    if rel_excess <= rule.bigram_max_excess and (dep is None or dep >= rule.bigram_min_dependence):
        return "bigram"
    if rel_unigram <= rule.unigram_max_distance and (
        dep is None or dep <= rule.unigram_max_dependence
    ):
        return "unigram"
    return "neither"


def plateau_stats(
    steps: list[int],
    rel_excess: list[float | None],
    rel_unigram: list[float | None] | None = None,
    rule: VerdictRule | None = None,
) -> dict[str, Any]:
    """Plateau statistics of one run's evaluations (steps ascending, r = rel_excess,
    u = rel_unigram; without u only r decides "at the unigram point").

    Returns plateau_exit_step (int or None), plateau_steps (int), plateau_first_step (first
    evaluated step at the unigram point, or None).
    """
    rule = rule or VerdictRule()
    if len(steps) != len(rel_excess) or (
        rel_unigram is not None and len(rel_unigram) != len(steps)
    ):
        raise ValueError(f"{len(steps)} steps but {len(rel_excess)} values")
    us = rel_unigram if rel_unigram is not None else [0.0] * len(steps)
    exit_step = None
    above = False
    first_near = None
    plateau = 0
    for i, (step, r, u) in enumerate(zip(steps, rel_excess, us, strict=True)):
        if not finite(r):
            continue
        if r >= 0.5:
            above = True
        elif above and exit_step is None:
            exit_step = int(step)
        if abs(r - 1.0) <= rule.near_unigram and finite(u) and u <= rule.near_unigram:
            if first_near is None:
                first_near = int(step)
            if i + 1 < len(steps):
                plateau += int(steps[i + 1]) - int(step)
    return {
        "plateau_exit_step": exit_step,
        "plateau_steps": plateau,
        "plateau_first_step": first_near,
    }


def relative(value: float | None, gap: float) -> float | None:
    """value / gap, or None when the gap is degenerate (<= 0, or so small that the ratio
    overflows: p = 5e-324 gives a gap of 4e-321 nats) or the value is missing."""
    if not finite(value) or gap <= 0:
        return None
    ratio = float(value) / gap
    return ratio if math.isfinite(ratio) else None


def order_reached(
    kl: float | None, order_losses: list[float], rule: VerdictRule | None = None
) -> dict[str, Any]:
    """Which order-j predictor a model with excess KL `kl` (nats, over the optimal order-k
    predictor) reaches (see the module): order_excess [e_0..e_k] (nats), order_reached (j or
    None) and order_label."""
    rule = rule or VerdictRule()
    k = len(order_losses) - 1
    if k < 0 or not finite(kl):
        return {"order_excess": None, "order_reached": None, "order_label": "neither"}
    L = [float(x) for x in order_losses]
    excess = [float(kl) - (L[j] - L[k]) for j in range(k + 1)]
    # the orders that can be told apart: each improves on the previous one by >= min_gap
    orders = [0]
    for j in range(1, k + 1):
        if L[orders[-1]] - L[j] >= rule.min_gap:
            orders.append(j)
    reached = None
    for i, j in enumerate(orders):
        below = L[orders[i - 1]] - L[j] if i else None  # the step this order adds
        above = L[j] - L[orders[i + 1]] if i + 1 < len(orders) else None  # the next step
        upper = (
            rule.unigram_max_distance * (L[0] - L[k]) if j == 0 else rule.bigram_max_excess * below
        )
        lower = -rule.bigram_max_excess * above if above is not None else -math.inf
        if j == 0 and len(orders) == 1:
            upper = rule.degenerate_max_kl  # nothing to tell apart: an i.i.d. source
        if lower <= excess[j] <= upper:
            reached = j
    if reached is None:
        label = "neither"
    elif reached == 0:
        label = "marginal"
    else:
        label = f"order-{reached}" + (" (optimal)" if reached == k else "")
    return {"order_excess": excess, "order_reached": reached, "order_label": label}


def converged(metrics: list[dict[str, Any]], rule: VerdictRule | None = None) -> str | None:
    """None when the last ``converged_evals`` records have r and u within
    ``converged_max_drift`` of the last one's (or there is one record: a fixed predictor,
    not a trajectory), else the reason they do not (module)."""
    rule = rule or VerdictRule()
    window = metrics[-rule.converged_evals :]
    if len(window) < 2:  # one record: a fixed predictor, not a trajectory
        return None
    for key, name in (("rel_excess", "r"), ("rel_unigram", "u")):
        values = [m.get(key) for m in window]
        if not all(finite(v) for v in values):
            continue
        drift = max(abs(v - values[-1]) for v in values)
        if drift > rule.converged_max_drift:
            steps = ", ".join(str(m["step"]) for m in window)
            trail = ", ".join(f"{v:.3g}" for v in values)
            return (
                f"still moving: {name} = {trail} at steps {steps} (drift {drift:.3g} > "
                f"{rule.converged_max_drift}); train longer before calling it unigram"
            )
    return None


def summarise_metrics(
    metrics: list[dict[str, Any]],
    gap: float,
    rule: VerdictRule | None = None,
    order_losses: list[float] | None = None,
    eval_targets: int | None = None,
) -> dict[str, Any]:
    """Verdict and plateau statistics from a run's metric records (each with step, kl,
    rel_excess, rel_unigram, dependence). The verdict uses the last record; "unigram" also
    needs ``converged`` ("not converged" otherwise), and an evaluation sample of
    eval_targets < min_eval_targets predicted tokens gives "undecided". With the chain's
    order_losses (fixed chains), also the order reached (order_reached); for order >= 2,
    "bigram" then needs the optimal order."""
    rule = rule or VerdictRule()
    if not metrics:
        raise ValueError("no metric records to summarise")
    last = metrics[-1]
    label, reason = verdict_and_reason(
        last.get("rel_excess"),
        last.get("rel_unigram"),
        last.get("dependence"),
        gap=gap,
        kl=last.get("kl"),
        rule=rule,
        context_dependence=last.get("context_dependence"),
    )
    if label == "unigram":
        still = converged(metrics, rule)
        if still is not None:
            label, reason = "not converged", still
    if eval_targets is not None and eval_targets < rule.min_eval_targets:
        label, reason = (
            "undecided",
            (
                f"the evaluation sample has {eval_targets} predicted tokens, fewer than the "
                f"{rule.min_eval_targets} a verdict needs (raise eval_batches or batch)"
            ),
        )
    out = {"verdict": label}
    if reason:
        out["verdict_reason"] = reason
    if order_losses:
        out |= order_reached(last.get("kl"), order_losses, rule)
        k = len(order_losses) - 1
        if k >= 2 and out["verdict"] == "bigram" and out["order_reached"] != k:
            out["verdict"] = "neither"
    if gap >= rule.min_gap:
        out |= plateau_stats(
            [m["step"] for m in metrics],
            [m.get("rel_excess") for m in metrics],
            [m.get("rel_unigram") for m in metrics],
            rule,
        )
    else:
        out |= {"plateau_exit_step": None, "plateau_steps": None, "plateau_first_step": None}
    return out
