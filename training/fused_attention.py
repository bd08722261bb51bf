"""Fused causal attention with an optional window, for the model's fast path.

``fused_attention(q, k, v, window)`` = softmax(q k^T / sqrt(d_head) + mask) v, where query i
sees keys i - window .. i (window None: 0 .. i), without materialising the [pos, pos] scores:

- on a CPU in float32: a compiled kernel (banded_attention.c, built with the system C
  compiler on first use and cached; forward and backward fused, the band's upper triangle
  skipped, so a window of M costs O(N * M)). Its register blocking follows the instruction
  set it is compiled for (AVX-512, AVX2/FMA, or a portable build for NEON and the rest);
  $MARKOV_LENS_KERNEL_MARCH sets the -march (default native; x86-64-v3 builds the AVX2 path
  on an AVX-512 machine). It works under ``torch.func.vmap`` (a vmap rule folds the vmapped
  dimension into the rows) and under double backward (create_graph: the gradient is then
  recomputed with differentiable torch ops). MARKOV_LENS_KERNEL=0 turns it off;
- otherwise (CUDA, or no compiler): the band by ``unfold`` when the window is short, else
  ``torch.nn.functional.scaled_dot_product_attention``.

Which of the two runs is measured, never assumed: on first use per shape class (``choose``)
both are timed and the faster one is cached beside the compiled library, keyed by the CPU,
flags and torch version; ``kernel_info()`` says which build runs and every choice made.

MarkovTransformer's Attention takes this path when nothing watches hook_attn_scores or
hook_pattern (``uses_fused``); its explicit path is the reference, and the tests hold the
two equal (1e-6 in float32) over windows, lengths and depths, for every build this CPU runs.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from training import machine
from training.machine import cpu_id, cpu_model

SOURCE = Path(__file__).with_name("banded_attention.c")
# -ffast-math for the compile step only (1.5x faster here): linked with it, GCC 12 adds
# crtfastmath.o, whose constructor turns on flush-to-zero for the whole process.
CFLAGS = ["-O3", "-ffast-math", "-fopenmp", "-fPIC"]
WIDE = ["-mprefer-vector-width=512"]  # only where the target has AVX-512
LDFLAGS = ["-shared", "-fopenmp"]
BAND_MAX_FRACTION = 0.25  # without the kernel: windows up to this fraction of N use the band
MARCH_ENV = "MARKOV_LENS_KERNEL_MARCH"  # the -march of the default build ("native")
CHOICE_ENV = "MARKOV_LENS_ATTENTION"  # "measure" (default), "kernel" or "torch"
CHOICES = ("measure", "kernel", "torch")
MEASURE_ROWS = 32  # rows timed per shape class (the time is linear in rows for both paths)


@dataclass(frozen=True)
class KernelBuild:
    """One compiled build of banded_attention.c: its -march, the register blocking it chose
    (``isa``: avx512 / avx2 / neon / portable; ``tile`` keys a vector, ``query_block``
    queries, ``d_chunk`` head dims per accumulator block), which source it was built from
    (``source``: the first 8 hex digits of the C file's SHA-256, so a changed kernel gives
    another machine fingerprint) and where it lives."""

    lib: ctypes.CDLL = field(repr=False, compare=False)
    path: Path
    march: str
    isa: str
    tile: int
    query_block: int
    d_chunk: int
    source: str

    def describe(self) -> str:
        return (
            f"{self.isa} build (-march={self.march}: {self.tile} keys a vector, "
            f"{self.query_block} queries x {self.d_chunk} dims a block; source {self.source})"
        )


_builds: dict[str, KernelBuild | None] = {}
_status: dict[str, str] = {}
_choices: dict[tuple, tuple[str, str]] = {}


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "markov-lens"


def _targets_avx512(compiler: str, march: str) -> bool:
    """Does -march=`march` define __AVX512F__ (asked of the compiler's preprocessor)?"""
    proc = subprocess.run(
        [compiler, f"-march={march}", "-dM", "-E", "-x", "c", os.devnull],
        capture_output=True,
        text=True,
    )
    return proc.returncode == 0 and "__AVX512F__" in proc.stdout


def _flags(compiler: str, march: str) -> list[str]:
    wide = WIDE if _targets_avx512(compiler, march) else []
    return [*CFLAGS, f"-march={march}", *wide]


def _build(compiler: str, march: str = "native") -> tuple[Path, str]:
    """Compile the kernel into the cache (atomically: concurrent builds are harmless); the
    library's path and the first 8 hex digits of its source's SHA-256."""
    probe = subprocess.run([compiler, "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise RuntimeError(f"the C compiler {compiler!r} does not run")
    flags = _flags(compiler, march)
    source = SOURCE.read_text()
    digest = hashlib.sha256(source.encode()).hexdigest()[:8]
    key = hashlib.sha256(
        "\0".join([source, " ".join(flags + LDFLAGS), probe.stdout, cpu_id()]).encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"banded_attention-{key}.so"
    if target.exists():
        return target, digest
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, out = Path(tmp) / "kernel.o", Path(tmp) / target.name
        for cmd in (
            [compiler, *flags, "-c", str(SOURCE), "-o", str(obj)],
            [compiler, *LDFLAGS, str(obj), "-o", str(out), "-lm"],
        ):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                errors = [ln for ln in proc.stderr.splitlines() if "error" in ln] or ["failed"]
                raise RuntimeError(f"{compiler} {errors[0].strip()}")
        os.replace(out, target)
    return target, digest


def load_kernel(march: str | None = None) -> KernelBuild | None:
    """The kernel built for `march` (default: $MARKOV_LENS_KERNEL_MARCH or "native"), compiled
    on first use; None (with one warning, reason in ``kernel_status``) where it cannot be."""
    march = march or os.environ.get(MARCH_ENV) or "native"
    if march in _builds:
        return _builds[march]
    build = None
    if os.environ.get("MARKOV_LENS_KERNEL", "1") == "0":
        _status[march] = "off (MARKOV_LENS_KERNEL=0)"
    else:
        compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
        try:
            if compiler is None:
                raise RuntimeError("no C compiler (gcc or cc) on PATH")
            path, source = _build(compiler, march)
            lib = ctypes.CDLL(str(path))
            i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
            lib.attention_forward.argtypes = [ptr] * 5 + [i64] * 4 + [f32, ctypes.c_int]
            lib.attention_backward.argtypes = [ptr] * 9 + [i64] * 4 + [f32, ctypes.c_int]
            lib.attention_forward.restype = lib.attention_backward.restype = None
            lib.kernel_isa.restype = ctypes.c_char_p
            build = KernelBuild(
                lib,
                path,
                march,
                lib.kernel_isa().decode(),
                lib.kernel_tile(),
                lib.kernel_query_block(),
                lib.kernel_d_chunk(),
                source,
            )
            _status[march] = "loaded"
        except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as err:
            _status[march] = f"unavailable ({err}); using torch's attention"
            warnings.warn(f"markov-lens attention kernel {_status[march]}", stacklevel=3)
    _builds[march] = build
    return build


def _load() -> KernelBuild | None:
    return load_kernel()


def kernel_status() -> str:
    """'loaded', or why the compiled CPU kernel is not used."""
    march = os.environ.get(MARCH_ENV) or "native"
    load_kernel(march)
    return _status[march]


def kernel_info() -> dict[str, Any]:
    """Which kernel build runs here and how ``auto`` chose per shape class: the CPU, the
    build's ISA and blocking, the choice rule ($MARKOV_LENS_ATTENTION) and every decision
    made in this process (shape class -> choice, why)."""
    build = _load()
    return {
        "cpu": cpu_model(),
        "status": kernel_status(),
        "build": build.describe() if build else None,
        "library": str(build.path) if build else None,
        "rule": _choice_rule(),
        "decisions": {
            ", ".join(f"{k}={v}" for k, v in zip(SHAPE_FIELDS, key[1:], strict=True)): why
            for key, (_, why) in _choices.items()
        },
    }


def fingerprint() -> dict[str, Any]:
    """training.machine.fingerprint with the kernel build this process runs."""
    build = _load()
    return machine.fingerprint(build.describe() if build else None)


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


class BandedAttention(torch.autograd.Function):
    """The compiled kernel as an autograd Function on rows [R, N, D] (float32, CPU, D a
    multiple of 4); returns (o [R, N, D], lse [R, N])."""

    @staticmethod
    def forward(
        q: Tensor, k: Tensor, v: Tensor, window: int | None, scale: float, build: KernelBuild
    ) -> tuple[Tensor, Tensor]:
        R, N, _ = q.shape
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o = torch.empty_like(q)
        lse = torch.empty(R, N, dtype=q.dtype)
        w = -1 if window is None else min(window, N)
        args = (*q.shape, w, scale, torch.get_num_threads())
        build.lib.attention_forward(*map(_ptr, (q, k, v, o, lse)), *args)
        return o, lse

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        q, k, v, window, scale, build = inputs
        o, lse = output
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.window, ctx.scale, ctx.build = window, scale, build
        ctx.mark_non_differentiable(lse)

    @staticmethod
    def backward(ctx, do: Tensor, _dlse: Tensor):
        q, k, v, o, lse = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a gradient that can be differentiated again
            with torch.enable_grad():
                z = reference_attention(q, k, v, ctx.window, ctx.scale)
                dq, dk, dv = torch.autograd.grad(z, (q, k, v), do, create_graph=True)
            return dq, dk, dv, None, None, None
        R, N, _ = q.shape
        q, k, v, o, do = (t.contiguous() for t in (q, k, v, o, do))
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        w = -1 if ctx.window is None else min(ctx.window, N)
        args = (*q.shape, w, ctx.scale, torch.get_num_threads())
        ctx.build.lib.attention_backward(*map(_ptr, (q, k, v, o, lse, do, dq, dk, dv)), *args)
        return dq, dk, dv, None, None, None

    @staticmethod
    def vmap(info, in_dims, q, k, v, window, scale, build):
        """Fold the vmapped dimension into the rows: one kernel call for all of it."""
        size = info.batch_size
        flat = []
        for t, d in zip((q, k, v), in_dims[:3], strict=True):
            t = t.expand(size, *t.shape) if d is None else t.movedim(d, 0)
            flat.append(t.reshape(size * t.shape[1], *t.shape[2:]))
        o, lse = BandedAttention.apply(*flat, window, scale, build)
        return (o.unflatten(0, (size, -1)), lse.unflatten(0, (size, -1))), (0, 0)


SHAPE_FIELDS = ("rows", "pos", "d_head", "window", "grad", "threads")


def _choice_rule() -> str:
    rule = os.environ.get(CHOICE_ENV, "measure")
    if rule not in CHOICES:
        raise ValueError(f"{CHOICE_ENV} must be one of {CHOICES}, got {rule!r}")
    return rule


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def shape_class(n: int, d: int, window: int | None, grad: bool, rows: int = MEASURE_ROWS) -> tuple:
    """What the kernel-vs-torch decision is cached by: rows (batch x heads, capped at
    MEASURE_ROWS) and positions rounded up to a power of two, d_head, the window's class
    (None, or its width rounded up to a power of two, or "wide" past the unfolded band's
    reach), whether a backward follows, and the thread count."""
    pos = _pow2(n)
    if window is None:
        w: int | str | None = None
    elif window + 1 > BAND_MAX_FRACTION * n:
        w = "wide"
    else:
        w = 1 << max(0, window.bit_length())
    return (_pow2(min(rows, MEASURE_ROWS)), pos, d, w, grad, torch.get_num_threads())


def _time(fn, repeats: int = 3) -> float:
    fn()  # warm-up (first touch, lazy init)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _measure(build: KernelBuild, key: tuple) -> tuple[str, str]:
    """Time the kernel and torch's attention on this shape class (forward, plus backward
    when grad): the faster one, and a line saying so."""
    rows, pos, d, w, grad, _ = key
    window = {None: None, "wide": pos // 2}.get(w, w - 1 if isinstance(w, int) else None)
    # deterministic inputs, not random draws: the choice may be made inside torch.func.vmap,
    # whose randomness check refuses random ops
    grid = torch.arange(4 * rows * pos * d, dtype=torch.float32).view(4, rows, pos, d)
    q, k, v, do = (grid * 0.6180339887).sin().unbind(0)
    scale = 1 / math.sqrt(d)

    def step(kernel: bool):
        def run():
            qq, kk, vv = (t.requires_grad_(grad) for t in (q, k, v))
            with torch.enable_grad() if grad else torch.no_grad():
                if kernel:
                    z = BandedAttention.apply(qq, kk, vv, window, scale, build)[0]
                else:
                    z = _torch_attention(qq, kk, vv, window)
                if grad:
                    torch.autograd.grad(z, (qq, kk, vv), do)

        return run

    # timed in a thread of its own: torch.func transforms, grad and inference modes are
    # thread-local, so a choice made inside vmap or no_grad times plain eager autograd
    times: list[float] = []
    worker = threading.Thread(target=lambda: times.extend((_time(step(True)), _time(step(False)))))
    worker.start()
    worker.join()
    if len(times) != 2:
        raise RuntimeError("timing the attention paths failed")
    t_kernel, t_torch = times
    choice = "kernel" if t_kernel < t_torch else "torch"
    what = "forward + backward" if grad else "forward"
    why = (
        f"{choice}: measured {what} on {rows} x {pos} x {d}, kernel "
        f"{1e3 * t_kernel:.2f} ms vs torch {1e3 * t_torch:.2f} ms ({build.isa} build)"
    )
    return choice, why


def _decision_file(build: KernelBuild) -> Path:
    return build.path.with_name(f"{build.path.stem}-torch{torch.__version__}-choices.json")


def choose(
    n: int, d: int, window: int | None, grad: bool, rows: int = MEASURE_ROWS
) -> tuple[str, str]:
    """("kernel" | "torch", why) for attention of this shape on this CPU. Rule
    $MARKOV_LENS_ATTENTION: "measure" (default: time both once per shape class, as cuDNN's
    benchmark mode does, and cache the choice beside the compiled library, keyed by CPU,
    flags and torch version), "kernel" or "torch" (forced)."""
    build = _load()
    if build is None:
        return "torch", f"torch: kernel {kernel_status()}"
    rule = _choice_rule()
    if rule != "measure":
        return rule, f"{rule}: forced by {CHOICE_ENV}={rule}"
    key = (build.path.name, *shape_class(n, d, window, grad, rows))
    if key in _choices:
        return _choices[key]
    path = _decision_file(build)
    name = ",".join(map(str, key[1:]))
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    if isinstance(saved, dict) and isinstance(saved.get(name), list) and len(saved[name]) == 2:
        _choices[key] = (str(saved[name][0]), str(saved[name][1]) + " (cached)")
        return _choices[key]
    _choices[key] = _measure(build, key[1:])
    saved = saved if isinstance(saved, dict) else {}
    saved[name] = list(_choices[key])
    try:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(saved, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: the choice holds for this process
    return _choices[key]


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


def _torch_attention(q: Tensor, k: Tensor, v: Tensor, window: int | None) -> Tensor:
    """torch's own operations: the unfolded band for short windows, else SDPA."""
    n = q.shape[-2]
    if window is not None and window + 1 <= BAND_MAX_FRACTION * n:
        return _band_unfold(q, k, v, window)
    if window is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(n, window, q.device))


def fused_attention(
    q: Float[Tensor, "*rows pos d_head"],
    k: Float[Tensor, "*rows pos d_head"],
    v: Float[Tensor, "*rows pos d_head"],
    window: int | None,
    kernel: str | bool = "auto",
) -> Float[Tensor, "*rows pos d_head"]:
    """reference_attention without the [pos, pos] scores (see the module docstring).
    kernel: "auto" (the compiled kernel where ``choose`` measured it faster for this shape),
    "kernel" (the compiled kernel wherever it applies), "torch" or False (torch's own
    operations only: SDPA, or the unfolded band); True means "auto"."""
    kernel = {True: "auto", False: "torch"}.get(kernel, kernel)
    if kernel not in ("auto", "kernel", "torch"):
        raise ValueError(f"kernel must be 'auto', 'kernel' or 'torch', got {kernel!r}")
    n, d = q.shape[-2:]
    if window is not None and window >= n - 1:
        window = None  # the band covers every earlier position: plain causal attention
    applies = kernel != "torch" and q.device.type == "cpu" and q.dtype == torch.float32
    if applies and _load() is not None:
        pad = -d % 4  # the kernel takes d_head in multiples of 4
        rows = q.shape[:-2]
        grad = q.requires_grad and torch.is_grad_enabled()
        if kernel == "kernel" or choose(n, d + pad, window, grad, rows.numel())[0] == "kernel":
            flat = [
                F.pad(t.reshape(-1, n, d), (0, pad)) if pad else t.reshape(-1, n, d)
                for t in (q, k, v)
            ]
            z = BandedAttention.apply(*flat, window, 1 / math.sqrt(d), _load())[0]
            return z[..., :d].reshape(*rows, n, d)
    return _torch_attention(q, k, v, window)


def uses_fused(q: Tensor) -> bool:
    """Whether the fused path may compute attention for q: not under a torch.func grad or jvp
    transform (vmap is fine) and, on a CPU, only float32 (other dtypes are for analysis:
    float64 Hessians take the explicit path)."""
    if under_grad_transform(q):
        return False
    return q.device.type != "cpu" or q.dtype == torch.float32
