"""The one training loop: EnsembleLoop trains a stack of members (same architecture, their
own seeds, chains and inits; training.stacked) that start at the same step, fresh
(MemberStart()) or from their resume checkpoints. Every run, a single one included (a stack
of one), goes through it; training.trainer.ensemble sets it up.

Per update: each member's training batch (streams.member_batches), the learning rate of
the step (TrainConfig.lr_at), one stacked forward, backward and AdamW step in the run's
arithmetic (_train_step, training.trainer.arithmetic; a member whose loss is not finite is
dropped with a "diverged" summary, the others go on),
then evaluations (every eval_every steps), checkpoints (the recipe's checkpoint steps and a
resume checkpoint every save_every), and at the end each member's summary.

A resumed run ends bit-identical on CPU to one that never stopped: a checkpoint holds the
weights, the AdamW moments, the step (which fixes the learning rate and the batches to come),
the running train-loss accumulators and the loss scaler's state (grad_scaler).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from training.chains import InContextChain
from training.checkpoints import save_checkpoint
from training.config import ModelConfig
from training.model import MarkovTransformer
from training.recipe import TrainConfig
from training.references import stationary_marginal
from training.runs import CHECKPOINTS, LATEST, METRICS, SUMMARY, step_dir_name, write_json_atomic
from training.stacked import (
    Member,
    StackedWeights,
    clip_member_grads,
    member_losses,
    stacked_logits,
)
from training.trainer.arithmetic import Arithmetic
from training.trainer.evaluation import EvalSet, PrecomputedLogits, evaluate, run_references
from training.trainer.optim import (
    MemberOptimizer,
    load_optimizer_state,
    make_optimizer,
    optimizer_state,
    stack_optimizer_state,
)
from training.trainer.rundir import RUN_FORMAT
from training.trainer.streams import STREAM_INIT, derive_seed, member_batches
from training.trainer.summaries import (
    TrainingDiverged,
    TrainResult,
    finished_summary,
    stop_diverged,
)


@dataclass
class MemberStart:
    """Where one member starts: fresh, or from a resume checkpoint."""

    step: int = 0
    checkpoint: Any = None
    metrics: list | None = None
    train_loss_sum: float = 0.0
    train_loss_count: int = 0
    wall_before: float = 0.0


def initial_model(member: Member, device: torch.device) -> MarkovTransformer:
    """The trainer's initial model for this member (same seed stream and init)."""
    cfg = ModelConfig.from_dict(member.model_config.to_dict())
    chain = member.chain
    pi = (
        torch.full((chain.n_states,), 1.0 / chain.n_states, dtype=torch.float64)
        if isinstance(chain, InContextChain)
        else stationary_marginal(chain)
    )
    model = MarkovTransformer(cfg, seed=derive_seed(member.seed, STREAM_INIT), pi=pi)
    return model.to(device)


