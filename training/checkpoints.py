"""Checkpoints: safetensors weights with the config and metadata in JSON beside them.

A checkpoint is a directory:

    step_000400/
        model.safetensors      the model's state dict (HookedTransformer names; tied W_U not
                               stored twice)
        state.safetensors      optional extra tensors (optimiser moments, generator states)
        checkpoint.json        format, config, metadata (step, seed, chain ...), package
                               version, and the SHA-256 of every file above

Nothing is ever unpickled. Writes are atomic: the directory is assembled under a temporary
name and renamed into place, so an interrupted save never leaves a half checkpoint where a
good one was; an existing checkpoint is only replaced with overwrite=True.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from training.config import ModelConfig
from training.devices import resolve_device
from training.model import MarkovTransformer

FORMAT = "markov-lens-checkpoint/1"
MANIFEST = "checkpoint.json"
WEIGHTS = "model.safetensors"
STATE = "state.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt, or from another config."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permission denied, ...); whatever was
    at the destination before is untouched."""


def package_version() -> str:
    try:
        return importlib_metadata.version("markov-lens")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``tensors`` as a safetensors file, through Python's open: safetensors' own file
    functions refuse paths that are not valid UTF-8, which a run directory's name may be."""
    path.write_bytes(save_safetensors(tensors))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Checkpoint:
    """What a checkpoint directory holds, verified."""

    path: Path
    config: ModelConfig
    metadata: dict[str, Any]
    weights: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    version: str = "unknown"

    @property
    def step(self) -> int | None:
        return self.metadata.get("step")


