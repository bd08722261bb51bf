"""The arithmetic of a run (TrainConfig precision, grad_scaler, tf32): the autocast context of
its forward passes, its loss scaler and TF32 matmuls, checked against the device first.

- precision "fp32": plain float32. "bf16" / "fp16": ``torch.autocast(device, dtype)`` around
  every forward (training and evaluation) on CUDA and on the CPU alike; the weights, AdamW
  and the loss stay float32. CPU autocast casts another op list than CUDA's (in torch 2.13
  layer_norm and softmax run in the low dtype on a CPU, in float32 on CUDA), so a CPU run
  emulates a GPU's low-precision run, it does not repeat it.
- grad_scaler: torch.amp.GradScaler on the run's device (dynamic loss scaling: an update whose
  gradients overflow is skipped and the scale halved; counted in the summary). A stack of
  more than one member cannot use it: one member's overflow would skip every member's update.
- tf32: ``torch.backends.cuda.matmul.allow_tf32`` and ``cudnn.allow_tf32`` on for the run and
  restored after it (the paper's main.py sets both). CUDA only: asked for on another device it
  is an error, never a silent no-op, so a config that says tf32 ran with it.

``check_arithmetic`` raises one-line ValueErrors; ``Arithmetic`` is what the loop uses.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from training.recipe import TrainConfig

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Does ``torch.autocast(device.type, dtype)`` compute a matmul in `dtype` here? (torch
    disables autocast with a warning for a dtype a device does not support.)"""
    a = torch.ones(2, 2, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast(device.type, dtype=dtype):
                return (a @ a).dtype == dtype
        except (RuntimeError, ValueError):
            return False


def check_arithmetic(train_config: TrainConfig, device: torch.device) -> None:
    """ValueError (one line) when the run's arithmetic cannot run on `device`."""
    tc = train_config
    dtype = AUTOCAST_DTYPES[tc.precision]
    if dtype is not None and not autocast_works(device, dtype):
        raise ValueError(
            f"precision {tc.precision}: torch {torch.__version__} has no {dtype} autocast on "
            f"{device.type}; use precision fp32 or another device"
        )
    if tc.grad_scaler:
        try:
            torch.amp.GradScaler(device.type)
        except (RuntimeError, ValueError, AssertionError) as err:
            raise ValueError(
                f"grad_scaler: torch {torch.__version__} has no GradScaler on {device.type} "
                f"({err}); train without it (--no-grad-scaler)"
            ) from None
    if tc.tf32 and device.type != "cuda":
        raise ValueError(
            f"tf32 needs a CUDA device (TF32 is an NVIDIA matmul mode) but this run's device is "
            f"{device}; turn tf32 off (train --no-tf32; reproduce --arithmetic fp16)"
        )


@contextlib.contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    """TF32 matmuls and convolutions on CUDA while the block runs (enabled=False: unchanged);
    the previous settings restored after it."""
    if not enabled:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


class Arithmetic:
    """The autocast context and the loss scaler of one training loop (check_arithmetic first).

    scaler: a GradScaler (grad_scaler) or None; skipped_steps counts the updates it skipped."""

    def __init__(self, train_config: TrainConfig, device: torch.device, state: dict | None = None):
        self.tc, self.device = train_config, device
        self.dtype = AUTOCAST_DTYPES[train_config.precision]
        self.scaler = torch.amp.GradScaler(device.type) if train_config.grad_scaler else None
        self.skipped_steps = 0
        if self.scaler is not None and state:
            self.scaler.load_state_dict({k: v for k, v in state.items() if k != "skipped_steps"})
            self.skipped_steps = int(state.get("skipped_steps", 0))

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_and_step(self, loss: torch.Tensor, optimizer, clip) -> None:
        """loss.backward() and optimizer.step(), through the scaler when there is one; `clip`
        (None, or a function of no arguments) clips the true (unscaled) gradients first."""
        if self.scaler is None:
            loss.backward()
            if clip is not None:
                clip()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if clip is not None:
            self.scaler.unscale_(optimizer)
            clip()
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        if self.scaler.get_scale() < before:  # the scale backs off only after an overflow
            self.skipped_steps += 1

    def state(self) -> dict[str, Any] | None:
        """The scaler's state for a resume checkpoint (JSON), None without a scaler."""
        if self.scaler is None:
            return None
        return self.scaler.state_dict() | {"skipped_steps": self.skipped_steps}

    def record(self) -> dict[str, Any]:
        """What a run's summary says about its arithmetic."""
        tc = self.tc
        out: dict[str, Any] = {
            "precision": tc.precision,
            "autocast": None if self.dtype is None else f"{self.device.type} {self.dtype}",
            "grad_scaler": tc.grad_scaler,
            "tf32": tc.tf32,
            "targets": tc.targets,
            "targets_per_sequence": tc.targets_per_sequence,
        }
        if self.scaler is not None:
            out["grad_scaler_skipped_steps"] = self.skipped_steps
            out["grad_scaler_final_scale"] = self.scaler.get_scale()
        return out
