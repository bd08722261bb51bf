"""The atlas's per-run label: does the model use the kernel, which component carries it, and is
it stored in the weights or estimated in context? Rules fixed before any atlas was run:

1. ``marginal only``: the run's loss verdict is "unigram" (order label "marginal": the
   prediction does not depend on the context), or at every lag the truth reads, the model's
   flip ratio |rho| <= MARGINAL_RHO (its output ignores the tokens the kernel reads).
2. Otherwise ``kernel`` if the run reached the optimal predictor (first-order chains: verdict
   "bigram"; order k: order-k reached), else ``partial kernel``; without a training summary
   (a constructed model) ``kernel`` means rho >= KERNEL_RHO at every lag the truth reads.
3. The carrier, at the main lag (the token the kernel reads most), from the direct-path shares
   (mean of noising and denoising, interp.atlas.measure):
   - ``via embedding/direct``: the token embedding's share >= CARRIER_SHARE;
   - ``via attention``: the attention layers' share >= CARRIER_SHARE and mean-ablating every
     attention layer removes >= NECESSARY of the flip effect;
   - ``via MLP``: likewise for the MLPs;
   - ``distributed``: none of these (several paths share it, or a path writes it whose
     ablation does not remove it).
   Where two qualify (shares of opposite sign can exceed 1), the larger share wins.
4. `` (in-context)`` is appended when the in-context index on other chains of the family is
   >= IN_CONTEXT: the model tracks the in-context estimate, not its training kernel.
5. ``in-context (induction)`` (``induction_label``, from ``interp.circuits.induction_circuit``'s
   numbers): a previous-token head (previous-token excess >= INDUCTION_PREVIOUS_TOKEN) in an
   earlier layer than the matching head feeds that head's key: path patching the sender ->
   receiver-key path from a shuffled sequence (previous-token alignment broken, token counts
   kept) removes >= INDUCTION_PATH_REMOVED of the in-context dependence (the model's log-prob
   gain over the in-context unigram estimate, which must be >= INDUCTION_MIN_DEPENDENCE nats
   per token on the clean run); and the matching head's attention-to-match exceeds its shuffled
   chance by >= INDUCTION_MATCH_MARGIN.
"""

from __future__ import annotations

import math
from typing import Any

from training.stats import finite

MARGINAL_RHO = 0.1
KERNEL_RHO = 0.5
CARRIER_SHARE = 0.5
NECESSARY = 0.5
IN_CONTEXT = 0.5
THRESHOLDS = {
    "marginal_rho": MARGINAL_RHO,
    "kernel_rho": KERNEL_RHO,
    "carrier_share": CARRIER_SHARE,
    "necessary": NECESSARY,
    "in_context": IN_CONTEXT,
}
INDUCTION = "in-context (induction)"
INDUCTION_PREVIOUS_TOKEN = 0.2  # previous-token excess of the sender head over its shuffled chance
INDUCTION_MATCH_MARGIN = 0.2  # attention-to-match of the matching head minus its shuffled chance
INDUCTION_PATH_REMOVED = 0.5  # fraction of the in-context dependence the key path carries: "most"
INDUCTION_MIN_DEPENDENCE = 0.01  # nats/token: below this there is no dependence to remove
INDUCTION_THRESHOLDS = {
    "previous_token": INDUCTION_PREVIOUS_TOKEN,
    "match_margin": INDUCTION_MATCH_MARGIN,
    "path_removed": INDUCTION_PATH_REMOVED,
    "min_dependence": INDUCTION_MIN_DEPENDENCE,
}
CARRIERS = ("attention", "mlp", "direct", "distributed")
CARRIER_WORDS = {"attention": "attention", "mlp": "MLP", "direct": "embedding/direct"}


def main_lag(lags: list[dict[str, Any]]) -> dict[str, Any]:
    """The lag whose flip moves the true law most: the token the kernel reads."""
    return max(lags, key=lambda d: abs(d["true_effect"]) if finite(d.get("true_effect")) else 0)


