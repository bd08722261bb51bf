"""What machine a number came from: the CPU, its instruction set, the kernel build, torch.

Every figure markov-lens prints names the CPU (``cpu_model``), and bit-for-bit claims are
scoped to one ``fingerprint``: the same seed gives the same bits on the same CPU, kernel
build and torch, and agrees within rounding (float32, ~1e-6 relative per step) elsewhere.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name, e.g. "AMD EPYC" or "Intel(R) Xeon(R) Platinum 8481C"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_id() -> str:
    """What -march=native depends on: the CPU's model and flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def vector_isa() -> str:
    """The widest x86 vector extension the CPU reports (avx512 / avx2 / sse), or the
    machine name elsewhere (aarch64 ...)."""
    flags = set(cpu_id().replace("\n", " ").split())
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    if "sse2" in flags:
        return "sse"
    return platform.machine()


def fingerprint(kernel: str | None) -> dict[str, Any]:
    """The machine as bit-identical results depend on it: CPU model, a hash of its flags,
    the attention kernel build in use (``kernel``, its description; None: none) and torch's
    version (training.fused_attention.fingerprint fills in the kernel)."""
    import torch

    return {
        "cpu": cpu_model(),
        "cpu_flags": hashlib.sha256(cpu_id().encode()).hexdigest()[:16],
        "kernel": kernel,
        "torch": torch.__version__,
    }
