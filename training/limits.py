"""Limits: what a size asks of the machine, checked before anything is allocated.

Three kinds of guard, each raising ``TooLarge`` (a ValueError: the CLI prints one line and
exits 2) with the number it refused:

- hard caps (``MAX_*``) on sizes that no run here could use and that would otherwise build
  for minutes or overflow (``ModelConfig.validate`` and ``TrainConfig.validate`` apply them);
- a memory estimate (``Estimate``: parameters, optimiser state, activations of forward and
  backward, the [pos, pos] attention scores where the explicit branch runs, data buffers),
  compared by ``check_fits`` with the memory the machine has available now (/proc/meminfo
  MemAvailable; os.sysconf where there is none; a CUDA device's free memory for CUDA).
  ``allow_large()`` (the CLI's ``--allow-large``; the MARKOV_LENS_ALLOW_LARGE=1 environment
  variable it sets reaches sweep workers too) skips this one check, for those who know better;
- inputs: ``read_input_file`` reads only regular files (a FIFO or a device would block or
  never end) of at most ``MAX_INPUT_BYTES``, and ``check_plain_data`` walks a parsed
  YAML/JSON document: no cycles (recursive anchors), string keys, at most ``MAX_NODES`` nodes
  counted with every alias expanded (a billion-laughs file stops at the cap), integers of
  at most ``MAX_INT_BITS`` bits; the message names the offending path.

It lives in ``training`` (imports flow interp -> probes -> training) so that the configs,
the trainer and the sweep loader use it as the command line does.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --- hard caps: values that build in about a second on a CPU, far beyond any run here ----
MAX_LAYERS = 1024  # 1024 blocks of d_model 8 build in about 1 s on a CPU; 100000 in minutes
MAX_D_MODEL = 8192
MAX_D_HEAD = 8192
MAX_HEADS = 1024
MAX_D_MLP = 4 * MAX_D_MODEL
MAX_VOCAB = 1 << 16
MAX_N_CTX = 1 << 20  # positions (and the training sequence length)
MAX_PARAMETERS = 10**9  # about 4 GB of float32 weights
MAX_BATCH = 1 << 20
MAX_ITERS = 10**9
MAX_EVAL_BATCHES = 100_000
MAX_CHECKPOINTS_PER_OCTAVE = 64  # 64 per doubling already keeps every step below ~90
MAX_SEQUENCES = 10**8  # sequences of one analysis or Monte Carlo estimate
MAX_TOKENS = 10**9  # tokens of one analysis or Monte Carlo estimate (sequences x length)
MAX_POINTS = 1001  # points per line / side of a loss surface (a surface costs points^2)
# --- inputs -------------------------------------------------------------------------------
MAX_INPUT_BYTES = 16 << 20  # a spec, config or kernel file
MAX_NODES = 1_000_000  # values in one parsed document, aliases expanded
MAX_INT_BITS = 100  # an integer in a spec (about 30 digits; seeds go to 2^63 - 1)

ALLOW_LARGE_ENV = "MARKOV_LENS_ALLOW_LARGE"
ALLOW_LARGE_HINT = "pass --allow-large (or set MARKOV_LENS_ALLOW_LARGE=1) to try anyway"
FLOAT32 = 4
INT64 = 8


class TooLarge(ValueError):
    """A size refused before allocation: the message names it and the limit."""


def check_cap(name: str, value: Any, maximum: int) -> None:
    """TooLarge when ``value`` (an int) exceeds ``maximum``: ``name`` is the field or flag."""
    if isinstance(value, int) and not isinstance(value, bool) and value > maximum:
        shown = f"{name} {value}" if name.startswith("-") else f"{name}={value}"
        raise TooLarge(f"{shown} is above the cap {maximum:,}")


# ------------------------------------------------------------------------------ memory


def format_bytes(n: float) -> str:
    """``n`` bytes as "1.5 GB" (powers of 1024: KB, MB, GB, TB, PB)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            break
        n /= 1024
    if unit == "TB" and abs(n) >= 1024:
        return f"{n / 1024:.3g} PB"
    return f"{n:.0f} bytes" if unit == "bytes" else f"{n:.3g} {unit}"