class EnsembleLoop:
    """The training loop of one ensemble whose members all start at the same step."""

    def __init__(
        self,
        members: list[Member],
        dirs: list[Path | None],
        starts: list[MemberStart],
        train_config: TrainConfig,
        device: torch.device,
        timings: dict[str, float] | None,
    ):
        self.members, self.dirs, self.tc, self.device = members, dirs, train_config, device
        self.timings = timings
        self.step = starts[0].step
        ref_cache: dict[str, dict] = {}
        self.refs = []
        for m in members:
            key = json.dumps(m.chain.to_dict(), sort_keys=True)
            if key not in ref_cache:
                ref_cache[key] = run_references(m.chain, train_config)
            self.refs.append(ref_cache[key])
        self.models = [initial_model(m, device) for m in members]
        for model, state in zip(self.models, starts, strict=True):
            if state.checkpoint is not None:
                model.load_state_dict(state.checkpoint.weights)
        self.weights = StackedWeights.from_models(self.models)
        self.base = self.models[0]  # the module that computes every member (stacked_logits)
        self.base.set_fused_attention(train_config.fused_attention)
        self.opt, self.opt_names = make_optimizer(self.weights, train_config)
        if starts[0].checkpoint is not None:
            tensors: dict[str, Tensor] = {}
            for key in starts[0].checkpoint.state:
                if key.startswith("optim/"):
                    parts = [s.checkpoint.state[key] for s in starts]
                    tensors[key] = torch.stack(parts) if parts[0].ndim > 0 else parts[0]
            meta = starts[0].checkpoint.metadata["resume"]
            load_optimizer_state(self.opt, self.opt_names, tensors, meta["param_groups"])
        self.eval_sets = [EvalSet(m.chain, train_config, m.seed, device) for m in members]
        self.metrics = [list(s.metrics or []) for s in starts]
        self.loss_sum = [s.train_loss_sum for s in starts]
        self.loss_count = [s.train_loss_count for s in starts]
        self.wall_before = [s.wall_before for s in starts]
        self.active = list(range(len(members)))  # member index of each stacked row
        self.results: list[TrainResult | None] = [None] * len(members)
        resumed = starts[0].checkpoint
        scaler_state = resumed.metadata["resume"].get("grad_scaler") if resumed else None
        self.arithmetic = Arithmetic(train_config, device, scaler_state)

    # --- helpers ---------------------------------------------------------------------
    def autocast(self):
        return self.arithmetic.autocast()

    def _tick(self, key: str, since: float) -> float:
        now = time.perf_counter()
        if self.timings is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                now = time.perf_counter()
            self.timings[key] = self.timings.get(key, 0.0) + now - since
        return now

    def _description(self) -> str:
        if len(self.members) > 1:
            return f"ensemble x{len(self.members)}"
        return self.dirs[0].name if self.dirs[0] is not None else "train"

    def wall(self, i: int) -> float:
        return self.wall_before[i] + time.perf_counter() - self.t_start

    def forward(self, tokens: Int[Tensor, "member batch pos"]) -> Tensor:
        with self.autocast():
            return stacked_logits(self.base, self.weights.params, tokens)

    # --- evaluation, checkpoints ---------------------------------------------------------
    @torch.no_grad()
    def record_eval(self) -> None:
        rows = self.active
        logits = [
            self.forward(torch.stack([self.eval_sets[i].tokens[b] for i in rows]))
            for b in range(self.tc.eval_batches)
        ]
        now = time.perf_counter()
        for r, i in enumerate(rows):
            es = self.eval_sets[i]
            model = PrecomputedLogits(es.tokens, [lg[r] for lg in logits])
            rec = {"step": self.step} | evaluate(model, es, self.refs[i], self.autocast)
            count = self.loss_count[i]
            rec["train_loss"] = self.loss_sum[i] / count if count else None
            rec["lr"] = self.last_lr
            rec["tokens_seen"] = self.step * self.tc.tokens_per_step
            rec["wall_seconds"] = self.wall(i)
            dt = now - self.t_last
            done = (self.step - self.step_last) * self.tc.tokens_per_step
            rec["tokens_per_s"] = done / dt if dt > 0 else None
            self.loss_sum[i], self.loss_count[i] = 0.0, 0
            self.metrics[i].append(rec)
            if self.dirs[i] is not None:
                with open(self.dirs[i] / METRICS, "a") as f:
                    f.write(json.dumps(rec) + "\n")
        self.t_last, self.step_last = time.perf_counter(), self.step

    def save(self, name: str) -> None:
        for r, i in enumerate(self.active):
            if self.dirs[i] is None:
                continue
            member = self.members[i]
            tensors, groups = optimizer_state(MemberOptimizer(self.opt, r), self.opt_names)
            meta = {
                "run_format": RUN_FORMAT,
                "step": self.step,
                "seed": member.seed,
                "chain": member.chain.to_dict(),
                "train": self.tc.to_dict(),
                "resume": {
                    "param_groups": groups,
                    "lr_schedule": "TrainConfig.lr_at(step), a function of the step",
                    "param_names": self.opt_names,
                    "train_loss_sum": self.loss_sum[i],
                    "train_loss_count": self.loss_count[i],
                    "wall_seconds": self.wall(i),
                    "data_seeds": "SeedSequence([seed, 1, step]) per training batch",
                    "grad_scaler": self.arithmetic.state(),
                },
            }
            model = self.weights.copy_to(r, self.models[i])
            path = self.dirs[i] / CHECKPOINTS / name
            save_checkpoint(path, model, metadata=meta, state=tensors, overwrite=True)

    # --- members that diverge ------------------------------------------------------------
    def drop(self, rows: list[int], values: list[float]) -> None:
        """Members at stacked `rows` got a non-finite loss: give them the trainer's diverged
        summary (their weights are those before this update) and remove them."""
        for r in rows:
            i = self.active[r]
            model = self.weights.copy_to(r, self.models[i]).eval()
            try:
                stop_diverged(
                    self.dirs[i],
                    self.step,
                    values[r],
                    self.last_lr,
                    self.metrics[i],
                    self.refs[i],
                    self.members[i].seed,
                    self.wall(i),
                    arithmetic=self.arithmetic.record(),
                )
            except TrainingDiverged as err:
                summary = {
                    "status": "diverged",
                    "message": str(err),
                    "verdict": "neither",
                    "steps": self.step,
                    "seed": self.members[i].seed,
                    "arithmetic": self.arithmetic.record(),
                }
                if self.dirs[i] is not None:
                    summary = json.loads((self.dirs[i] / SUMMARY).read_text())
                self.results[i] = TrainResult(summary, model, self.metrics[i], self.dirs[i])
        keep = [r for r in range(len(self.active)) if r not in rows]
        self.active = [self.active[r] for r in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self.device)
        tensors, groups = stack_optimizer_state(self.opt, self.opt_names, index)
        params = {
            n: torch.nn.Parameter(p.detach()[index].clone()) for n, p in self.weights.params.items()
        }
        self.weights = StackedWeights(self.weights.cfg, params)
        self.opt, _ = make_optimizer(self.weights, self.tc)
        load_optimizer_state(self.opt, self.opt_names, tensors, groups)

    # --- the loop ------------------------------------------------------------------------
    def run(self, progress: bool, stop_at: int | None) -> list[TrainResult]:
        from tqdm.auto import tqdm

        tc = self.tc
        checkpoint_steps = set(tc.checkpoint_steps())
        self.t_start = self.t_last = time.perf_counter()
        self.step_last = self.step
        self.last_lr = tc.lr_at(0)
        bar = tqdm(
            total=tc.iters,
            initial=self.step,
            disable=None if progress else True,
            desc=self._description(),
            dynamic_ncols=True,
        )
        with contextlib.closing(bar):
            if self.step == 0 and not self.metrics[0]:
                t = time.perf_counter()
                self.record_eval()
                t = self._tick("eval_s", t)
                if 0 in checkpoint_steps:
                    self.save(step_dir_name(0))
                    self._tick("save_s", t)
            while self.step < tc.iters and self.active:
                if stop_at is not None and self.step >= stop_at:
                    break
                t = time.perf_counter()
                seeds = [self.members[i].seed for i in self.active]
                chains = [self.members[i].chain for i in self.active]
                tokens = member_batches(chains, seeds, self.step, tc, self.device)
                t = self._tick("data_s", t)
                self.last_lr = tc.lr_at(self.step)
                for group in self.opt.param_groups:
                    group["lr"] = self.last_lr
                values = _train_step(self, tokens)
                t = self._tick("step_s", t)
                if self.timings is not None:
                    self.timings["steps"] = self.timings.get("steps", 0) + 1
                if not self.active:
                    break
                self.step += 1
                for i, v in zip(self.active, values, strict=True):
                    self.loss_sum[i] += v
                    self.loss_count[i] += 1
                bar.update(1)
                if self.step % tc.eval_every == 0 or self.step == tc.iters:
                    self.record_eval()
                    losses = [self.metrics[i][-1]["eval_loss"] for i in self.active]
                    bar.set_postfix(mean_loss=f"{sum(losses) / len(losses):.4f}", refresh=False)
                    t = self._tick("eval_s", t)
                if self.step in checkpoint_steps:
                    self.save(step_dir_name(self.step))
                    self._tick("save_s", t)
                elif tc.save_every and self.step % tc.save_every == 0:
                    self.save(LATEST)
                    self._tick("save_s", t)
        return self.finish()

    def finish(self) -> list[TrainResult]:
        tc = self.tc
        paused = self.step < tc.iters
        if paused and self.step not in set(tc.checkpoint_steps()):
            self.save(LATEST)
        for r, i in enumerate(self.active):
            model = self.weights.copy_to(r, self.models[i]).eval()
            member, run_dir = self.members[i], self.dirs[i]
            if paused:
                summary = {
                    "status": "paused",
                    "steps": self.step,
                    "seed": member.seed,
                    "wall_seconds": self.wall(i),
                }
                self.results[i] = TrainResult(summary, model, self.metrics[i], run_dir)
                continue
            refs = self.refs[i]
            gap = refs["unigram_loss"] - refs["optimal_loss"]
            summary = finished_summary(
                self.metrics[i],
                refs,
                gap,
                member.chain,
                tc,
                member.seed,
                self.wall(i),
                self.device,
                model,
            )
            summary["arithmetic"] = self.arithmetic.record()
            if len(self.members) > 1:
                summary["ensemble_members"] = len(self.members)
            if run_dir is not None:
                write_json_atomic(run_dir / SUMMARY, summary)
                shutil.rmtree(run_dir / CHECKPOINTS / LATEST, ignore_errors=True)
                shutil.rmtree(run_dir / CHECKPOINTS / f".{LATEST}.old", ignore_errors=True)
            self.results[i] = TrainResult(summary, model, self.metrics[i], run_dir)
        return self.results  # type: ignore[return-value]


def _train_step(run: EnsembleLoop, tokens: Int[Tensor, "member batch pos"]) -> list[float]:
    """One update of every active member of `run` on its batch tokens[m] (TrainConfig.sample_len
    tokens per sequence: the model reads the first seq_len); returns their losses (nats), in
    the order of run.active after the update. A member whose loss is not finite is dropped
    before the update (nothing of it is updated)."""
    while True:
        logits = run.forward(tokens[..., : run.tc.seq_len])
        losses = member_losses(logits.float(), tokens)
        values = losses.detach().tolist()
        bad = [r for r, v in enumerate(values) if not math.isfinite(v)]
        if not bad:
            break
        keep = [r for r in range(len(values)) if r not in bad]
        run.drop(bad, values)
        if not keep:
            return []
        tokens = tokens[keep]
    run.opt.zero_grad(set_to_none=True)
    clip = None
    if run.tc.grad_clip is not None:
        clip = lambda: clip_member_grads(run.weights, run.tc.grad_clip)  # noqa: E731
    run.arithmetic.backward_and_step(losses.sum(), run.opt, clip)
    return values
