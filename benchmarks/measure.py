"""How the benchmarks measure and report: one Comparison per claim, and the tools behind it.

A Comparison prints as ``NAME: A vs B: R.Rx`` (R = B's time / A's time). Memory: the
activations a training step saves for backward (``saved_activation_bytes``: exact, any
device) and the peak of each side (``PeakMemory``; CUDA: torch.cuda.max_memory_allocated;
CPU: the resident set sampled every 5 ms, above its level when the side started, so memory
the allocator kept from an earlier side is not seen again). Times: ``interleaved_best`` runs
the sides in turn, so that a change of the machine's load affects all of them alike.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.machine import cpu_model, vector_isa


@dataclass
class Comparison:
    """One measured comparison: A took a_seconds, B took b_seconds; ratio = B / A."""

    name: str
    a: str
    b: str
    a_seconds: float | None
    b_seconds: float | None
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.skipped or not self.a_seconds or self.b_seconds is None:
            return None
        return self.b_seconds / self.a_seconds

    def line(self) -> str:
        """``NAME: A vs B: R.Rx`` (or ``NAME: A vs B: skipped (why)``)."""
        if self.skipped:
            return f"{self.name}: {self.a} vs {self.b}: skipped ({self.skipped})"
        return f"{self.name}: {self.a} vs {self.b}: {self.ratio:.1f}x"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ratio": self.ratio, "line": self.line()}


def machine_line(device: torch.device) -> str:
    """The machine (CPU model and its widest vector ISA), torch threads and the load average
    (1, 5, 15 min)."""
    where = f"{os.cpu_count()}-core {cpu_model()} ({vector_isa()})"
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} (host: {where})"
    load = "/".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"machine: {where}; device {device}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {load}"
    )


def load_average() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _rss_bytes() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of a block, in bytes: CUDA max_memory_allocated on a CUDA device, else
    the peak resident set size (sampled every `interval` s) above its level at entry."""

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device, self.interval = device, interval
        self.peak: int | None = None
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "rss_above_start"

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._start = _rss_bytes()
        self._max = self._start or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        if self._start is not None:
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _rss_bytes()
            if rss is not None and rss > self._max:
                self._max = rss

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        if self._start is None:
            return
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, _rss_bytes() or 0)
        self.peak = self._max - self._start


def format_mb(n: int | None) -> str:
    """Bytes as MB for a line ("n/a" for None)."""
    return "n/a" if n is None else f"{n / 2**20:.1f} MB"


def format_ms(ms: float) -> str:
    """Milliseconds for a line: one decimal from 1 ms up, else three."""
    return f"{ms:.1f}" if ms >= 1 else f"{ms:.3f}"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def saved_activation_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the tensors autograd saves for the backward pass while `fn` runs (each
    storage counted once): the activation memory of a training step, on any device."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        storages[st.data_ptr()] = max(storages.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def interleaved_best(
    fns: list[Callable[[int], Any]], repeats: int, device: torch.device
) -> list[float]:
    """Best-of-`repeats` seconds of each function of the step, run in turn (one warm-up call
    each first), so that a change of the machine's load affects all of them alike."""
    for fn in fns:
        fn(0)
    sync(device)
    best = [float("inf")] * len(fns)
    for step in range(1, repeats + 1):
        for j, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn(step)
            sync(device)
            best[j] = min(best[j], time.perf_counter() - t0)
    return best
