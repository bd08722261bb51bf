"""Circuit tools for an induction mechanism (issue #22), on the model's hooks, batched over
sequences and heads.

- ``path_patching``: Sender, Receiver, all_senders, head_receivers, sender_outputs, path_patch
  (IOI-style: a sender's corrupted output into one receiver's q, k or v input only);
- ``dependence``: next_token_metric, in_context_dependence, dependence_readout (the metrics);
- ``composition``: head_composition (Q-, K-, V-composition, Elhage et al. 2021),
  random_composition_baseline, CompositionScores;
- ``estimators``: fit_add_beta, add_beta_kl, AddBetaFit (the model against add-beta);
- ``induction``: induction_circuit, InductionCircuit, shuffled_tokens (all of it, labelled by
  ``interp.atlas.labels.induction_label``).

The attention-to-match score is ``interp.heads``' statistical-induction score with its exact
shuffled chance (``head_scores``); it is not recomputed here.
"""

from interp.circuits.composition import (
    COMPOSITIONS,
    CompositionScores,
    head_composition,
    random_composition_baseline,
)
from interp.circuits.dependence import dependence_readout, in_context_dependence, next_token_metric
from interp.circuits.estimators import AddBetaFit, add_beta_kl, fit_add_beta
from interp.circuits.induction import InductionCircuit, induction_circuit, shuffled_tokens
from interp.circuits.path_patching import (
    RECEIVER_INPUTS,
    SENDER_KINDS,
    Receiver,
    Sender,
    all_senders,
    head_receivers,
    path_patch,
    sender_outputs,
)

__all__ = [
    "COMPOSITIONS",
    "RECEIVER_INPUTS",
    "SENDER_KINDS",
    "AddBetaFit",
    "CompositionScores",
    "InductionCircuit",
    "Receiver",
    "Sender",
    "add_beta_kl",
    "all_senders",
    "dependence_readout",
    "fit_add_beta",
    "head_composition",
    "head_receivers",
    "in_context_dependence",
    "induction_circuit",
    "next_token_metric",
    "path_patch",
    "random_composition_baseline",
    "sender_outputs",
    "shuffled_tokens",
]
