"""The atlas: which component computes the kernel (attention, the MLP, the embedding path)
or only the marginal, in weights or in context, across chains x depth x attention window x
tying x MLP, with seed statistics.

- grid: the chains and presets (sweep specs);
- measure: per-run measurements (flip patching by lag, ablation, transfer, heads, probes);
- labels: the per-run label and its thresholds;
- runner: train + measure through the sweep backends, resumable (``run_atlas``);
- records: measured runs without their weights, so the next session carries an atlas on;
- tables / plots: atlas.csv, cells.csv, atlas.md and the figures.

``markov-lens atlas --preset quick --out DIR`` runs one; ``load_atlas(DIR)`` reads its rows.
"""

from interp.atlas.grid import PRESETS, chain_name, chains, preset_spec
from interp.atlas.labels import atlas_label
from interp.atlas.measure import AtlasConfig, measure_model
from interp.atlas.runner import load_atlas, measure_run, run_atlas

__all__ = [
    "PRESETS",
    "AtlasConfig",
    "atlas_label",
    "chain_name",
    "chains",
    "load_atlas",
    "measure_model",
    "measure_run",
    "preset_spec",
    "run_atlas",
]
