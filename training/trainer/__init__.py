"""Train a MarkovTransformer on a Markov chain, with exact references, checkpoints and resume.

``train(model_config, chain, train_config, seed, out_dir)`` runs the paper's recipe
(training.recipe.TrainConfig) and returns a TrainResult: the summary dict, with the trained
model as ``.model`` and the metric records as ``.metrics``. With out_dir it writes a run
directory (training.runs); with out_dir=None it trains in memory. ``train_ensemble`` trains
several runs of one architecture together; a single run is an ensemble of one, so there is
one training loop.

Reproducibility. Every source of randomness is a generator seeded from (seed, stream, step)
through numpy's SeedSequence: the model init (stream 0), the training batch of update t
(stream 1, step t: a fresh batch every step, independent of how the run was interrupted)
and the fixed held-out evaluation batches (stream 2). There is no running generator, so the
"generator state" of a checkpoint is its step. The same config and seed give the same
metrics (timing fields aside) and weights on the same device and torch thread count; a run
resumed from any checkpoint ends bit-identical on CPU to one that never stopped, because a
checkpoint holds the weights, the AdamW moments, the step (which fixes the learning rate:
TrainConfig.lr_at) and the running train-loss accumulators (safetensors + JSON, no pickle).

One module per idea; each imports only modules listed before it (never this package's
re-exports), so there are no import cycles:

- ``streams``: the random streams (STREAM_INIT, STREAM_TRAIN, STREAM_EVAL, derive_seed,
  make_generator) and the training batches of an update (member_batches);
- ``optim``: AdamW with the paper's decay groups (decay_parameter_names, make_optimizer),
  lr_schedule, and the optimiser state in checkpoints (optimizer_state,
  load_optimizer_state, stack_optimizer_state, MemberOptimizer);
- ``evaluation``: the reference losses (run_references), the held-out batches (EvalSet)
  and the metrics (evaluate, information, context_information; the metrics are listed in
  its docstring);
- ``rundir``: the run directory before training: config_dict, prepare_run_dir, resume
  (find_resume_checkpoint, check_checkpoint_config, truncate_metrics,
  clean_partial_saves), RUN_FORMAT;
- ``arithmetic``: the run's precision, loss scaler and TF32 (AUTOCAST_DTYPES, Arithmetic,
  check_arithmetic, tf32_matmuls, autocast_works);
- ``summaries``: how a run ends: TrainResult, TrainingDiverged, finished_summary,
  stop_diverged, TIMING_KEYS;
- ``loop``: the one training loop (EnsembleLoop, MemberStart; one update: _train_step);
- ``ensemble``: train_ensemble and train (checks, run-directory locks, resume, one loop
  per start step).

Every public name is re-exported here (and resolve_device, from training.devices). A test
that patches a name the loop looks up (``_train_step``) patches it in the module that
calls it (training.trainer.loop); ``train`` is looked up here by the callers that import
this package at call time (training.sweeps.tasks.run_task).
"""

from training.devices import resolve_device
from training.trainer.arithmetic import (
    AUTOCAST_DTYPES,
    Arithmetic,
    autocast_works,
    check_arithmetic,
    tf32_matmuls,
)
from training.trainer.ensemble import train, train_ensemble
from training.trainer.evaluation import (
    IN_CONTEXT_REFERENCE_TOKENS,
    EvalSet,
    PrecomputedLogits,
    context_information,
    evaluate,
    information,
    run_references,
)
from training.trainer.loop import EnsembleLoop, MemberStart
from training.trainer.optim import (
    DECAYED_LEAVES,
    MemberOptimizer,
    decay_parameter_names,
    load_optimizer_state,
    lr_schedule,
    make_optimizer,
    optimizer_state,
    stack_optimizer_state,
)
from training.trainer.rundir import (
    RUN_FORMAT,
    check_checkpoint_config,
    clean_partial_saves,
    config_dict,
    find_resume_checkpoint,
    prepare_run_dir,
    truncate_metrics,
)
from training.trainer.streams import (
    STREAM_EVAL,
    STREAM_INIT,
    STREAM_TRAIN,
    derive_seed,
    make_generator,
    member_batches,
)
from training.trainer.summaries import (
    TIMING_KEYS,
    TrainingDiverged,
    TrainResult,
    finished_summary,
    stop_diverged,
)

__all__ = [
    "AUTOCAST_DTYPES",
    "DECAYED_LEAVES",
    "IN_CONTEXT_REFERENCE_TOKENS",
    "RUN_FORMAT",
    "STREAM_EVAL",
    "STREAM_INIT",
    "STREAM_TRAIN",
    "TIMING_KEYS",
    "Arithmetic",
    "EnsembleLoop",
    "EvalSet",
    "MemberOptimizer",
    "MemberStart",
    "PrecomputedLogits",
    "TrainResult",
    "TrainingDiverged",
    "autocast_works",
    "check_arithmetic",
    "check_checkpoint_config",
    "clean_partial_saves",
    "config_dict",
    "context_information",
    "decay_parameter_names",
    "derive_seed",
    "evaluate",
    "find_resume_checkpoint",
    "finished_summary",
    "information",
    "load_optimizer_state",
    "lr_schedule",
    "make_generator",
    "make_optimizer",
    "member_batches",
    "optimizer_state",
    "prepare_run_dir",
    "resolve_device",
    "run_references",
    "stack_optimizer_state",
    "stop_diverged",
    "tf32_matmuls",
    "train",
    "train_ensemble",
    "truncate_metrics",
]
