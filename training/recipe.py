"""TrainConfig: the optimisation recipe of a run, as one JSON-able dataclass.

The defaults are the paper's recipe (docs/theory.md section 3, checked against the public code
Bond1995/Markov, Markov-LLM/src): AdamW lr 2e-3, betas (0.9, 0.95), eps 1e-8, weight decay
1e-3 on linear weights only, no gradient clipping, a OneCycle schedule with 2% warm-up from
lr/100 = 2e-5 to 2e-3 and cosine decay to 2e-5/0.05 = 4e-4 (torch OneCycleLR, div_factor 100,
final_div_factor 0.05, pct_start 0.02, anneal "cos", stepped once per update), batch 16,
sequence length 1024, a fresh batch every step, 400 updates.

Weight decay groups (``training.trainer.decay_parameter_names``), as the paper's code builds them: decayed are the
weights of its nn.Linear layers, i.e. W_Q, W_K, W_V, W_O, the MLP's W_in, W_out and an *untied*
unembedding W_U (lm_head). Not decayed: W_E and W_pos (nn.Embedding), LayerNorm weights, every
bias. A *tied* W_E = W_U^T is not decayed: in that code wte.weight and lm_head.weight are one
tensor, listed under the Embedding name, and ``decay.remove('lm_head.weight')`` keeps it out of
the decay set (nanoGPT's original rule; newer nanoGPT decays every >= 2-d tensor, which would
decay it). ``decay_tied_embedding=True`` switches to that newer behaviour.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from training import limits
from training.jsonconfig import JsonConfig

SCHEDULES = ("onecycle", "constant")
ANNEALS = ("cos", "linear")
PRECISIONS = ("fp32", "bf16", "fp16")
TARGETS = ("inside", "authors")


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _finite(name: str, value: Any, minimum: float = 0.0, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {rel} {minimum}, got {value!r}")


@dataclass
class TrainConfig(JsonConfig):
    """How a run is optimised and evaluated (every field has the paper's value by default).

    iters: optimiser updates. batch, seq_len: each update's fresh batch [batch, seq_len].
    lr: peak learning rate. schedule "onecycle" (OneCycleLR with warmup_frac, div_factor,
    final_div_factor, anneal) or "constant". grad_clip: max global grad norm (None: none).
    eval_every: updates between evaluations on eval_batches fixed held-out batches of
    [batch, seq_len] (also at step 0 and at the end). checkpoints_per_octave: log-spaced
    checkpoints (1: steps 0, 1, 2, 4, 8, ...; 2: also ~sqrt(2) between; 0: none) plus the last.
    eval_seed: seed of the held-out batches (None: the run's own seed; the same int for every
    run of a sweep evaluates all seeds on the same tokens, so cells compare pair-wise).
    save_every: updates between rolling resume checkpoints ("latest"; 0: never).
    Arithmetic (training.trainer.arithmetic; the paper's GPU runs used fp16, no scaler, TF32):
    precision: "fp32", or "bf16" / "fp16" autocast of forward and backward on the run's
    device, CPU included (the weights, AdamW and the loss stay float32); grad_scaler: dynamic
    loss scaling (torch.amp.GradScaler; needs bf16 or fp16); tf32: TF32 matmuls (CUDA only).
    targets: "inside" (each training sequence is seq_len tokens, its seq_len - 1 next tokens
    are the targets) or "authors" (seq_len + 1 tokens are sampled, the model reads the first
    seq_len and predicts all seq_len next tokens, as the paper's code: 1025 sampled, 1024
    predicted); evaluation is the same either way. fused_attention: train through the
    model's fused attention branch (training.fused_attention: the same function without the
    [pos, pos] scores; false: the explicit branch; the saved models are the same either way).
    device: "auto" (CUDA when available), "cpu", "cuda", "cuda:N".
    """

    config_name = "train config"

    iters: int = 400
    batch: int = 16
    seq_len: int = 1024
    lr: float = 2e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 1e-3
    decay_tied_embedding: bool = False
    schedule: str = "onecycle"
    warmup_frac: float = 0.02
    div_factor: float = 100.0
    final_div_factor: float = 0.05
    anneal: str = "cos"
    grad_clip: float | None = None
    eval_every: int = 10
    eval_batches: int = 2
    eval_seed: int | None = None
    checkpoints_per_octave: int = 1
    save_every: int = 50
    precision: str = "fp32"
    grad_scaler: bool = False
    tf32: bool = False
    targets: str = "inside"
    fused_attention: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.betas, tuple):
            self.betas = list(self.betas)
        self.validate()

    def validate(self) -> None:
        for name in ("iters", "batch", "eval_every", "eval_batches"):
            _positive_int(name, getattr(self, name))
        _positive_int("seq_len", self.seq_len, 2)
        _positive_int("checkpoints_per_octave", self.checkpoints_per_octave, 0)
        for name, cap in (
            ("iters", limits.MAX_ITERS),
            ("batch", limits.MAX_BATCH),
            ("seq_len", limits.MAX_N_CTX),
            ("eval_batches", limits.MAX_EVAL_BATCHES),
            ("checkpoints_per_octave", limits.MAX_CHECKPOINTS_PER_OCTAVE),
        ):
            limits.check_cap(name, getattr(self, name), cap)
        _positive_int("save_every", self.save_every, 0)
        if self.eval_seed is not None:
            _positive_int("eval_seed", self.eval_seed, 0)
        _finite("lr", self.lr)
        _finite("eps", self.eps, strict=True)
        _finite("weight_decay", self.weight_decay)
        if (
            not isinstance(self.betas, list)
            or len(self.betas) != 2
            or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)
        ):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.anneal not in ANNEALS:
            raise ValueError(f"anneal must be one of {ANNEALS}, got {self.anneal!r}")
        if not (isinstance(self.warmup_frac, (int, float)) and 0 < self.warmup_frac < 1):
            raise ValueError(f"warmup_frac must be in (0, 1), got {self.warmup_frac!r}")
        _finite("div_factor", self.div_factor, strict=True)
        _finite("final_div_factor", self.final_div_factor, strict=True)
        if self.grad_clip is not None:
            _finite("grad_clip", self.grad_clip, strict=True)
        if not isinstance(self.fused_attention, bool):
            raise ValueError(f"fused_attention must be true or false, got {self.fused_attention!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("grad_scaler", "tf32"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.grad_scaler and self.precision == "fp32":
            raise ValueError(
                "grad_scaler needs precision bf16 or fp16 (a loss scaler guards low-precision "
                "gradients; fp32 has none)"
            )
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got {self.targets!r}")
        if not isinstance(self.device, str) or not re.fullmatch(
            r"auto|cpu|cuda(:\d+)?", self.device
        ):
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )

    # --- derived ------------------------------------------------------------------------
    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq_len

    @property
    def sample_len(self) -> int:
        """Tokens sampled per training sequence: seq_len, or seq_len + 1 (targets "authors")."""
        return self.seq_len + (self.targets == "authors")

    @property
    def targets_per_sequence(self) -> int:
        """Next-token targets per training sequence: seq_len - 1, or seq_len ("authors")."""
        return self.sample_len - 1

    def checkpoint_steps(self) -> list[int]:
        """Steps with a kept checkpoint: 0 and log-spaced steps (checkpoints_per_octave per
        doubling, rounded), and always the last step."""
        steps = {self.iters}
        if self.checkpoints_per_octave > 0:
            steps.add(0)
            k = 0
            while True:
                s = round(2 ** (k / self.checkpoints_per_octave))
                if s >= self.iters:
                    break
                steps.add(s)
                k += 1
        return sorted(steps)

    def lr_at(self, step: int) -> float:
        """Learning rate of update number `step` (0-based): torch's OneCycleLR (stepped once per
        update, cycle_momentum off) in closed form, equal to it to float rounding (tested).
        The trainer sets each update's lr from this function, so the schedule's state is the
        step; it also covers warmup_frac * iters == 1, where OneCycleLR divides by zero."""
        if self.schedule == "constant":
            return float(self.lr)
        initial = self.lr / self.div_factor
        final = initial / self.final_div_factor
        warm_end = float(self.warmup_frac * self.iters) - 1
        end = self.iters - 1

        def anneal(start: float, stop: float, pct: float) -> float:
            if self.anneal == "cos":
                return stop + (start - stop) / 2.0 * (math.cos(math.pi * pct) + 1)
            return (stop - start) * pct + start

        if step <= warm_end:
            return anneal(initial, self.lr, step / warm_end if warm_end > 0 else 1.0)
        if end <= warm_end:
            return float(self.lr)
        return anneal(self.lr, final, (step - warm_end) / (end - warm_end))

    # --- serialisation: to_dict, to_json, from_dict (training.jsonconfig) ---------------
    @classmethod
    def paper(cls, **overrides: Any) -> TrainConfig:
        """The paper's recipe (the defaults), with `overrides`."""
        return cls(**overrides)
