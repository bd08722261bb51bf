"""Activation patching, ablation and direct-path effects through the model's hooks, in
TransformerLens conventions (hook names, result layouts as ``transformer_lens.patching``).

``patch_sweep`` is the engine: every (layer, position[, head]) patch of one activation kind,
batched, skipping the patches that change nothing the readout sees. On it: activation
patching of a corruption in either direction (denoising: sufficiency; noising: necessity),
mean / resample ablation, and the direct-path split of the corruption's effect at the
readout. The corruptions and their clean / corrupted batches (``PatchingData``) are in
``interp.corruptions``.

One module per idea; each imports only modules listed before it (never this package's
re-exports), so there are no import cycles:

- ``sweep``: the engine: the activation kinds (LAYER_ACTS, HEAD_ACTS, ACTS), hook_name,
  result_axes, cached runs (cache_run, cache_runs, PatchingRuns, CachedRun), check_act,
  check_cached, patch_sweep (Metric, DEFAULT_BUDGET);
- ``metrics``: make_metric (METRICS), normalise, the two directions (DIRECTIONS);
- ``activation``: run_patching and PatchingResult;
- ``ablation``: ablation_source, ablation_hooks, run_ablation (ABLATIONS);
- ``direct_path``: direct_path_hooks, direct_path_effects;
- ``plots``: patching_rows, plot_rows, plot_patching_grid, plot_patching_result,
  plot_direct_paths.

Every public name is re-exported here except the figures' (import them from
``interp.patching.plots``), so that importing the package loads no matplotlib.
"""

from interp.patching.ablation import ABLATIONS, ablation_hooks, ablation_source, run_ablation
from interp.patching.activation import PatchingResult, run_patching
from interp.patching.direct_path import direct_path_effects, direct_path_hooks
from interp.patching.metrics import DIRECTIONS, METRICS, make_metric, normalise
from interp.patching.sweep import (
    ACTS,
    DEFAULT_BUDGET,
    HEAD_ACTS,
    LAYER_ACTS,
    CachedRun,
    Metric,
    PatchingRuns,
    cache_run,
    cache_runs,
    check_act,
    check_cached,
    hook_name,
    patch_sweep,
    result_axes,
)

__all__ = [
    "ABLATIONS",
    "ACTS",
    "DEFAULT_BUDGET",
    "DIRECTIONS",
    "HEAD_ACTS",
    "LAYER_ACTS",
    "METRICS",
    "CachedRun",
    "Metric",
    "PatchingResult",
    "PatchingRuns",
    "ablation_hooks",
    "ablation_source",
    "cache_run",
    "cache_runs",
    "check_act",
    "check_cached",
    "direct_path_effects",
    "direct_path_hooks",
    "hook_name",
    "make_metric",
    "normalise",
    "patch_sweep",
    "result_axes",
    "run_ablation",
    "run_patching",
]
