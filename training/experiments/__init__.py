"""The paper's experiments (docs/theory.md section 3), reproducible from one command.

``reproduce(name, out_dir, size)`` runs an experiment through the sweep machinery (parallel
workers, finished runs skipped, so an interrupted reproduction resumes) and writes to out_dir:
PNG figures, summary.csv (one row per cell), summary.md (settings, table, the paper's claims
with the fraction of seeds for which each held, wall time), and sweep/ (the runs,
results.csv, aggregate.csv).

Experiments (size "full" = the paper's settings; "quick" = shorter sequences, fewer seeds,
minutes on a 2-core CPU; "test" = tiny, for the test suite):

- tying: p=0.2,q=0.3 and p=0.5,q=0.8; 1 layer, d 8; tied vs untied. Loss curves with the
  entropy-rate and unigram lines; final p_hat/q_hat against the truth.
- depth: p=0.5,q=0.8, L in {1,2,4,8}, d 8, length 512, 500 iterations; final loss mean, std.
- second-order: lag-2 chain p=0.2,q=0.3, d 32, 800 iterations; 1 layer with attention
  windows {none,2,8,32,40,80,100}, and depths 4, 8 with full causal attention (the paper's
  design); final loss against the window with the order-0/1/2 losses.
- phase-diagram: (p, q) on a 5 x 5 grid in (0,1)^2 without the line p + q = 1 (an i.i.d. chain
  where the two minima coincide), tied vs untied, 1 layer: the fraction of seeds that end at
  the unigram point and the median plateau exit step, as heatmaps.
- in-context: in-context chains (presets.in_context_specs, report in_context): Edelman's
  stages, the depth contrast on one kernel per minibatch, constant depth; "full" is the
  authors' GPU setting, "quick" a CPU-sized preset.

Nothing is tuned to make a claim come out: each claim is checked per seed and reported as
"held for k of n seeds".

One module per idea; each imports the modules it needs directly (never this package's
re-exports), so there are no import cycles:

- ``presets``: SIZES, TINY, the specs of each experiment per size (tying_specs,
  depth_specs, second_order_specs, phase_specs, phase_grid), default_seeds, and MEASURED
  (wall times at the paper's settings);
- ``tables``: cell_table (one row per cell) and the row helpers finished_runs,
  group_cells, mean_std;
- ``claims``: Claim, check_claims (per seed, with a Wilson 95% interval) and claims_table;
- ``figures``: the drawing helpers the reports share (figure_row, save_figure,
  plot_loss_curves, reference_lines, order_lines, errorbar_means, pq_heatmap, label_axes);
- ``reports``: tying_report, depth_report, second_order_report, phase_report (table,
  claims and figures of each experiment);
- ``in_context``: in_context_report (the in-context reproduction, read against the four
  in-context references);
- ``reproduction``: EXPERIMENTS, reproduce() and its summary.md, Reproduction (the module
  is not named reproduce, so that it does not shadow the function).
"""

from training.experiments.claims import Claim, check_claims, claims_table
from training.experiments.in_context import in_context_report
from training.experiments.presets import (
    MEASURED,
    SIZES,
    TINY,
    default_seeds,
    depth_specs,
    in_context_specs,
    phase_grid,
    phase_specs,
    second_order_specs,
    tying_specs,
)
from training.experiments.reports import (
    depth_report,
    phase_report,
    second_order_report,
    tying_report,
)
from training.experiments.reproduction import EXPERIMENTS, Reproduction, reproduce
from training.experiments.tables import cell_table

__all__ = [
    "EXPERIMENTS",
    "MEASURED",
    "SIZES",
    "TINY",
    "Claim",
    "Reproduction",
    "cell_table",
    "check_claims",
    "claims_table",
    "default_seeds",
    "depth_report",
    "depth_specs",
    "in_context_report",
    "in_context_specs",
    "phase_grid",
    "phase_report",
    "phase_specs",
    "reproduce",
    "second_order_report",
    "second_order_specs",
    "tying_report",
    "tying_specs",
]