def read_lags(lags: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lags whose flip changes the true law (rho defined)."""
    return [d for d in lags if finite(d.get("rho"))]


def mean_shares(lag: dict[str, Any]) -> dict[str, float]:
    """Group shares at one lag, mean of the noising and denoising decompositions."""
    by_dir = [s for s in lag.get("shares", {}).values() if s]
    groups = {k for s in by_dir for k in s}
    out = {}
    for g in sorted(groups):
        vals = [s[g] for s in by_dir if finite(s.get(g))]
        out[g] = sum(vals) / len(vals) if vals else math.nan
    return out


def carrier_of(lag: dict[str, Any]) -> str:
    """attention / mlp / direct / distributed at one lag (rule 3)."""
    shares = mean_shares(lag)
    necessity = lag.get("necessity", {})
    ok = []
    for group, share in shares.items():
        if not finite(share) or share < CARRIER_SHARE:
            continue
        if group != "direct":
            nec = necessity.get(group)
            if not finite(nec) or nec < NECESSARY:
                continue
        ok.append((share, group))
    return max(ok)[1] if ok else "distributed"


def atlas_label(measurement: dict[str, Any], summary: dict[str, Any] | None = None) -> dict:
    """{"label", "carrier", "reached", "in_context", "main_lag", "induction"} by the module's
    rules: the label is INDUCTION where the measurement's ``circuit`` (in-context chains:
    interp.atlas.measure) passes rule 5, else that of rules 1-4."""
    out = _kernel_label(measurement, summary)
    circuit = (measurement.get("circuit") or {}).get("label") or {}
    out["induction"] = bool(circuit.get("holds"))
    if out["induction"]:
        out["label"] = INDUCTION
    return out


def _kernel_label(measurement: dict[str, Any], summary: dict[str, Any] | None) -> dict:
    """Rules 1-4."""
    lags = read_lags(measurement["lags"])
    index = measurement.get("transfer", {}).get("mean", {}).get("in_context_index")
    in_context = finite(index) and index >= IN_CONTEXT
    marginal = not lags or all(abs(d["rho"]) <= MARGINAL_RHO for d in lags)
    if summary is not None and (
        summary.get("verdict") == "unigram" or summary.get("order_label") == "marginal"
    ):
        marginal = True
    if marginal:
        return {
            "label": "marginal only",
            "carrier": "none",
            "reached": False,
            "in_context": False,
            "main_lag": None,
        }
    main = main_lag(lags)
    if summary is not None:
        k = len((summary.get("references") or {}).get("order_losses") or [0, 0]) - 1
        if k >= 2:
            reached = summary.get("order_reached") == k
        else:
            reached = summary.get("verdict") == "bigram"
    else:
        reached = all(d["rho"] >= KERNEL_RHO for d in lags)
    carrier = carrier_of(main)
    what = "kernel" if reached else "partial kernel"
    label = (
        f"{what}, distributed"
        if carrier == "distributed"
        else (f"{what} via {CARRIER_WORDS[carrier]}")
    )
    if in_context:
        label += " (in-context)"
    return {
        "label": label,
        "carrier": carrier,
        "reached": reached,
        "in_context": in_context,
        "main_lag": main["lag"],
    }


def induction_label(numbers: dict[str, Any]) -> dict:
    """Rule 5: {"label": INDUCTION or None, "holds", "checks": {name: bool}} from the keys
    previous_token_layer, matching_layer (None without such heads), previous_token_excess,
    match_excess, dependence (nats/token) and path_removed (fractions); a missing or non-finite
    number fails its check."""

    def at_least(key: str, threshold: float) -> bool:
        v = numbers.get(key)
        return finite(v) and v >= threshold

    prev, match = numbers.get("previous_token_layer"), numbers.get("matching_layer")
    checks = {
        "earlier_layer": prev is not None and match is not None and prev < match,
        "previous_token": at_least("previous_token_excess", INDUCTION_PREVIOUS_TOKEN),
        "match": at_least("match_excess", INDUCTION_MATCH_MARGIN),
        "dependence": at_least("dependence", INDUCTION_MIN_DEPENDENCE),
        "path": at_least("path_removed", INDUCTION_PATH_REMOVED),
    }
    holds = all(checks.values())
    return {"label": INDUCTION if holds else None, "holds": holds, "checks": checks}
