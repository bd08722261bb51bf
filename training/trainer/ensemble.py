"""The entry points of training: ``train_ensemble(members, train_config, out_dirs)`` trains
a stack of members together, each as ``train(model_config, chain, train_config, seed,
out_dir)`` would; ``train`` is an ensemble of one. Both check their inputs, lock the run
directories (one process per run directory at a time), prepare or resume each member
(training.trainer.rundir) and run the one training loop (training.trainer.loop) once per
group of members that start at the same step, in the recipe's arithmetic
(training.trainer.arithmetic: checked against the device before anything is written).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from training import limits
from training.chains import MarkovChain, chain_from_dict
from training.config import ModelConfig
from training.devices import resolve_device
from training.locks import lock_directory
from training.options import RunConfig
from training.recipe import TrainConfig
from training.runs import METRICS, load_run
from training.stacked import Member, as_member, check_same_architecture, train_key
from training.trainer.arithmetic import check_arithmetic, tf32_matmuls
from training.trainer.loop import EnsembleLoop, MemberStart
from training.trainer.rundir import (
    clean_partial_saves,
    config_dict,
    find_resume_checkpoint,
    prepare_run_dir,
    truncate_metrics,
)
from training.trainer.summaries import TrainingDiverged, TrainResult


def train(
    model_config: ModelConfig,
    chain: MarkovChain | dict,
    train_config: TrainConfig | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
) -> TrainResult:
    """Train a MarkovTransformer on `chain` with `train_config` (default: the paper's recipe).

    out_dir: run directory to write (config.json, metrics.jsonl, checkpoints/, summary.json);
    None trains in memory. A finished run is never overwritten unless force=True; an
    unfinished one is continued with resume=True (from its newest checkpoint, restoring the
    optimiser state, step and loss accumulators), or restarted with force=True. resume=True on
    a finished run returns its summary (and last model) without training.
    stop_at: stop cleanly after this step with a resume checkpoint (status "paused").
    progress: a tqdm bar (step, loss, gap to the entropy rate) when stderr is a terminal.

    The run is an ensemble of one (train_ensemble). Returns the summary (a TrainResult dict;
    `.model`, `.metrics`, `.path`). Raises TrainingDiverged (after writing a "diverged"
    summary.json) if the loss turns NaN/inf.
    """
    if isinstance(chain, dict):
        chain = chain_from_dict(chain)
    train_config = train_config or TrainConfig()
    if not isinstance(model_config, ModelConfig):
        raise ValueError(f"model_config must be a ModelConfig, got {type(model_config).__name__}")
    if model_config.n_ctx < train_config.seq_len:
        raise ValueError(
            f"model n_ctx={model_config.n_ctx} is shorter than seq_len={train_config.seq_len}"
        )
    if model_config.d_vocab != chain.n_states:
        raise ValueError(
            f"model d_vocab={model_config.d_vocab} but the chain has {chain.n_states} states"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    (result,) = train_ensemble(
        [Member(model_config, chain, seed)],
        train_config,
        out_dirs=None if out_dir is None else [out_dir],
        resume=resume,
        force=force,
        progress=progress,
        stop_at=stop_at,
    )
    if result.get("status") == "diverged":
        raise TrainingDiverged(result["message"])
    return result


def train_ensemble(
    members: Sequence[Member | RunConfig | tuple],
    train_config: TrainConfig | None = None,
    out_dirs: Sequence[str | os.PathLike] | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    timings: dict[str, float] | None = None,
) -> list[TrainResult]:
    """Train `members` (same architecture, different seeds/chains/inits) together, each as
    ``train(model_config, chain, train_config, seed, out_dir)`` would.

    members: Member, RunConfig (its train section must equal train_config, which defaults to
    it) or (model_config, chain, seed). out_dirs: one run directory per member (None: in
    memory); resume/force/stop_at as in train (a finished member is only read;
    members resumed from different steps are trained as separate ensembles).
    timings: if given, filled with seconds spent on data, steps (forward, backward, AdamW),
    evaluation and checkpoints, and the number of ensemble steps.

    Returns one TrainResult per member, in order. A member whose loss turns NaN/inf gets the
    trainer's "diverged" summary (written to its run directory) and drops out; the others
    go on. ValueError for members of different architectures or mismatched configs.
    """
    if not members:
        raise ValueError("train_ensemble needs at least one member")
    parsed = [as_member(item, i) for i, item in enumerate(members)]
    given = [tc for _, tc in parsed if tc is not None]
    if train_config is None:
        train_config = given[0] if given else TrainConfig()
    if not isinstance(train_config, TrainConfig):
        raise ValueError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    for i, tc in enumerate(given):
        if train_key(tc) != train_key(train_config):
            raise ValueError(
                f"ensemble member {i} has its own train config that differs from the shared "
                "one; members of an ensemble share one TrainConfig"
            )
    mem = []
    for i, (m, _) in enumerate(parsed):
        chain = chain_from_dict(m.chain) if isinstance(m.chain, dict) else m.chain
        if not isinstance(m.model_config, ModelConfig):
            raise ValueError(
                f"member {i}: model_config must be a ModelConfig, got "
                f"{type(m.model_config).__name__}"
            )
        if m.model_config.n_ctx < train_config.seq_len:
            raise ValueError(
                f"member {i}: model n_ctx={m.model_config.n_ctx} is shorter than "
                f"seq_len={train_config.seq_len}"
            )
        if m.model_config.d_vocab != chain.n_states:
            raise ValueError(
                f"member {i}: model d_vocab={m.model_config.d_vocab} but the chain has "
                f"{chain.n_states} states"
            )
        if isinstance(m.seed, bool) or not isinstance(m.seed, int) or m.seed < 0:
            raise ValueError(f"member {i}: seed must be an integer >= 0, got {m.seed!r}")
        mem.append(Member(m.model_config, chain, m.seed))
    check_same_architecture([m.model_config for m in mem])
    estimate = limits.training_estimate(mem[0].model_config, train_config, len(mem))
    limits.check_fits(estimate, "training", train_config.device)  # before any allocation
    if train_config.grad_scaler and len(mem) > 1:
        raise ValueError(
            f"grad_scaler with {len(mem)} stacked members: one member's overflow would skip "
            "every member's update; train these runs one by one (a stack of one each)"
        )
    if stop_at is not None and not (0 <= stop_at <= train_config.iters):
        raise ValueError(f"stop_at must be in 0..{train_config.iters}, got {stop_at!r}")
    check_arithmetic(train_config, resolve_device(train_config.device))
    dirs: list[Path | None] = [None] * len(mem)
    if out_dirs is not None:
        if len(out_dirs) != len(mem):
            raise ValueError(f"{len(mem)} members but {len(out_dirs)} out_dirs")
        dirs = [Path(d) if d is not None else None for d in out_dirs]
        named = [str(d.resolve()) for d in dirs if d is not None]
        if len(set(named)) != len(named):
            raise ValueError("two ensemble members were given the same out_dir")
    for d in dirs:
        if d is not None and d.exists() and not d.is_dir():
            raise ValueError(f"out_dir {d} is a file; a run directory must be a directory")
    with contextlib.ExitStack() as held:  # one process per run directory at a time
        for d in dirs:
            if d is not None:
                held.enter_context(lock_directory(d, purpose="training run"))
        return _train_locked(mem, dirs, train_config, resume, force, progress, stop_at, timings)


def _train_locked(
    mem: list[Member],
    dirs: list[Path | None],
    train_config: TrainConfig,
    resume: bool,
    force: bool,
    progress: bool,
    stop_at: int | None,
    timings: dict[str, float] | None,
) -> list[TrainResult]:
    """train_ensemble once its inputs are checked and its run directories locked."""
    device = resolve_device(train_config.device)

    results: list[TrainResult | None] = [None] * len(mem)
    starts: dict[int, MemberStart] = {}
    for i, (m, run_dir) in enumerate(zip(mem, dirs, strict=True)):
        state = MemberStart()
        if run_dir is not None:
            config = config_dict(m.model_config, m.chain, train_config, m.seed)
            if prepare_run_dir(run_dir, config, resume, force):
                run = load_run(run_dir)
                model = run.model(device=device) if run.checkpoint_steps() else None
                results[i] = TrainResult(run.summary(), model, run.metrics(), run_dir)
                continue
            clean_partial_saves(run_dir)
            ckpt = find_resume_checkpoint(run_dir, m.model_config) if resume else None
            if ckpt is not None and ckpt.step > 0:
                meta = ckpt.metadata["resume"]
                state = MemberStart(
                    step=ckpt.step,
                    checkpoint=ckpt,
                    metrics=truncate_metrics(run_dir / METRICS, ckpt.step),
                    train_loss_sum=meta["train_loss_sum"],
                    train_loss_count=meta["train_loss_count"],
                    wall_before=meta["wall_seconds"],
                )
            elif (run_dir / METRICS).exists():
                # no update checkpointed yet: start again from step 0 (the same weights and
                # step-0 record), so that all fresh members can share one ensemble
                (run_dir / METRICS).unlink()
        starts[i] = state
    by_step: dict[int, list[int]] = {}
    for i, state in starts.items():
        by_step.setdefault(state.step, []).append(i)
    with tf32_matmuls(train_config.tf32):
        for step in sorted(by_step):
            idx = by_step[step]
            group = EnsembleLoop(
                [mem[i] for i in idx],
                [dirs[i] for i in idx],
                [starts[i] for i in idx],
                train_config,
                device,
                timings,
            )
            for i, result in zip(idx, group.run(progress, stop_at), strict=True):
                results[i] = result
    return results  # type: ignore[return-value]
