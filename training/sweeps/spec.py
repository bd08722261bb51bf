"""Sweep specs: reading, checking and expanding them into runs.

A spec (YAML or JSON; or a list of specs, whose grids are united) maps ``chain``, ``model``
and ``train`` to `markov-lens train`'s options (training.options) and ``seeds`` to an int N
(seeds 0..N-1) or a list of seeds. A list is a grid axis, a scalar is fixed. Every
combination of the axes is a *cell*; each (cell, seed) is a RunTask, run directory
OUT/runs/<cell>/seed<k>.

- ``load_spec(path)``: read a YAML/JSON file (repeated keys and absurd nesting refused);
- ``validate_spec(spec)``: the spec as a list of single specs, every key checked;
- ``expand(spec, out_dir)``: every run as a RunTask (each cell validated by building its
  configs), at most MAX_CELLS cells and MAX_RUNS runs;
- ``cell_id(axes, options)``: a cell's directory name.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.limits import check_plain_data, read_input_file
from training.options import (
    CHAIN_OPTIONS,
    MAX_SEED,
    MODEL_OPTIONS,
    TRAIN_OPTIONS,
    build_run_config,
)

SPEC_KEYS = ("chain", "model", "train", "seeds")
SECTION_OPTIONS = {"chain": CHAIN_OPTIONS, "model": MODEL_OPTIONS, "train": TRAIN_OPTIONS}


@dataclass
class RunTask:
    """One run of a sweep: its options (chain/model/train sections), seed and directory."""

    cell: str
    axes: dict[str, Any]
    options: dict[str, dict[str, Any]]
    seed: int
    run_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MAX_SPEC_DEPTH = 64


def max_bracket_depth(text: str) -> int:
    """Deepest nesting of [ and { in `text` (a cheap guard before parsing)."""
    depth = best = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return best


def load_spec(path: str | os.PathLike) -> dict | list:
    """Read a YAML (.yaml/.yml) or JSON spec file (ValueError if it cannot be parsed, or is
    not plain data: training.limits.check_plain_data). Only a regular file of at most
    limits.MAX_INPUT_BYTES is read (a FIFO or a device is refused, not waited on)."""
    path = Path(path)
    doc = _parse_spec(path, read_input_file(path, "spec file"))
    check_plain_data(doc, str(path))
    return doc


def _parse_spec(path: Path, text: str) -> Any:
    depth = max_bracket_depth(text)
    if depth > MAX_SPEC_DEPTH:
        raise ValueError(f"{path} nests {depth} levels deep; a spec needs at most a few")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

        class UniqueKeys(base):  # a repeated key would silently keep only its last value
            def construct_mapping(self, node, deep=False):
                seen = set()
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=deep)
                    if not isinstance(key, str):  # `? [a, b]`, `1: x`: data keys are strings
                        raise ValueError(
                            f"{path}: the key on line {key_node.start_mark.line + 1} is a "
                            f"{type(key).__name__}; keys must be strings"
                        )
                    if key in seen:
                        raise ValueError(
                            f"{path}: key {key!r} appears twice in one mapping (line "
                            f"{key_node.start_mark.line + 1}); give each key once"
                        )
                    seen.add(key)
                return super().construct_mapping(node, deep=deep)

        UniqueKeys.add_constructor(
            yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, UniqueKeys.construct_mapping
        )
        try:
            return yaml.load(text, Loader=UniqueKeys)
        except (yaml.YAMLError, RecursionError) as err:
            reason = " ".join(str(err).split())[:200]  # one line, however YAML words it
            raise ValueError(f"{path} is not valid YAML: {reason}") from None
        except ValueError as err:
            if "integer string conversion" in str(err):
                raise _too_many_digits(path) from None
            raise

    def unique(pairs: list) -> dict:
        keys = [k for k, _ in pairs]
        for k in keys:
            if keys.count(k) > 1:
                raise ValueError(f"{path}: key {k!r} appears twice in one object; give it once")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON: {str(err)[:200]}") from None
    except ValueError as err:
        if "integer string conversion" in str(err):
            raise _too_many_digits(path) from None
        raise


def _too_many_digits(path: Path) -> ValueError:
    return ValueError(
        f"{path} holds an integer of thousands of digits; a spec's integers have at most about 30"
    )


MAX_RUNS = 100_000  # runs in one sweep (a bigger grid is almost surely a typo)
MAX_CELLS = 10_000


def _seeds(value: Any) -> list[int]:
    if value is None:
        return [0]
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_RUNS:
            raise ValueError(
                f"seeds: an int N means seeds 0..N-1; N must be in 1..{MAX_RUNS}, got {value}"
            )
        return list(range(value))
    if (
        isinstance(value, list)
        and value
        and len(value) <= MAX_RUNS
        and all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in value
        )
    ):
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must not repeat, got {value}")
        return list(value)
    raise ValueError(
        f"seeds must be an int N or a non-empty list of ints in 0..2^63-1, got {value!r}"
    )


def validate_spec(spec: Any) -> list[dict]:
    """The spec as a list of single specs, with every key checked (ValueError naming a bad
    key and the allowed ones)."""
    specs = spec if isinstance(spec, list) else [spec]
    if not specs:
        raise ValueError("an empty list of specs")
    for i, s in enumerate(specs):
        where = f"spec[{i}]" if isinstance(spec, list) else "spec"
        if not isinstance(s, dict):
            raise ValueError(f"{where} must be a mapping, got {type(s).__name__}")
        for key in s:
            if key not in SPEC_KEYS:
                raise ValueError(
                    f"{where}: unknown key {key!r}; allowed keys: " + ", ".join(SPEC_KEYS)
                )
        for section, allowed in SECTION_OPTIONS.items():
            opts = s.get(section) or {}
            if not isinstance(opts, dict):
                raise ValueError(f"{where}.{section} must be a mapping of options")
            if section == "chain" and "family" in opts:
                continue
            for key in opts:
                if key not in allowed:
                    raise ValueError(
                        f"{where}: unknown {section} option {key!r}; allowed {section} "
                        "options: " + ", ".join(allowed)
                    )
            for key, value in opts.items():
                if isinstance(value, list) and not value:
                    raise ValueError(f"{where}.{section}.{key} is an empty list (no grid values)")
        _seeds(s.get("seeds"))
    return specs


def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "_".join(_fmt(v) for v in value)
    return str(value)


def cell_id(axes: dict[str, Any], options: dict) -> str:
    """Directory name of a cell: its axis values, readable, and a hash of all its options."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    label = "-".join(f"{k}{_fmt(v)}" for k, v in axes.items())
    label = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in label)
    label = label[:80]  # file names stay short; the hash keeps cells apart
    return f"{label}-{digest}" if label else digest


def expand(spec: Any, out_dir: str | os.PathLike) -> list[RunTask]:
    """Every (cell, seed) of the spec's grid(s) as RunTasks; each cell is validated by
    building its configs. A cell's `axes` are the options whose values differ between the
    cells of the whole sweep (all specs together)."""
    out = Path(out_dir)
    cells: list[tuple[dict, list[int]]] = []
    for s in validate_spec(spec):
        axes_spec = []  # (section, key, values)
        fixed: dict[str, dict[str, Any]] = {"chain": {}, "model": {}, "train": {}}
        for section in ("chain", "model", "train"):
            for key, value in (s.get(section) or {}).items():
                if isinstance(value, list) and not (section == "chain" and key == "kernel"):
                    axes_spec.append((section, key, value))
                else:
                    fixed[section][key] = value
        n_cells = math.prod(len(v) for _, _, v in axes_spec)
        n_runs = n_cells * len(_seeds(s.get("seeds")))
        if n_cells + len(cells) > MAX_CELLS or n_runs > MAX_RUNS:
            raise ValueError(
                f"the sweep is too big: {n_cells} cells and {n_runs} runs in one grid "
                f"(at most {MAX_CELLS} cells and {MAX_RUNS} runs)"
            )
        for combo in itertools.product(*[values for _, _, values in axes_spec]):
            options = {sec: dict(v) for sec, v in fixed.items()}
            for (section, key, _), value in zip(axes_spec, combo, strict=True):
                options[section][key] = value
            build_run_config(options | {"seed": 0})  # validate now, not after hours of runs
            cells.append((options, _seeds(s.get("seeds"))))
    varying: list[tuple[str, str]] = []
    for options, _ in cells:
        for section in ("chain", "model", "train"):
            for key in options[section]:
                values = {json.dumps(o[section].get(key), sort_keys=True) for o, _ in cells}
                if len(values) > 1 and (section, key) not in varying:
                    varying.append((section, key))
    tasks: list[RunTask] = []
    seen: set[str] = set()
    for options, seeds in cells:
        axes = {key: options[section].get(key) for section, key in varying}
        cell = cell_id(axes, options)
        for seed in seeds:
            run_dir = out / "runs" / cell / f"seed{seed}"
            if str(run_dir) in seen:
                continue
            seen.add(str(run_dir))
            tasks.append(RunTask(cell, axes, options, seed, str(run_dir)))
    return tasks