def _contiguous_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _umask() -> int:
    """This process's umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_checkpoint(
    path: str | os.PathLike,
    model: MarkovTransformer,
    metadata: dict[str, Any] | None = None,
    state: dict[str, torch.Tensor] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` (and optional extra `state` tensors) to the directory `path`, atomically.

    metadata: JSON-able facts about the run (step, seed, chain spec, ...).
    Raises FileExistsError if `path` exists and overwrite is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"checkpoint {path} already exists (pass overwrite=True)")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = dict(metadata or {})
    try:  # fail early, before touching the disk, on non-JSON metadata
        json.dumps(metadata)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {err}") from err
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        files = {WEIGHTS: _contiguous_cpu(model.state_dict())}
        if state:
            files[STATE] = _contiguous_cpu(state)
        digests = {}
        for name, tensors in files.items():
            write_safetensors(tensors, tmp / name)
            digests[name] = sha256_file(tmp / name)
        manifest = {
            "format": FORMAT,
            "version": package_version(),
            "config": model.cfg.to_dict(),
            "metadata": metadata,
            "sha256": digests,
        }
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        mask = _umask()  # mkdtemp makes 0700: give the checkpoint the user's usual modes
        os.chmod(tmp, 0o777 & ~mask)
        for name in [*files, MANIFEST]:
            os.chmod(tmp / name, 0o666 & ~mask)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the previous checkpoint back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(path, err) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_error(path: Path, err: Exception) -> CheckpointWriteError:
    kept = (
        f"the previous checkpoint {path} is intact"
        if path.exists()
        else "nothing was written there (the other checkpoints are untouched)"
    )
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    error = CheckpointWriteError(f"cannot save checkpoint {path}: {reason}; {kept}")
    error.errno = getattr(err, "errno", None)
    return error


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a checkpoint directory (checksums, format, config) without building a
    model. Raises CheckpointError saying what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise CheckpointError(f"{path} has no {MANIFEST}: incomplete or not a checkpoint")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{manifest_path} is not valid JSON (corrupt): {err}") from err
    except OSError as err:
        raise CheckpointError(f"{manifest_path} cannot be read: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointError(f"{manifest_path}: unknown format {got!r}, expected {FORMAT!r}")
    digests = manifest.get("sha256", {})
    if not isinstance(digests, dict) or WEIGHTS not in digests:
        raise CheckpointError(f"{manifest_path} lists no {WEIGHTS} in its sha256 table")
    unknown = sorted(str(name) for name in digests if name not in (WEIGHTS, STATE))
    if unknown:  # never open a path the manifest names (../.., /dev/zero ...)
        raise CheckpointError(
            f"{manifest_path} lists unknown files {unknown}; a checkpoint holds {WEIGHTS} "
            f"and optionally {STATE}"
        )
    metadata = manifest.get("metadata", {})
    if not isinstance(metadata, dict):
        raise CheckpointError(
            f"{manifest_path}: metadata must be a JSON object, got {type(metadata).__name__}"
        )
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    for name, expected in digests.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing (incomplete checkpoint)")
        try:
            data = file.read_bytes()
        except OSError as err:
            raise CheckpointError(f"{file} cannot be read: {err}") from err
        actual = hashlib.sha256(data).hexdigest()  # the bytes that are loaded are the checked ones
        if actual != expected:
            raise CheckpointError(
                f"{file} is corrupt: SHA-256 {actual[:12]}... does not match the manifest's "
                f"{str(expected)[:12]}..."
            )
        try:
            loaded[name] = load_safetensors(data)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{file} is not a readable safetensors file: {err}") from err
    try:
        config = ModelConfig.from_dict(manifest.get("config"))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{manifest_path} holds an invalid model config: {err}") from err
    return Checkpoint(
        path=path,
        config=config,
        metadata=metadata,
        weights=loaded[WEIGHTS],
        state=loaded.get(STATE, {}),
        version=str(manifest.get("version", "unknown")),
    )


def check_weights_match(model: MarkovTransformer, weights: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointError unless `weights` has exactly the keys and shapes of `model`."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        if wrong:
            parts.append(
                "wrong shapes " + ", ".join(f"{k}: {got[k]} vs {expected[k]}" for k in wrong)
            )
        raise CheckpointError("weights do not match the config: " + "; ".join(parts))


def load_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    expected_config: ModelConfig | None = None,
    expected_chain: dict[str, Any] | None = None,
) -> MarkovTransformer:
    """A ready model (eval mode) from a checkpoint directory, on `device` (default: CUDA when
    available, else CPU). With `expected_config`, a checkpoint of another architecture is
    refused with the differing fields named; with `expected_chain` (a chain dict), one whose
    metadata names another chain."""
    ckpt = read_checkpoint(path)
    if expected_config is not None:
        detail = config_difference(expected_config, ckpt.config)
        if detail:
            raise CheckpointError(f"{path} is from another config: {detail}")
    saved = ckpt.metadata.get("chain")
    if expected_chain is not None and saved is not None and saved != expected_chain:
        raise CheckpointError(
            f"{path} was trained on the chain {json.dumps(saved)[:200]}, not the "
            f"{json.dumps(expected_chain)[:200]} its run's config names"
        )
    return model_from_checkpoint(ckpt, device)


MAX_WEIGHT = 1e18  # larger weights overflow float32 once squared (LayerNorm, attention scores)


def check_weights_values(weights: dict[str, torch.Tensor], path: Any) -> None:
    """CheckpointError naming the first tensor that is not floating point, not finite, or
    beyond MAX_WEIGHT in magnitude (a model that cannot compute a finite loss)."""
    for name, tensor in weights.items():
        if not tensor.is_floating_point():
            raise CheckpointError(f"{path}: weight {name} is {tensor.dtype}, not floating point")
        if tensor.numel() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: weight {name} holds NaN or infinite values")
        if tensor.numel() and float(tensor.abs().max()) > MAX_WEIGHT:
            raise CheckpointError(
                f"{path}: weight {name} reaches {float(tensor.abs().max()):.3g}; weights beyond "
                f"{MAX_WEIGHT:g} overflow float32 when squared"
            )


def config_difference(expected: ModelConfig, got: ModelConfig) -> str:
    """'d_model=16 (expected 8), ...' for the fields where `got` differs ('' if none)."""
    mine, theirs = expected.to_dict(), got.to_dict()
    diff = {k: (theirs.get(k), mine.get(k)) for k in mine if mine.get(k) != theirs.get(k)}
    return ", ".join(f"{k}={a!r} (expected {b!r})" for k, (a, b) in diff.items())


def model_from_checkpoint(
    ckpt: Checkpoint, device: str | torch.device | None = None
) -> MarkovTransformer:
    """A model (eval mode, on `device`) holding the checkpoint's weights and config."""
    device = resolve_device(device)
    # The skeleton gets the paper init: every parameter is replaced by the loaded weights (an
    # init "theta_pi" would need the chain's pi, which a checkpoint does not hold).
    skeleton = dataclasses.replace(ckpt.config, init="paper")
    with torch.device("meta"):  # check the shapes before allocating what the config asks
        check_weights_match(MarkovTransformer(skeleton), ckpt.weights)
    check_weights_values(ckpt.weights, ckpt.path)
    model = MarkovTransformer(skeleton)
    model.cfg.init = ckpt.config.init  # the model's own cfg (shared by its submodules)
    dtypes = {v.dtype for v in ckpt.weights.values() if v.is_floating_point()}
    if len(dtypes) == 1:  # keep the saved precision (load_state_dict would cast to float32)
        model = model.to(dtypes.pop())
    model.load_state_dict(ckpt.weights, strict=True)
    return model.to(device).eval()
