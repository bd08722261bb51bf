"""Device choice, in one place: CUDA when it is there, the CPU otherwise, or what was asked."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None or "auto" -> CUDA when available, else CPU; otherwise the named device
    (ValueError for a malformed name, or for CUDA asked for where there is none)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"invalid device {device!r}: {err}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} asked for but CUDA is not available; use 'auto' or 'cpu'"
        )
    return resolved
