"""Writing a comparison's results: JSON with non-finite floats as null, and files that are
only replaced when asked (``dumps``, ``write_outputs``, ``json_float``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from training.runs import savefig_atomic, write_text_atomic


def json_float(v: Any) -> Any:
    """`v`, or None for a non-finite float (JSON has no nan or inf)."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return json_float(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Tensor):
        return _clean(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any) -> str:
    """JSON text with non-finite floats written as null."""
    return json.dumps(_clean(obj), indent=2) + "\n"


def write_outputs(
    out_dir: str | os.PathLike,
    figures: dict[str, Any],
    texts: dict[str, str],
    force: bool = False,
    dpi: int = 110,
) -> dict[str, Path]:
    """Save Figures (by file name) and texts into ``out_dir``. Refuses (FileExistsError,
    listing them) when any of those files exists, unless force; never touches other files."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    names = list(figures) + list(texts)
    clash = sorted(n for n in names if (out / n).exists())
    if clash and not force:
        raise FileExistsError(
            f"{out} already holds {', '.join(clash)}; pass --force (force=True) to replace them "
            "or choose another directory"
        )
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, fig in figures.items():
        savefig_atomic(fig, out / name, dpi=dpi, bbox_inches="tight")
        written[name] = out / name
    for name, text in texts.items():
        write_text_atomic(out / name, text)
        written[name] = out / name
    return written