def available_memory(device: Any = None) -> int:
    """Bytes the machine can give now: MemAvailable of /proc/meminfo (os.sysconf's available
    pages where it is missing); for a CUDA device, its free memory."""
    if device is not None and str(device).startswith(("cuda", "auto")):
        import torch

        if torch.cuda.is_available():
            name = "cuda" if str(device) == "auto" else str(device)
            return int(torch.cuda.mem_get_info(torch.device(name))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: only the hard caps apply


def large_allowed() -> bool:
    """Whether ``allow_large()`` (or MARKOV_LENS_ALLOW_LARGE=1) is in force."""
    return os.environ.get(ALLOW_LARGE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def allow_large(enabled: bool = True) -> Iterator[None]:
    """Within the block, ``check_fits`` passes whatever the estimate (hard caps still apply).
    It sets MARKOV_LENS_ALLOW_LARGE, so worker processes started inside inherit it."""
    old = os.environ.get(ALLOW_LARGE_ENV)
    if enabled:
        os.environ[ALLOW_LARGE_ENV] = "1"
    try:
        yield
    finally:
        if enabled:
            if old is None:
                os.environ.pop(ALLOW_LARGE_ENV, None)
            else:
                os.environ[ALLOW_LARGE_ENV] = old


@dataclass
class Estimate:
    """Bytes a computation needs, by part ("parameters", "activations", "data", ...)."""

    parts: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))

    def describe(self) -> str:
        shown = [f"{k} {format_bytes(v)}" for k, v in self.parts.items() if v >= 1 << 20]
        return format_bytes(self.total) + (f" ({', '.join(shown)})" if shown else "")


def check_fits(estimate: Estimate, what: str, device: Any = None) -> None:
    """TooLarge when ``estimate`` exceeds the memory available (``available_memory``), unless
    ``allow_large()`` is in force. ``what`` names the computation ("training", "--n-seqs
    1000000000 sequences of 8 tokens")."""
    if large_allowed():
        return
    free = available_memory(device)
    if estimate.total > free:
        where = "this machine has"
        if device is not None and str(device).startswith(("cuda", "auto")):
            import torch

            where = "this GPU has" if torch.cuda.is_available() else where
        raise TooLarge(
            f"{what} needs about {estimate.describe()}; {where} {format_bytes(free)} "
            f"available; {ALLOW_LARGE_HINT}"
        )


def parameter_count(cfg) -> int:
    """Parameters of a MarkovTransformer with ModelConfig ``cfg`` (weights and biases)."""
    d, L, H, dh, dm, V, N = (
        cfg.d_model,
        cfg.n_layers,
        cfg.n_heads,
        cfg.d_head,
        cfg.d_mlp,
        cfg.d_vocab,
        cfg.n_ctx,
    )
    attn = 4 * H * dh * d + (3 * H * dh + d if cfg.linear_bias else 0)
    mlp = 0 if cfg.attn_only else 2 * d * dm + (dm + d if cfg.linear_bias else 0)
    n_norms = L * (1 if cfg.attn_only else 2) + 1  # ln1 (and ln2) per block, ln_final
    norms = (2 if cfg.ln_bias else 1) * d * n_norms if cfg.normalization_type else 0
    embed = V * d + (N * d if cfg.positional_embedding_type == "standard" else 0)
    unembed = (0 if cfg.tie_embeddings else d * V) + (V if cfg.unembed_bias else 0)
    return L * (attn + mlp) + norms + embed + unembed


def activation_floats(cfg, seq_len: int, explicit: bool, backward: bool) -> float:
    """Floats held per sequence by one forward pass (and its backward: the saved tensors and
    their gradients): the residual stream, q/k/v/z, the MLP's hidden layer and, where the
    explicit attention branch runs, each head's [pos, pos] scores and pattern."""
    d, H, dh, dm, V = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab
    mlp = 0 if cfg.attn_only else 2 * dm
    per_layer = seq_len * (8 * d + 4 * H * dh + mlp)
    if explicit:  # scores and pattern, [pos, pos] per head (a window only masks them)
        per_layer += 2 * H * seq_len * seq_len
    total = cfg.n_layers * per_layer + seq_len * (3 * d + 2 * V)
    return total * (2 if backward else 1)


def training_estimate(model_cfg, train_cfg, members: int = 1) -> Estimate:
    """One run (or a stack of ``members``) trained with TrainConfig ``train_cfg``: weights,
    gradients and AdamW's two moments; activations of one batch, forward and backward
    (the explicit attention branch when ``train_cfg.fused_attention`` is false); the
    held-out evaluation tokens and one training batch (int64)."""
    params = parameter_count(model_cfg) * FLOAT32 * members
    explicit = not getattr(train_cfg, "fused_attention", True)
    acts = activation_floats(model_cfg, train_cfg.seq_len + 1, explicit, backward=True)
    tokens = (train_cfg.eval_batches + 2) * train_cfg.batch * (train_cfg.seq_len + 1) * INT64
    return Estimate(
        {
            "parameters and AdamW state": float(4 * params),
            "activations": float(acts * train_cfg.batch * FLOAT32 * members),
            "data": float(tokens * members),
        }
    )


