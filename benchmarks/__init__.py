"""The benchmark suite behind ``markov-lens bench``: every speed claim as a measured ratio.

Each comparison runs both of its sides in this process, one after the other, and is printed
as one line ``NAME: A vs B: R.Rx`` where R = time of B / time of A (how many times faster A
is). Nothing is extrapolated: a reduced setting is named in the line. A benchmark never hides
a slower path: every path the package can take for a claim is timed beside it. Besides the
ratios: the machine, torch threads and the load average (other processes share the CPU);
memory: the activations a training step saves for backward (exact, any device) and the peak
of each side; the share of the ensemble's step time spent sampling data; and tables of how a
step's time grows with sequence length, window, ensemble members and depth.

Modules (sections of ``suite.run_benchmarks``, modes "full", "quick" (a few minutes on a
2-core CPU) and "tiny" (seconds, for tests), settings in ``settings.SETTINGS``):

- settings: the modes, sections and per-mode sizes (no torch: ``markov-lens bench --help``
  reads the sections from it).
- measure: a Comparison and its line, the machine line, peak memory, saved activations,
  interleaved best-of timing.
- step: the paper's training step per attention backend and its attention FLOP bound
  (section "step"); step time against attention window (section "window").
- ensemble: a stack of runs vs the same runs one by one (section "ensemble") and the step-time
  tables against length, members and depth (section "scaling").
- sampler: the vectorised sampler vs the per-position loop (section "sampler").
- patching: batched activation patching vs transformer_lens.patching (section "patching").
- reproductions: the training sweeps of the paper's tying and depth experiments, ensemble
  backend vs a per-run loop (section "reproductions").
- startup: fresh ``markov-lens`` processes vs ``import torch`` (section "startup").
- suite: ``run_benchmarks``, every section in turn.

The scripts beside them (``bench_step.py``, ``bench_ensemble.py``, ``bench_sampler.py``,
``bench_patching.py``: one section each with its own options; ``gpu_check.sh`` and
``gpu_check.py``: the check for a machine with a GPU) are run as files, not imported.

Imports: this package imports training, probes and interp; none of them imports it, and of
markov_lens only the command line (``markov_lens.cli.bench``) does.
"""
