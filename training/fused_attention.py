"""Fused causal attention with an optional window, for the model's fast path.

``fused_attention(q, k, v, window)`` = softmax(q k^T / sqrt(d_head) + mask) v, where query i
sees keys i - window .. i (window None: 0 .. i), without materialising the [pos, pos] scores:

- on a CPU in float32: a compiled kernel (banded_attention.c, built with the system C
  compiler on first use and cached; forward and backward fused, the band's upper triangle
  skipped, so a window of M costs O(N * M)). ``kernel_status()`` says whether it loaded and
  why not; MARKOV_LENS_KERNEL=0 turns it off. It works under ``torch.func.vmap`` (a vmap
  rule folds the vmapped dimension into the rows) and under double backward (create_graph:
  the gradient is then recomputed with differentiable torch ops);
- otherwise (CUDA, or no compiler): the band by ``unfold`` when the window is short, else
  ``torch.nn.functional.scaled_dot_product_attention``.

MarkovTransformer's Attention takes this path when nothing watches hook_attn_scores or
hook_pattern (``uses_fused``); its explicit path is the reference, and the tests hold the
two equal (1e-6 in float32) over windows, lengths and depths.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

SOURCE = Path(__file__).with_name("banded_attention.c")
# -ffast-math for the compile step only (1.5x faster here): linked with it, GCC 12 adds
# crtfastmath.o, whose constructor turns on flush-to-zero for the whole process.
CFLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp", "-fPIC"]
LDFLAGS = ["-shared", "-fopenmp"]
BAND_MAX_FRACTION = 0.25  # without the kernel: windows up to this fraction of N use the band

_lib: ctypes.CDLL | None = None
_status: str | None = None


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "markov-lens"


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _build(compiler: str) -> Path:
    """Compile the kernel into the cache (atomically: concurrent builds are harmless)."""
    probe = subprocess.run([compiler, "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise RuntimeError(f"the C compiler {compiler!r} does not run")
    version = probe.stdout
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), " ".join(CFLAGS + LDFLAGS), version, _cpu_id()]).encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"banded_attention-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, out = Path(tmp) / "kernel.o", Path(tmp) / target.name
        for cmd in (
            [compiler, *CFLAGS, "-c", str(SOURCE), "-o", str(obj)],
            [compiler, *LDFLAGS, str(obj), "-o", str(out), "-lm"],
        ):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                errors = [ln for ln in proc.stderr.splitlines() if "error" in ln] or ["failed"]
                raise RuntimeError(f"{compiler} {errors[0].strip()}")
        os.replace(out, target)
    return target


def _load() -> ctypes.CDLL | None:
    global _lib, _status
    if _status is not None:
        return _lib
    if os.environ.get("MARKOV_LENS_KERNEL", "1") == "0":
        _status = "off (MARKOV_LENS_KERNEL=0)"
        return None
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    try:
        if compiler is None:
            raise RuntimeError("no C compiler (gcc or cc) on PATH")
        lib = ctypes.CDLL(str(_build(compiler)))
        i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
        lib.attention_forward.argtypes = [ptr] * 5 + [i64] * 5 + [f32, ctypes.c_int]
        lib.attention_backward.argtypes = [ptr] * 9 + [i64] * 5 + [f32, ctypes.c_int]
        lib.attention_forward.restype = lib.attention_backward.restype = None
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        _status = f"unavailable ({err}); using torch's attention"
        warnings.warn(f"markov-lens attention kernel {_status}", stacklevel=3)
        return None
    _lib, _status = lib, "loaded"
    return _lib


def kernel_status() -> str:
    """'loaded', or why the compiled CPU kernel is not used."""
    _load()
    return str(_status)


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


TILE = 16  # keys per vector in banded_attention.c


def _key_major(t: Float[Tensor, "R N D"], NP: int) -> Float[Tensor, "R D NP"]:
    """t transposed to [R, D, NP], zero-padded along the keys (the kernel's layout)."""
    out = t.new_zeros(t.shape[0], t.shape[2], NP)
    out[:, :, : t.shape[1]] = t.transpose(1, 2)
    return out


class BandedAttention(torch.autograd.Function):
    """The compiled kernel as an autograd Function on rows [R, N, D] (float32, CPU, D a
    multiple of 4); returns (o [R, N, D], lse [R, N])."""

    @staticmethod
    def forward(
        q: Tensor, k: Tensor, v: Tensor, window: int | None, scale: float
    ) -> tuple[Tensor, Tensor]:
        R, N, D = q.shape
        NP = -(-N // TILE) * TILE + TILE
        q = q.contiguous()
        kt, vt = _key_major(k, NP), _key_major(v, NP)
        o = torch.empty_like(q)
        lse = torch.empty(R, N, dtype=q.dtype)
        w = -1 if window is None else min(window, N)
        args = (R, N, NP, D, w, scale, torch.get_num_threads())
        _load().attention_forward(*map(_ptr, (q, kt, vt, o, lse)), *args)
        return o, lse

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        q, k, v, window, scale = inputs
        o, lse = output
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.window, ctx.scale = window, scale
        ctx.mark_non_differentiable(lse)

    @staticmethod
    def backward(ctx, do: Tensor, _dlse: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        q, k, v, o, lse = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a gradient that can be differentiated again
            with torch.enable_grad():
                z = reference_attention(q, k, v, ctx.window, ctx.scale)
                dq, dk, dv = torch.autograd.grad(z, (q, k, v), do, create_graph=True)
            return dq, dk, dv, None, None
        R, N, D = q.shape
        NP = -(-N // TILE) * TILE + TILE
        q, o, do = q.contiguous(), o.contiguous(), do.contiguous()
        kt, vt = _key_major(k, NP), _key_major(v, NP)
        dq, dkt, dvt = torch.empty_like(q), torch.empty_like(kt), torch.empty_like(vt)
        w = -1 if ctx.window is None else min(ctx.window, N)
        args = (R, N, NP, D, w, ctx.scale, torch.get_num_threads())
        _load().attention_backward(*map(_ptr, (q, kt, vt, o, lse, do, dq, dkt, dvt)), *args)
        return dq, dkt[:, :, :N].transpose(1, 2), dvt[:, :, :N].transpose(1, 2), None, None

    @staticmethod
    def vmap(info, in_dims, q, k, v, window, scale):
        """Fold the vmapped dimension into the rows: one kernel call for all of it."""
        size = info.batch_size
        flat = []
        for t, d in zip((q, k, v), in_dims[:3], strict=True):
            t = t.expand(size, *t.shape) if d is None else t.movedim(d, 0)
            flat.append(t.reshape(size * t.shape[1], *t.shape[2:]))
        o, lse = BandedAttention.apply(*flat, window, scale)
        return (o.unflatten(0, (size, -1)), lse.unflatten(0, (size, -1))), (0, 0)


def reference_attention(
    q: Float[Tensor, "*rows pos d_head"],
    k: Float[Tensor, "*rows pos d_head"],
    v: Float[Tensor, "*rows pos d_head"],
    window: int | None,
    scale: float | None = None,
) -> Float[Tensor, "*rows pos d_head"]:
    """softmax(scale q k^T + mask) v with the [pos, pos] scores materialised (scale:
    1 / sqrt(d_head) by default)."""
    n = q.shape[-2]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale
    return scores.masked_fill(~band_mask(n, window, q.device), float("-inf")).softmax(-1) @ v


def band_mask(n: int, window: int | None, device: torch.device | str = "cpu") -> Tensor:
    """Boolean [n, n]: query i may attend to key j iff i - window <= j <= i."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & (j >= i - window)
    return allowed


def _band_unfold(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """The band by unfold: each query's window + 1 keys gathered, O(N * window) memory."""
    n, w = q.shape[-2], window + 1
    pad = (0, 0, window, 0)
    kb = F.pad(k, pad).unfold(-2, w, 1)  # [..., N, D, w]: keys i - window .. i
    vb = F.pad(v, pad).unfold(-2, w, 1)
    scores = torch.einsum("...nd,...ndw->...nw", q, kb) / math.sqrt(q.shape[-1])
    offsets = torch.arange(n, device=q.device)[:, None] - window + torch.arange(w, device=q.device)
    scores = scores.masked_fill(offsets < 0, float("-inf"))
    return torch.einsum("...nw,...ndw->...nd", scores.softmax(-1), vb)


def under_grad_transform(t: Tensor) -> bool:
    """Is t wrapped by a torch.func transform other than vmap (grad, jacrev, jvp, ...)?"""
    fn = torch._C._functorch
    while fn.is_functorch_wrapped_tensor(t):
        if not fn.is_batchedtensor(t):
            return True
        t = fn.get_unwrapped(t)
    return False


def fused_attention(
    q: Float[Tensor, "*rows pos d_head"],
    k: Float[Tensor, "*rows pos d_head"],
    v: Float[Tensor, "*rows pos d_head"],
    window: int | None,
    kernel: bool = True,
) -> Float[Tensor, "*rows pos d_head"]:
    """reference_attention without the [pos, pos] scores (see the module docstring);
    kernel=False: torch's own operations only (SDPA, or the unfolded band)."""
    n, d = q.shape[-2:]
    if window is not None and window >= n - 1:
        window = None  # the band covers every earlier position: plain causal attention
    if kernel and q.device.type == "cpu" and q.dtype == torch.float32 and _load() is not None:
        rows, pad = q.shape[:-2], -d % 4  # the kernel takes d_head in multiples of 4
        flat = [
            F.pad(t.reshape(-1, n, d), (0, pad)) if pad else t.reshape(-1, n, d) for t in (q, k, v)
        ]
        z = BandedAttention.apply(*flat, window, 1 / math.sqrt(d))[0]
        return z[..., :d].reshape(*rows, n, d)
    if window is not None and window + 1 <= BAND_MAX_FRACTION * n:
        return _band_unfold(q, k, v, window)
    if window is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(n, window, q.device))


def uses_fused(q: Tensor) -> bool:
    """Whether the fused path may compute attention for q: not under a torch.func grad or jvp
    transform (vmap is fine) and, on a CPU, only float32 (other dtypes are for analysis:
    float64 Hessians take the explicit path)."""
    if under_grad_transform(q):
        return False
    return q.device.type != "cpu" or q.dtype == torch.float32
