"""``induction_circuit``: the measurements an induction mechanism needs, on one batch, and the
``in-context (induction)`` label (interp.atlas.labels rule 5) they decide.

1. Head scores (``interp.heads.head_scores``): the previous-token score and the
   attention-to-match score (the statistical-induction score: attention mass at query n on
   keys j with x_{j-1} = x_n), each against its exact shuffled chance.
2. The heads: the matching head is the head of a layer >= 1 with the largest attention-to-match
   excess; the previous-token head is the head of an earlier layer with the largest
   previous-token excess.
3. Path patching (``path_patch``) of every sender before the matching head (the embedding,
   each head, each MLP) into the matching head's q, k and v, from a corruption that breaks the
   previous-token alignment and keeps the token counts: each sequence's tokens shuffled
   (a uniform random permutation of its positions). Metric: the in-context dependence
   (``dependence``: the log-prob gain over the in-context unigram estimate, nats/token, on
   positions N/4..N-2); reported as the fraction of the clean dependence each path removes,
   1 - D_patched / D_clean.
4. Q-, K- and V-composition of every head pair (``head_composition``) with the random baseline.
5. The model's next-token law against the add-beta estimator of orders 0 and ``order``
   (``fit_add_beta``): fitted beta and residual KL.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor

from interp.atlas.labels import INDUCTION_THRESHOLDS, induction_label
from interp.attention import attention_patterns
from interp.circuits.composition import COMPOSITIONS, head_composition
from interp.circuits.dependence import dependence_readout, in_context_dependence
from interp.circuits.estimators import fit_add_beta
from interp.circuits.path_patching import RECEIVER_INPUTS, all_senders, head_receivers, path_patch
from interp.explain import finite_json
from interp.heads import head_scores
from interp.patching.sweep import DEFAULT_BUDGET

if TYPE_CHECKING:
    from training.model import MarkovTransformer


def shuffled_tokens(
    tokens: Int[Tensor, "batch pos"], generator: torch.Generator | None = None
) -> Int[Tensor, "batch pos"]:
    """Each sequence's tokens in a uniformly random order (its own permutation): the token
    counts are kept, which token follows which is not."""
    keys = torch.rand(tokens.shape, generator=generator).to(tokens.device)
    return tokens.gather(1, keys.argsort(1))


@dataclass
class InductionCircuit:
    """What ``induction_circuit`` measured (module doc); every number a float (nats for
    dependences and KLs), heads as [layer, head] (None in a one-layer model)."""

    n_layers: int
    n_sequences: int
    seq_len: int
    previous_token_head: list[int] | None
    matching_head: list[int] | None
    previous_token_excess: float
    match_score: float
    match_baseline: float
    dependence: float  # clean in-context dependence, nats/token
    path_removed: float  # previous-token head -> matching head's key
    paths: dict[str, dict[str, float]]  # sender -> {q, k, v: fraction of the dependence removed}
    composition: dict[str, float]  # Q/K/V score of (previous-token head, matching head) + baseline
    add_beta: list[dict[str, Any]]
    label: dict[str, Any]
    head_scores: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=lambda: dict(INDUCTION_THRESHOLDS))

    @property
    def match_excess(self) -> float:
        return self.match_score - self.match_baseline

    def to_dict(self) -> dict:
        return finite_json(asdict(self) | {"match_excess": self.match_excess})


@torch.no_grad()
def induction_circuit(
    model: MarkovTransformer,
    tokens: Int[Tensor, "batch pos"],
    *,
    order: int = 1,
    seed: int = 0,
    budget: int = DEFAULT_BUDGET,
) -> InductionCircuit:
    """Run the module's measurements 1-5 on ``tokens`` (in-context chain samples, e.g.
    ``InContextChain(...).sample``) and label the result. seed: the shuffling corruption's."""
    if model.training:
        raise ValueError("measure the model in eval mode (model.eval())")
    tokens = model.check_tokens(tokens).to(model.W_E.device)
    B, N = tokens.shape
    S, L = model.cfg.d_vocab, model.cfg.n_layers
    readout = dependence_readout(N)
    scores = head_scores(attention_patterns(model, tokens), tokens, S, model.cfg.windows())
    prev_ex, match_ex = scores.previous_token_excess, scores.induction_excess

    metric = in_context_dependence(tokens, S, readout)
    logits = model(tokens)
    dependence = float(metric(logits[:, readout]).mean())
    probs = logits.double().softmax(-1)
    fits = [fit_add_beta(probs, tokens, k).to_dict() for k in sorted({0, order})]

    prev_head = match_head = None
    prev_excess = match_score = match_baseline = path_removed = math.nan
    paths: dict[str, dict[str, float]] = {}
    composition: dict[str, float] = {}
    if L >= 2:
        flat = match_ex[1:].flatten().argmax()
        ml, mh = 1 + int(flat) // model.cfg.n_heads, int(flat) % model.cfg.n_heads
        flat = prev_ex[:ml].flatten().argmax()
        pl, ph = int(flat) // model.cfg.n_heads, int(flat) % model.cfg.n_heads
        prev_head, match_head = [pl, ph], [ml, mh]
        prev_excess = float(prev_ex[pl, ph])
        match_score = float(scores.induction[ml, mh])
        match_baseline = float(scores.induction_baseline[ml, mh])
        senders = all_senders(model, before=ml)
        receivers = head_receivers(ml, mh)
        corrupt = shuffled_tokens(tokens, torch.Generator().manual_seed(seed))
        patched = path_patch(
            model, tokens, corrupt, senders, receivers, metric, readout=readout, budget=budget
        )  # [sender, q/k/v]
        removed = 1.0 - patched / dependence if dependence != 0 else patched * math.nan
        paths = {
            s.name: {x: float(removed[i, j]) for j, x in enumerate(RECEIVER_INPUTS)}
            for i, s in enumerate(senders)
        }
        path_removed = paths[f"L{pl}H{ph}"]["k"]
        for mode in COMPOSITIONS:
            comp = head_composition(model, mode)
            composition[mode] = float(comp.scores[pl, ph, ml, mh])
            composition["baseline"] = comp.baseline
            composition["baseline_sd"] = comp.baseline_sd
    label = induction_label(
        {
            "previous_token_layer": prev_head[0] if prev_head else None,
            "matching_layer": match_head[0] if match_head else None,
            "previous_token_excess": prev_excess,
            "match_excess": match_score - match_baseline,
            "dependence": dependence,
            "path_removed": path_removed,
        }
    )
    return InductionCircuit(
        n_layers=L,
        n_sequences=B,
        seq_len=N,
        previous_token_head=prev_head,
        matching_head=match_head,
        previous_token_excess=prev_excess,
        match_score=match_score,
        match_baseline=match_baseline,
        dependence=dependence,
        path_removed=path_removed,
        paths=paths,
        composition=composition,
        add_beta=fits,
        label=label,
        head_scores=scores.to_dict(),
    )
