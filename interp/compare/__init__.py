"""Compare two models: two runs, two checkpoints, or a run against a checkpoint.

``compare(a, b)`` puts two models side by side on the *same* held-out inputs (drawn from A's
chain, or B's when A has none):

- behaviour: eval loss, KL to the true next-token law, relative excess, dependence and the
  verdict of each model (``training.trainer.evaluate`` on one shared ``EvalSet``, nats);
- predicted transition probabilities against the truth (fixed chains: the mean prediction
  given each context of the last k tokens; every chain: binned predicted-vs-true);
- attention patterns side by side and their difference, offset profiles, head scores;
- probe tables of both models side by side (``probes.sweeps.probe_model``, same sequences,
  split and controls) and activation-patching tables (``interp.patching``), when asked for;
- distances between the models: per-parameter norms of the difference in HookedTransformer
  names (``parameter_distances``; needs equal shapes, else says why and skips), and linear
  CKA between every pair of hook points (``cka_matrix``; works across architectures).

Linear CKA (Kornblith et al. 2019) of representations X [n, d1], Y [n, d2] of the same n
inputs, columns centred:

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)      in [0, 1]

It is 1 for X = Y, invariant to orthogonal transforms and isotropic scaling of either side
(not to general invertible maps), and undefined (nan) for a constant representation.

Sources (``load_subject``): a run directory means its last checkpoint plus its metrics; a
checkpoint directory means that checkpoint (plus its run's metrics up to its step when it
lies inside a run directory); a ``Run`` or a ``MarkovTransformer`` (with ``chain=``) also work.
Figures and the markdown summary are in ``interp.compare.plots``; ``Comparison.save`` writes
them.

One module per idea; each imports only modules listed before it (never this package's
re-exports), so there are no import cycles:

- ``subjects``: Subject, load_subject, run_name (and default_device);
- ``distances``: named_weights, shape_mismatch, parameter_distances (ParameterDistances);
- ``outputs``: dumps, write_outputs, json_float (JSON and files of results);
- ``cka``: linear_cka, cka_matrix (CKAResult), cka_components, representations;
- ``config``: ComparisonConfig;
- ``predictions``: shared_inputs, behaviour, predicted_probs, transition_table
  (TransitionTable), calibration;
- ``probes_patching``: compare_probes, patching_data, patching_tables, compare_patching;
- ``plots``: the figures (plot_curves, also for single runs; plot_transitions,
  plot_attention_comparison, plot_offsets, plot_cka, plot_distances, plot_probe_comparison,
  plot_patching_comparison; comparison_figures) and the markdown summary
  (comparison_markdown; fmt, md_table, BEHAVIOUR_KEYS);
- ``comparison``: compare and Comparison.

Every public name is re-exported here except the figures' and the summary's: import them
from ``interp.compare.plots``.
"""

from interp.compare.cka import CKAResult, cka_components, cka_matrix, linear_cka, representations
from interp.compare.comparison import Comparison, compare
from interp.compare.config import ComparisonConfig
from interp.compare.distances import (
    ParameterDistances,
    named_weights,
    parameter_distances,
    shape_mismatch,
)
from interp.compare.outputs import dumps, json_float, write_outputs
from interp.compare.predictions import (
    MAX_TABLE_CONTEXTS,
    TransitionTable,
    behaviour,
    calibration,
    predicted_probs,
    shared_inputs,
    transition_table,
)
from interp.compare.probes_patching import (
    MAX_PATCH_POSITIONS,
    PATCH_ACTS,
    compare_patching,
    compare_probes,
    patching_data,
    patching_tables,
)
from interp.compare.subjects import SourceLike, Subject, default_device, load_subject, run_name

__all__ = [
    "MAX_PATCH_POSITIONS",
    "MAX_TABLE_CONTEXTS",
    "PATCH_ACTS",
    "CKAResult",
    "Comparison",
    "ComparisonConfig",
    "ParameterDistances",
    "SourceLike",
    "Subject",
    "TransitionTable",
    "behaviour",
    "calibration",
    "cka_components",
    "cka_matrix",
    "compare",
    "compare_patching",
    "compare_probes",
    "default_device",
    "dumps",
    "json_float",
    "linear_cka",
    "load_subject",
    "named_weights",
    "parameter_distances",
    "patching_data",
    "patching_tables",
    "predicted_probs",
    "representations",
    "run_name",
    "shape_mismatch",
    "shared_inputs",
    "transition_table",
    "write_outputs",
]