def analysis_estimate(
    model_cfg,
    n_seqs: int,
    seq_len: int,
    *,
    copies: int = 2,
    backward: bool = False,
    bytes_per_float: int = FLOAT32,
    batch: int | None = None,
) -> Estimate:
    """An analysis of ``n_seqs`` sequences of ``seq_len`` tokens: the tokens (int64, ``copies``
    batches: clean and corrupted) and every activation of a cached forward pass (explicit
    attention branch) over ``batch`` sequences at once (default: all of them)."""
    at_once = n_seqs if batch is None else min(batch, n_seqs)
    acts = activation_floats(model_cfg, seq_len, explicit=True, backward=backward)
    return Estimate(
        {
            "parameters": float(parameter_count(model_cfg) * bytes_per_float),
            "activations": float(acts * at_once * bytes_per_float * copies),
            "data": float(n_seqs * seq_len * INT64 * copies),
        }
    )


def check_tokens(flags: tuple[str, str], n_seqs: int, seq_len: int) -> None:
    """TooLarge when ``n_seqs`` x ``seq_len`` is beyond MAX_SEQUENCES / MAX_TOKENS (a bound on
    every loop over sequences, checked before it starts); ``flags`` name the two sizes."""
    check_cap(flags[0], n_seqs, MAX_SEQUENCES)
    check_cap(flags[1], seq_len, MAX_N_CTX)
    if n_seqs * seq_len > MAX_TOKENS:
        raise TooLarge(
            f"{flags[0]} {n_seqs:,} x {flags[1]} {seq_len:,} are {n_seqs * seq_len:,} tokens; "
            f"at most {MAX_TOKENS:,}"
        )


# ------------------------------------------------------------------------------- inputs


def read_input_file(path: str | os.PathLike, what: str, max_bytes: int = MAX_INPUT_BYTES) -> str:
    """The text of ``path``, read only if it is a regular file of at most ``max_bytes`` (a
    FIFO would block on open, /dev/zero never end); ``what`` names it in every message
    ("--kernel", "spec file"). FileNotFoundError, or ValueError for anything else."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except (OSError, RuntimeError) as err:  # a symlink loop, a name too long, ...
        raise ValueError(f"{what} {path}: {getattr(err, 'strerror', None) or err}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device or socket"
        raise ValueError(f"{what} {path} is {kind}, not a regular file")
    if info.st_size > max_bytes:
        raise TooLarge(
            f"{what} {path} is {format_bytes(info.st_size)}; at most {format_bytes(max_bytes)}"
        )
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew after stat
        raise TooLarge(f"{what} {path} is over {format_bytes(max_bytes)}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path}: not a text file ({err})") from None


def _where(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "top"


def check_plain_data(doc: Any, source: str) -> None:
    """ValueError unless ``doc`` is plain data: None, bool, int (at most MAX_INT_BITS
    bits, about 30 digits), float, str, lists and string-keyed dicts, without cycles, and at most MAX_NODES
    values counting every alias in full. The message names ``source`` and the path."""
    seen = 0
    stack: list[tuple[Any, tuple, frozenset]] = [(doc, (), frozenset())]
    while stack:
        value, path, ancestors = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise TooLarge(
                f"{source}: more than {MAX_NODES:,} values once its aliases are expanded "
                f"(at {_where(path)}); a spec needs a few hundred"
            )
        if value is None or isinstance(value, (bool, float, str)):
            continue
        if isinstance(value, int):
            if value.bit_length() > MAX_INT_BITS:
                raise ValueError(
                    f"{source}: the integer at {_where(path)} has {value.bit_length()} bits; "
                    f"at most {MAX_INT_BITS} (about 30 digits)"
                )
            continue
        if isinstance(value, (list, dict)):
            if id(value) in ancestors:
                raise ValueError(f"{source}: {_where(path)} contains itself (a recursive anchor)")
            inner = ancestors | {id(value)}
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise ValueError(
                            f"{source}: key {key!r} at {_where(path)} is a "
                            f"{type(key).__name__}; keys must be strings"
                        )
                    stack.append((item, (*path, key), inner))
            else:
                stack.extend((item, (*path, i), inner) for i, item in enumerate(value))
            continue
        raise ValueError(
            f"{source}: the value at {_where(path)} is a {type(value).__name__}; a spec holds "
            "numbers, strings, lists and mappings"
        )
