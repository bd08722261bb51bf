"""The benchmark suite behind ``markov-lens bench``: every speed claim as a measured ratio.

Each comparison runs both of its sides in this process, one after the other, and is printed
as one line ``NAME: A vs B: R.Rx`` where R = time of B / time of A (how many times faster A
is). Nothing is extrapolated: a reduced setting is named in the line. A benchmark never hides
a slower path: every path the package can take for a claim is timed beside it. Besides the
ratios: the machine, torch threads and the load average (other processes share the CPU);
memory: the activations a training step saves for backward (exact, any device) and the peak
of each side (CUDA: torch.cuda.max_memory_allocated; CPU: the resident set sampled every
5 ms, above its level when the side started, so memory the allocator kept from an earlier
side is not seen again); the share of the ensemble's step time spent sampling data; and
tables of how a step's time grows with sequence length, window, ensemble members and depth.

Sections (``run_benchmarks``; modes "full", "quick" (a few minutes on a 2-core CPU) and
"tiny" (seconds, for tests)):

- step: one training update of the paper's model (ModelConfig.paper(): 1 layer, d_model 8,
  1 head, tied; batch 16 x length 1024; fixed tokens, so no sampling: forward, backward,
  AdamW) with each attention backend of the model (``set_attention_backend``): "auto" (the
  compiled fused kernel of training.fused_attention on a CPU), "torch" (a plain PyTorch step
  with SDPA attention) and "explicit" (scores and pattern materialised). Next to it the
  attention FLOP bound of that step on this machine (``attention_flops`` /
  ``matmul_gflops``: the sustained fp32 matmul rate measured here).
- window: the same update (backend "auto") with attention windows M in {2, 8, 32, full} at
  lengths N in {512, 1024, 2048}: a table, and each window's step against full attention.
- ensemble: train_ensemble of K members (different seeds and chains, one shape) vs K
  sequential trainer.train runs, in memory, same configs, at lengths 256 and 1024;
  aggregate training tokens/s, and which of the two paths the sweeps take there
  (training.sweeps.ensemble.stacking_pays) and whether it is the faster one measured.
- sampler: training.sampler_bench (vectorised scan vs the per-position loop).
- patching: a callable given by the caller (interp.cli_bench passes interp.patching_bench;
  training does not import interp).
- reproductions: the training sweeps of the paper's ``tying`` and ``depth`` experiments
  (training.experiments) with the ensemble backend vs a sequential per-run loop (the local
  backend with one worker), and (full mode) both backends with one worker process per core.
- scaling: step time of the ensemble and of one run against length, members and depth.
- startup: wall time of fresh interpreters (median of 5): ``import torch`` vs
  ``markov-lens --help`` and vs ``markov-lens chain --p 0.5 --q 0.8``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.chains import BinaryChain
from training.config import ModelConfig
from training.fused_attention import kernel_status
from training.model import MarkovTransformer, per_token_loss
from training.options import build_run_config
from training.recipe import TrainConfig
from training.stacked import Member, StackedWeights, member_losses, stacked_logits
from training.sweeps.ensemble import ensemble_backend, stacking_pays
from training.trainer import (
    derive_seed,
    make_generator,
    make_optimizer,
    member_batches,
    resolve_device,
    train,
    train_ensemble,
)

MODES = ("full", "quick", "tiny")
SECTIONS = (
    "step",
    "window",
    "ensemble",
    "sampler",
    "patching",
    "reproductions",
    "scaling",
    "startup",
)
# (p, q) of the ensemble members, cycled: the paper's chains on both sides of p + q = 1
CHAINS = ((0.5, 0.8), (0.2, 0.3), (0.6, 0.8), (0.3, 0.4))
# The attention backends of the step section: model backend name -> what it is
STEP_BACKENDS = ("auto", "torch", "explicit")
# The start-up target: a markov-lens command within this factor of `import torch`
STARTUP_TARGET = 1.5

# Per mode: paper step (batch, seq_len, repeats), window grid, ensemble comparison (members,
# seq_lens, iters), sampler (length, repeats), reproductions (experiment size, seeds, iters
# override or None), scaling grids, start-up (repeats, untimed warm-up runs).
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {
        "step": {"batch": 16, "seq_len": 1024, "repeats": 7},
        "window": {
            "batch": 16,
            "seq_lens": [512, 1024, 2048],
            "windows": [2, 8, 32, None],
            "repeats": 5,
        },
        "matmul": {"size": 1024, "repeats": 10},
        "ensemble": {"members": 32, "seq_lens": [256, 1024], "iters": 20},
        "sampler": {"length": 1024, "repeats": 10},
        "reproductions": {"size": "full", "seeds": 3, "iters": None},
        "scaling": {
            "seq_len": {"members": 32, "values": [64, 128, 256, 512, 1024]},
            "members": {"seq_len": 256, "values": [1, 2, 4, 8, 16, 32, 64]},
            "layers": {"seq_len": 256, "members": 8, "values": [1, 2, 4, 8]},
            "repeats": 3,
        },
        "startup": {"repeats": 5, "warmup": 1},
    },
    "quick": {
        "step": {"batch": 16, "seq_len": 1024, "repeats": 5},
        "window": {
            "batch": 16,
            "seq_lens": [512, 1024],
            "windows": [2, 8, 32, None],
            "repeats": 3,
        },
        "matmul": {"size": 512, "repeats": 10},
        "ensemble": {"members": 32, "seq_lens": [256, 1024], "iters": 4},
        "sampler": {"length": 1024, "repeats": 3},
        "reproductions": {"size": "quick", "seeds": 3, "iters": 10},
        "scaling": {
            "seq_len": {"members": 4, "values": [64, 256, 1024]},
            "members": {"seq_len": 128, "values": [1, 4, 16]},
            "layers": {"seq_len": 128, "members": 4, "values": [1, 2, 4]},
            "repeats": 2,
        },
        "startup": {"repeats": 5, "warmup": 1},
    },
    "tiny": {
        "step": {"batch": 2, "seq_len": 64, "repeats": 1},
        "window": {"batch": 2, "seq_lens": [32, 64], "windows": [2, 8, 32, None], "repeats": 1},
        "matmul": {"size": 128, "repeats": 2},
        "ensemble": {"members": 4, "seq_lens": [16, 32], "iters": 3},
        "sampler": {"length": 64, "repeats": 1},
        "reproductions": {"size": "test", "seeds": 2, "iters": 4},
        "scaling": {
            "seq_len": {"members": 2, "values": [16, 32]},
            "members": {"seq_len": 16, "values": [1, 2]},
            "layers": {"seq_len": 16, "members": 2, "values": [1, 2]},
            "repeats": 1,
        },
        "startup": {"repeats": 1, "warmup": 0},
    },
}


# ------------------------------------------------------------------------------ report


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
    """The machine, torch threads and the load average (1, 5, 15 min)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    where = f"{os.cpu_count()}-core {cpu}"
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} (host: {where})"
    load = "/".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"machine: {where}; device {device}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {load}"
    )


def _load() -> float | None:
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


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MB"


def _ms(ms: float) -> str:
    """Milliseconds for a line: one decimal from 1 ms up, else three."""
    return f"{ms:.1f}" if ms >= 1 else f"{ms:.3f}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------- paper step, window


def _layer_windows(model_config: ModelConfig) -> list[int | None]:
    w = model_config.attn_window
    return list(w) if isinstance(w, list) else [w] * model_config.n_layers


def attention_flops(model_config: ModelConfig, batch: int, seq_len: int) -> int:
    """FLOPs of the attention matmuls of one training update (forward and backward) of a
    model of `model_config` on [batch, seq_len] tokens.

    Per layer, S = the scores computed: B * H * N (N + 1) / 2 for causal attention; with a
    window M (query i sees keys i - M .. i) B * H * ((M + 1)(M + 2) / 2 + (N - M - 1)(M + 1)).
    Every score takes 2 * d_head FLOPs in each matmul it is part of: forward Q K^T and P V
    (4 * d_head * S), backward dP = dZ V^T, dV = P^T dZ, dQ = dS K, dK = dS^T Q
    (8 * d_head * S); in all 12 * d_head * S per layer. Softmax, projections, MLP, loss and
    optimiser are not counted: no implementation can take less than this at the measured
    matmul rate, so it is a lower bound on the step, not an estimate of it.
    """
    n = seq_len
    total = 0
    for window in _layer_windows(model_config):
        if window is None or window >= n - 1:
            scores = n * (n + 1) // 2
        else:
            m = window
            scores = (m + 1) * (m + 2) // 2 + (n - m - 1) * (m + 1)
        total += 12 * model_config.d_head * batch * model_config.n_heads * scores
    return total


def matmul_gflops(device: torch.device, size: int = 512, repeats: int = 10) -> float:
    """This machine's sustained fp32 matmul rate (GFLOP/s, with the current torch threads):
    the best of `repeats` torch.mm of two [size, size] matrices (2 size^3 FLOPs each)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=gen)
    b = torch.randn(size, size, device=device, generator=gen)
    c = torch.empty(size, size, device=device)
    torch.mm(a, b, out=c)  # warm-up
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def paper_update(
    model_config: ModelConfig,
    batch: int,
    backend: str,
    device: torch.device,
    precision: str = "fp32",
) -> Callable[[int], None]:
    """One training update of a fresh model (seed 0) with attention backend `backend`, on
    fixed tokens [batch, model_config.n_ctx] (no sampling in the timing): forward, the
    trainer's loss, backward, AdamW (trainer.make_optimizer, the paper's recipe)."""
    seq_len = model_config.n_ctx
    model = MarkovTransformer(model_config, seed=0).to(device)
    model.set_attention_backend(backend)
    tc = TrainConfig(batch=batch, seq_len=seq_len, device=str(device), precision=precision)
    opt, _ = make_optimizer(model, tc)
    gen = make_generator(device, derive_seed(0, 1, 0))
    tokens = BinaryChain(*CHAINS[0]).sample(batch, seq_len, generator=gen)
    bf16 = precision == "bf16"

    def update(step: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = per_token_loss(model(tokens).float(), tokens).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return update


def backend_labels(device: torch.device, precision: str = "fp32") -> dict[str, str]:
    """What each attention backend computes with here (the step section's line labels)."""
    if device.type != "cpu":
        auto = f"auto (SDPA on {device.type})"
    elif precision != "fp32":
        auto = f"auto (explicit: {precision} on a CPU)"
    elif kernel_status() == "loaded":
        auto = "fused kernel"
    else:
        auto = "auto (no kernel: SDPA)"
    return {"auto": auto, "torch": "SDPA", "explicit": "explicit"}


def _model_words(model_config: ModelConfig) -> str:
    layers = model_config.n_layers
    return f"{layers} layer{'s' if layers > 1 else ''}, d {model_config.d_model}"


def compare_step(
    batch: int,
    seq_len: int,
    repeats: int,
    device: torch.device,
    gflops: float,
    precision: str = "fp32",
) -> tuple[list[Comparison], dict[str, Any]]:
    """The paper's training update (ModelConfig.paper(), [batch, seq_len]) with each attention
    backend (STEP_BACKENDS), timed in turn (interleaved_best): Comparisons of "auto" against
    "torch" and "explicit", and the step's figures: ms per backend, attention FLOPs
    (attention_flops), the bound at `gflops` and the step (backend auto) over the bound."""
    mc = ModelConfig.paper(n_ctx=seq_len)
    load_before = _load()
    fns = [paper_update(mc, batch, b, device, precision) for b in STEP_BACKENDS]
    times = dict(zip(STEP_BACKENDS, interleaved_best(fns, repeats, device), strict=True))
    labels = backend_labels(device, precision)
    flops = attention_flops(mc, batch, seq_len)
    bound = flops / (gflops * 1e9)
    paper = batch == 16 and seq_len == 1024
    shape = f"{_model_words(mc)}, {batch} x {seq_len}"
    name = f"paper step ({shape})" if paper else f"paper step, REDUCED ({shape})"
    info = {
        "name": name,
        "batch": batch,
        "seq_len": seq_len,
        "layers": mc.n_layers,
        "d_model": mc.d_model,
        "repeats": repeats,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "kernel": kernel_status() if device.type == "cpu" else None,
        "backend_labels": labels,
        "step_ms": {b: 1e3 * t for b, t in times.items()},
        "attention_flops": flops,
        "matmul_gflops": gflops,
        "bound_ms": 1e3 * bound,
        "step_over_bound": times["auto"] / bound,
        "load_average": [load_before, _load()],
    }
    comps = [
        Comparison(name, labels["auto"], labels[b], times["auto"], times[b], info)
        for b in ("torch", "explicit")
    ]
    return comps, info


def window_rows(
    batch: int,
    seq_lens: list[int],
    windows: list[int | None],
    repeats: int,
    device: torch.device,
    gflops: float,
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    """ms per training update (paper_update, backend "auto") of the paper's model with each
    attention window (None: full causal attention) at each length; the windows of one length
    are timed in turn (interleaved_best). Each row: seq_len, window, step_ms, vs_full (step /
    the full-attention step at that length; None without a full-attention entry),
    attention_flops and bound_ms (at `gflops`)."""
    rows = []
    for n in seq_lens:
        configs = [ModelConfig.paper(n_ctx=n, attn_window=w) for w in windows]
        fns = [paper_update(mc, batch, "auto", device, precision) for mc in configs]
        times = interleaved_best(fns, repeats, device)
        full = times[windows.index(None)] if None in windows else None
        for w, mc, t in zip(windows, configs, times, strict=True):
            flops = attention_flops(mc, batch, n)
            rows.append(
                {
                    "seq_len": n,
                    "window": w,
                    "batch": batch,
                    "step_ms": 1e3 * t,
                    "vs_full": t / full if full else None,
                    "attention_flops": flops,
                    "bound_ms": 1e3 * flops / (gflops * 1e9),
                }
            )
    return rows


def window_comparisons(rows: list[dict[str, Any]], reduced: bool) -> list[Comparison]:
    """Each finite window's step against full attention at the same length."""
    full = {r["seq_len"]: r for r in rows if r["window"] is None}
    out = []
    for r in rows:
        n = r["seq_len"]
        if r["window"] is None or n not in full:
            continue
        where = f"N={n}, batch {r['batch']}, paper model"
        out.append(
            Comparison(
                f"window cost{', REDUCED' if reduced else ''} ({where})",
                f"window {r['window']}",
                "full attention",
                r["step_ms"] / 1e3,
                full[n]["step_ms"] / 1e3,
                r,
            )
        )
    return out


def format_window_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of window_rows."""
    head = ["N", "window", "step ms", "step / full", "attention FLOP bound ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vs = "n/a" if r["vs_full"] is None else f"{r['vs_full']:.2f}x"
        window = "full" if r["window"] is None else str(r["window"])
        cells = [str(r["seq_len"]), window, _ms(r["step_ms"]), vs, _ms(r["bound_ms"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ start-up


def startup_commands() -> list[tuple[str, list[str]]]:
    """(label, argv) of the start-up comparison: ``import torch`` in a fresh interpreter,
    ``markov-lens --help`` and ``markov-lens chain --p 0.5 --q 0.8`` (the console script
    beside this interpreter; without one, ``interp.cli.main`` run by this interpreter)."""
    script = Path(sys.executable).with_name("markov-lens")

    def cli(argv: list[str]) -> list[str]:
        if script.is_file():
            return [str(script), *argv]
        code = f"import sys; from interp.cli import main; sys.exit(main({argv!r}))"
        return [sys.executable, "-c", code]

    return [
        ("import torch", [sys.executable, "-c", "import torch"]),
        ("markov-lens --help", cli(["--help"])),
        ("markov-lens chain --p 0.5 --q 0.8", cli(["chain", "--p", "0.5", "--q", "0.8"])),
    ]


def compare_startup(repeats: int = 5, warmup: int = 1) -> list[Comparison]:
    """Wall seconds of each startup_commands() process (median of `repeats`, after `warmup`
    untimed runs; the commands in turn, so that load changes affect all alike): each
    markov-lens command against ``import torch``. A command that fails is reported skipped."""
    commands = startup_commands()
    times: dict[str, list[float]] = {label: [] for label, _ in commands}
    errors: dict[str, str] = {}
    for r in range(warmup + repeats):
        for label, argv in commands:
            if label in errors:
                continue
            t0 = time.perf_counter()
            proc = subprocess.run(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600
            )
            dt = time.perf_counter() - t0
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or [""])[-1]
                errors[label] = f"exit code {proc.returncode}: {last}"
            elif r >= warmup:
                times[label].append(dt)
    base, *others = (label for label, _ in commands)
    median = {k: statistics.median(v) for k, v in times.items() if k not in errors and v}
    name = f"start-up (median of {repeats} fresh process{'es' if repeats > 1 else ''})"
    out = []
    for label in others:
        details = {
            "seconds": {k: times[k] for k in (base, label)},
            "median_s": {k: median.get(k) for k in (base, label)},
            "command": label,
            "argv": dict(commands)[label],
        }
        why = errors.get(base) or errors.get(label)
        if why:
            out.append(Comparison(name, base, label, None, None, details, skipped=why))
            continue
        out.append(
            Comparison(
                name,
                f"{base} {median[base]:.2f} s",
                f"{label} {median[label]:.2f} s",
                median[base],
                median[label],
                details,
            )
        )
    return out


# ---------------------------------------------------------------------------- ensemble


def bench_members(n: int, model_config: ModelConfig) -> list[Member]:
    """n members of one shape: seeds 0..n-1, chains cycling through CHAINS."""
    return [Member(model_config, BinaryChain(*CHAINS[i % len(CHAINS)]), i) for i in range(n)]


def _warm_up(model_config: ModelConfig, train_config: TrainConfig) -> None:
    """One tiny run through each path: lazy imports and kernel set-up stay out of timings."""
    tc = TrainConfig(
        iters=2, batch=2, seq_len=8, eval_every=1, eval_batches=1, device=train_config.device
    )
    mc = ModelConfig.from_dict(model_config.to_dict() | {"n_ctx": 8})
    train(mc, BinaryChain(0.5, 0.8), tc, seed=0, progress=False)
    train_ensemble(bench_members(2, mc), tc, progress=False)


def compare_ensemble(
    members: int,
    model_config: ModelConfig,
    train_config: TrainConfig,
    label: str,
) -> Comparison:
    """train_ensemble of `members` runs vs the same runs with trainer.train one after the
    other (in memory, same configs and seeds); times are total wall seconds. The sequential
    runs are split in two halves timed before and after the ensemble, so that a change of
    the machine's load during the measurement affects both sides alike."""
    device = resolve_device(train_config.device)
    _warm_up(model_config, train_config)
    runs = bench_members(members, model_config)
    tokens = members * train_config.iters * train_config.tokens_per_step
    timings: dict[str, float] = {}
    load_before = _load()

    def sequential(part: list[Member]) -> tuple[list, float, int | None]:
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            out = [
                train(m.model_config, m.chain, train_config, seed=m.seed, progress=False)
                for m in part
            ]
            _sync(device)
        return out, time.perf_counter() - t0, mem.peak

    half = members // 2
    seq_a, t_a, mem_a = sequential(runs[:half])
    with PeakMemory(device) as mem_e:
        t0 = time.perf_counter()
        ens = train_ensemble(runs, train_config, progress=False, timings=timings)
        _sync(device)
        t_ens = time.perf_counter() - t0
    seq_b, t_b, mem_b = sequential(runs[half:])
    seq, t_seq = seq_a + seq_b, t_a + t_b
    peaks = [p for p in (mem_a, mem_b) if p is not None]
    seq_peak = max(peaks) if peaks else None
    same = sum(a["verdict"] == b["verdict"] for a, b in zip(ens, seq, strict=True))
    act_ens, act_one = _activations(model_config, train_config, runs)
    data_share = timings["data_s"] / (timings["data_s"] + timings["step_s"])
    details = {
        "members": members,
        "iters": train_config.iters,
        "seq_len": train_config.seq_len,
        "batch": train_config.batch,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "ensemble_tokens_per_s": tokens / t_ens,
        "sequential_tokens_per_s": tokens / t_seq,
        "ensemble_peak_memory": mem_e.peak,
        "sequential_peak_memory": seq_peak,
        "memory_measure": mem_e.kind,
        "ensemble_activations": act_ens,
        "single_run_activations": act_one,
        "data_share_of_step": data_share,
        "ensemble_timings": timings,
        "same_verdicts": f"{same}/{members}",
        "load_average": [load_before, _load()],
    }
    return Comparison(
        f"ensemble training ({label})",
        f"{members}-member ensemble {tokens / t_ens:,.0f} tok/s",
        f"{members} sequential runs {tokens / t_seq:,.0f} tok/s",
        t_ens,
        t_seq,
        details,
    )


def sweep_path(train_config: TrainConfig, ratio: float | None) -> dict[str, Any]:
    """Which path the sweeps take for runs of the paper's model with `train_config`
    (training.sweeps.ensemble.stacking_pays on that RunConfig: "stacked" or "one by one") and
    whether it is the faster one by the measured ratio (sequential time / ensemble time)."""
    chain = {"p": CHAINS[0][0], "q": CHAINS[0][1]}
    stacked = stacking_pays(build_run_config({"chain": chain, "train": train_config.to_dict()}))
    if ratio is None:
        faster = None
    else:
        faster = ratio >= 1 if stacked else ratio <= 1
    return {"sweeps_use": "stacked" if stacked else "one by one", "sweeps_take_faster": faster}


def _activations(
    model_config: ModelConfig, train_config: TrainConfig, runs: list[Member]
) -> tuple[int, int]:
    """Saved activations (bytes) of one training forward: the ensemble of `runs`, one run."""
    device = resolve_device(train_config.device)
    models = [MarkovTransformer(model_config, seed=m.seed).to(device) for m in runs]
    weights = StackedWeights.from_models(models)
    tokens = member_batches(
        [m.chain for m in runs], [m.seed for m in runs], 0, train_config, device
    )

    def ensemble_loss() -> torch.Tensor:
        logits = stacked_logits(models[0], weights.params, tokens)
        return member_losses(logits.float(), tokens).sum()

    models[0].set_fused_attention(train_config.fused_attention)

    def single_loss() -> torch.Tensor:
        return per_token_loss(models[0](tokens[0]).float(), tokens[0]).mean()

    return saved_activation_bytes(ensemble_loss), saved_activation_bytes(single_loss)


# ------------------------------------------------------------------------------ scaling


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


def _ensemble_step(
    model_config: ModelConfig, train_config: TrainConfig, members: int
) -> tuple[Callable[[int], Any], Callable[[int], Any], int]:
    """One ensemble update of `members` models (data + forward + backward + AdamW) as a
    function of the step, its data sampling alone, and the update's saved activations."""
    device = resolve_device(train_config.device)
    runs = bench_members(members, model_config)
    models = [MarkovTransformer(model_config, seed=m.seed).to(device) for m in runs]
    weights = StackedWeights.from_models(models)
    opt, _ = make_optimizer(weights, train_config)
    chains, seeds = [m.chain for m in runs], [m.seed for m in runs]

    def data(step: int) -> torch.Tensor:
        return member_batches(chains, seeds, step, train_config, device)

    def loss(tokens: torch.Tensor) -> torch.Tensor:
        logits = stacked_logits(models[0], weights.params, tokens)
        return member_losses(logits.float(), tokens).sum()

    def update(step: int) -> None:
        value = loss(data(step))
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    return update, data, saved_activation_bytes(lambda: loss(data(0)))


def _single_step(
    model_config: ModelConfig, train_config: TrainConfig
) -> tuple[Callable[[int], Any], int]:
    """One trainer update of one model (sampling, fused-attention forward, backward, AdamW:
    what trainer.train does per step) as a function of the step, and its activations."""
    device = resolve_device(train_config.device)
    model = MarkovTransformer(model_config, seed=0).to(device)
    model.set_fused_attention(train_config.fused_attention)
    opt, _ = make_optimizer(model, train_config)
    chain = BinaryChain(*CHAINS[0])

    def loss(step: int) -> torch.Tensor:
        gen = make_generator(device, derive_seed(0, 1, step))
        tokens = chain.sample(train_config.batch, train_config.seq_len, generator=gen)
        return per_token_loss(model(tokens).float(), tokens).mean()

    def update(step: int) -> None:
        value = loss(step)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    return update, saved_activation_bytes(lambda: loss(0))


def interleaved_best(
    fns: list[Callable[[int], Any]], repeats: int, device: torch.device
) -> list[float]:
    """Best-of-`repeats` seconds of each function of the step, run in turn (one warm-up call
    each first), so that a change of the machine's load affects all of them alike."""
    for fn in fns:
        fn(0)
    _sync(device)
    best = [float("inf")] * len(fns)
    for step in range(1, repeats + 1):
        for j, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn(step)
            _sync(device)
            best[j] = min(best[j], time.perf_counter() - t0)
    return best


def scaling_tables(settings: dict[str, Any], base: TrainConfig) -> dict[str, list[dict]]:
    """Step time of the ensemble and of one trainer run against sequence length, members
    and depth (settings: SETTINGS[mode]["scaling"]), timed in turn (interleaved_best). Each
    row: members, seq_len, layers,
    ensemble step ms, ms per member, one run's step ms, speedup (members x one run's step /
    ensemble step), data share of the ensemble step, saved activations of the ensemble step
    and of one run's step (MB), and on CUDA the ensemble's peak allocated memory (MB)."""
    device = resolve_device(base.device)
    repeats = settings["repeats"]
    tables: dict[str, list[dict]] = {}
    plans = {
        "seq_len": [(settings["seq_len"]["members"], v, 1) for v in settings["seq_len"]["values"]],
        "members": [(v, settings["members"]["seq_len"], 1) for v in settings["members"]["values"]],
        "layers": [
            (settings["layers"]["members"], settings["layers"]["seq_len"], v)
            for v in settings["layers"]["values"]
        ],
    }
    for axis, plan in plans.items():
        rows = []
        for members, seq_len, layers in plan:
            tc = TrainConfig.from_dict(base.to_dict() | {"seq_len": seq_len, "iters": 2})
            mc = ModelConfig.paper(n_ctx=seq_len, n_layers=layers)
            with PeakMemory(device) as mem:
                ens_update, ens_data, ens_act = _ensemble_step(mc, tc, members)
                one_update, one_act = _single_step(mc, tc)
                ens_s, data_s, one_s = interleaved_best(
                    [ens_update, ens_data, one_update], repeats, device
                )
            rows.append(
                {
                    "members": members,
                    "seq_len": seq_len,
                    "layers": layers,
                    "ensemble_step_ms": 1e3 * ens_s,
                    "ms_per_member": 1e3 * ens_s / members,
                    "single_run_step_ms": 1e3 * one_s,
                    "speedup": members * one_s / ens_s,
                    "data_share": data_s / ens_s,
                    "ensemble_activations_mb": ens_act / 2**20,
                    "single_run_activations_mb": one_act / 2**20,
                    "cuda_peak_mb": mem.peak / 2**20 if device.type == "cuda" else None,
                }
            )
        tables[axis] = rows
    return tables


def format_table(axis: str, rows: list[dict]) -> str:
    """A small markdown table of one scaling axis (the varied column first)."""
    fixed = [c for c in ("members", "seq_len", "layers") if c != axis]
    head = [axis, *fixed, "ensemble step ms", "ms/member", "one run step ms", "speedup"]
    head += ["data share", "activations MB (ensemble / one run)"]
    cuda = any(r.get("cuda_peak_mb") is not None for r in rows)
    if cuda:
        head.append("CUDA peak MB")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r[axis]), *(str(r[c]) for c in fixed)]
        cells += [
            f"{r['ensemble_step_ms']:.1f}",
            f"{r['ms_per_member']:.2f}",
            f"{r['single_run_step_ms']:.1f}",
            f"{r['speedup']:.1f}x",
            f"{100 * r['data_share']:.1f}%",
            f"{r['ensemble_activations_mb']:.1f} / {r['single_run_activations_mb']:.1f}",
        ]
        if cuda:
            cells.append(f"{r['cuda_peak_mb']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------ reproductions


def reproduction_specs(
    name: str, size: str, seeds: int, iters: int | None, device: str
) -> list[dict]:
    """The sweep specs of experiment `name` (training.experiments) at `size` with `seeds`
    seeds, the iteration count replaced by `iters` when given."""
    from training.experiments import EXPERIMENTS

    make_specs = EXPERIMENTS[name][0]
    specs = make_specs(size, seeds)
    for spec in specs:
        spec["train"] = dict(spec["train"]) | {"device": device}
        if iters is not None:
            spec["train"]["iters"] = iters
    return specs


def compare_reproduction(
    name: str, size: str, seeds: int, iters: int | None, device: str, workers: int = 0
) -> list[Comparison]:
    """Wall time of the training sweep of experiment `name`: the ensemble backend vs a
    sequential per-run loop (both with one worker, in this process, one torch thread on a
    CPU); with workers >= 2 also both backends with `workers` worker processes. Each sweep in
    a fresh temporary directory."""
    from training.sweeps import run_sweep

    specs = reproduction_specs(name, size, seeds, iters, device)
    n_iters = specs[0]["train"]["iters"]
    what = (
        f"{name} reproduction, paper settings"
        if size == "full" and iters is None
        else f"{name} reproduction, REDUCED: {size}-size specs, {n_iters} iterations"
    )
    times: dict[str, float] = {}
    rows: dict[str, list[dict]] = {}
    mem: dict[str, int | None] = {}
    plans = [("ensemble", ensemble_backend, 1), ("sequential", "local", 1)]
    if workers >= 2:
        plans += [
            ("ensemble_workers", ensemble_backend, workers),
            ("local_workers", "local", workers),
        ]
    dev = resolve_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        for key, backend, n in plans:
            with PeakMemory(dev) as pm:
                t0 = time.perf_counter()
                result = run_sweep(
                    specs, Path(tmp) / key, workers=n, backend=backend, progress=False
                )
                times[key] = time.perf_counter() - t0
            mem[key] = pm.peak
            rows[key] = result.rows
    n_runs = len(rows["ensemble"])
    finished = {k: sum(r.get("status") == "finished" for r in v) for k, v in rows.items()}
    verdicts = {
        k: sorted((r["cell"], r["seed"], str(r.get("verdict"))) for r in v) for k, v in rows.items()
    }
    same = sum(a == b for a, b in zip(verdicts["ensemble"], verdicts["sequential"], strict=True))
    details = {
        "runs": n_runs,
        "iters": n_iters,
        "wall_seconds": times,
        "finished": finished,
        "same_verdicts": f"{same}/{n_runs}",
        "peak_memory": mem,
        "threads": torch.get_num_threads(),
    }
    out = [
        Comparison(
            f"{what}, {n_runs} runs",
            f"ensemble sweep {times['ensemble']:.1f} s",
            f"sequential per-run loop {times['sequential']:.1f} s",
            times["ensemble"],
            times["sequential"],
            details,
        )
    ]
    if "local_workers" in times:
        out.append(
            Comparison(
                f"{what}, {n_runs} runs, {workers} worker processes each",
                f"ensemble backend {times['ensemble_workers']:.1f} s",
                f"local backend {times['local_workers']:.1f} s",
                times["ensemble_workers"],
                times["local_workers"],
                details,
            )
        )
    return out


# -------------------------------------------------------------------------------- suite


def run_benchmarks(
    mode: str = "full",
    device: str = "auto",
    members: int | None = None,
    precision: str = "fp32",
    sections: tuple[str, ...] = SECTIONS,
    patching: Callable[[str, str], list[Comparison]] | None = None,
    emit: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark sections in `mode` and emit each line as it is measured.

    patching(mode, device) -> comparisons, supplied by the caller (None: reported skipped).
    Returns {"machine", "mode", "comparisons": [...], "tables": {...}}, with the step
    section's figures under "step" (compare_step) and the window table under
    tables["window"]; "matmul_gflops" when step or window ran.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(
            f"unknown benchmark section {unknown[0]!r}; sections: {', '.join(SECTIONS)}"
        )
    if members is not None and (
        isinstance(members, bool) or not isinstance(members, int) or members < 1
    ):
        raise ValueError(f"members must be a positive integer, got {members!r}")
    dev = resolve_device(device)
    settings = SETTINGS[mode]
    base = TrainConfig(device=device, precision=precision)
    out: dict[str, Any] = {"mode": mode, "comparisons": [], "tables": {}}
    out["machine"] = machine_line(dev)
    emit(out["machine"])
    if dev.type != "cuda":
        emit("(CPU run: no GPU was used for these numbers)")

    def report(c: Comparison) -> None:
        out["comparisons"].append(c.to_dict())
        emit(c.line())

    gflops: float | None = None
    if "step" in sections or "window" in sections:
        mm = settings["matmul"]
        gflops = matmul_gflops(dev, mm["size"], mm["repeats"])
        out["matmul_gflops"] = gflops
        emit(
            f"matmul rate: {gflops:.1f} GFLOP/s (fp32 torch.mm {mm['size']}x{mm['size']}, best "
            f"of {mm['repeats']}, {torch.get_num_threads()} threads); attention kernel: "
            + (kernel_status() if dev.type == "cpu" else f"not used on {dev.type}")
        )
    if "step" in sections:
        s = settings["step"]
        comps, info = compare_step(s["batch"], s["seq_len"], s["repeats"], dev, gflops, precision)
        out["step"] = info
        for c in comps:
            report(c)
        labels, ms = info["backend_labels"], info["step_ms"]
        emit(
            f"{info['name'].split(' (')[0]}: {_ms(ms['auto'])} ms; attention FLOP bound "
            f"{_ms(info['bound_ms'])} ms at {gflops:.0f} GFLOP/s (matmul); step / bound "
            f"{info['step_over_bound']:.1f}x"
        )
        emit(
            "  ms per step (best of "
            f"{s['repeats']}): "
            + ", ".join(f"{labels[b]} {ms[b]:.1f}" for b in STEP_BACKENDS)
            + f"; {info['attention_flops'] / 1e9:.3g} GFLOP of attention matmuls per step"
            f" (12 d_head S); load average {info['load_average'][0]:.2f} -> "
            f"{info['load_average'][1]:.2f}"
        )
    if "window" in sections:
        s = settings["window"]
        rows = window_rows(
            s["batch"], s["seq_lens"], s["windows"], s["repeats"], dev, gflops, precision
        )
        out["tables"]["window"] = rows
        for c in window_comparisons(rows, reduced=mode == "tiny"):
            report(c)
        emit(
            f"\nstep time against attention window (paper model, batch {s['batch']}, backend "
            f"auto, best of {s['repeats']} steps):"
        )
        emit(format_window_table(rows))
    if "ensemble" in sections:
        s = settings["ensemble"]
        m = members or s["members"]
        for seq_len in s["seq_lens"]:
            tc = TrainConfig.from_dict(base.to_dict() | {"seq_len": seq_len, "iters": s["iters"]})
            mc = ModelConfig.paper(n_ctx=seq_len)
            setting = (
                "paper config"
                if seq_len == 1024
                else f"{'' if seq_len == 256 else 'REDUCED: '}paper config but length {seq_len}"
            )
            label = (
                f"{setting}: d=8, 1 layer, batch {tc.batch}, length {seq_len}, {s['iters']} "
                f"steps, {dev.type}, {torch.get_num_threads()} threads, in memory"
            )
            c = compare_ensemble(m, mc, tc, label)
            d = c.details
            d.update(sweep_path(tc, c.ratio))
            report(c)
            emit(
                f"  ensemble: data sampling {100 * d['data_share_of_step']:.1f}% of step time; "
                f"activations saved per step {_mb(d['ensemble_activations'])} ({m} members) vs "
                f"{_mb(d['single_run_activations'])} (one run); peak memory "
                f"({d['memory_measure']}) ensemble {_mb(d['ensemble_peak_memory'])} vs "
                f"sequential {_mb(d['sequential_peak_memory'])}; same verdicts "
                f"{d['same_verdicts']}; load average {d['load_average'][0]:.2f} -> "
                f"{d['load_average'][1]:.2f}"
            )
            emit(
                f"  length {seq_len}: sweeps use: {d['sweeps_use']} "
                f"(faster: {'yes' if d['sweeps_take_faster'] else 'NO'})"
            )
    if "sampler" in sections:
        from training.sampler_bench import benchmark_sampler

        s = settings["sampler"]
        for r in benchmark_sampler(16, s["length"], s["repeats"], device=str(dev)):
            report(
                Comparison(
                    f"sampler ({r['name']}, B={r['batch']}, N={r['length']}, "
                    f"{r['threads']} thread)",
                    "vectorised scan",
                    "per-position loop",
                    r["vectorised_s"],
                    r["loop_s"],
                    r,
                )
            )
    if "patching" in sections:
        if patching is None:
            report(
                Comparison(
                    "patching",
                    "batched",
                    "transformer_lens.patching",
                    None,
                    None,
                    skipped="no patching benchmark was supplied (run `markov-lens bench`)",
                )
            )
        else:
            for c in patching(mode, str(dev)):
                report(c)
    if "reproductions" in sections:
        s = settings["reproductions"]
        # worker processes: the local backend's default; only in full mode (starting them
        # costs seconds, which would dominate the reduced settings)
        workers = min(2, os.cpu_count() or 1) if mode == "full" else 0
        for name in ("tying", "depth"):
            for c in compare_reproduction(name, s["size"], s["seeds"], s["iters"], device, workers):
                report(c)
                d = c.details
            emit(
                f"  {name}: finished {d['finished']}; same verdicts (ensemble vs sequential) "
                f"{d['same_verdicts']}"
                + (
                    "; CUDA peak memory "
                    + ", ".join(f"{k} {_mb(v)}" for k, v in d["peak_memory"].items())
                    if dev.type == "cuda"
                    else ""
                )
            )
    if "scaling" in sections:
        tables = scaling_tables(settings["scaling"], base)
        out["tables"] = tables
        titles = {
            "seq_len": "step time against sequence length",
            "members": "step time against ensemble members",
            "layers": "step time against depth (layers)",
        }
        for axis, rows in tables.items():
            emit(f"\n{titles[axis]} (best of {settings['scaling']['repeats']} steps):")
            emit(format_table(axis, rows))
    if "startup" in sections:
        s = settings["startup"]
        for c in compare_startup(s["repeats"], s["warmup"]):
            report(c)
            if c.ratio is not None:
                ok = "yes" if c.ratio <= STARTUP_TARGET else "NO"
                emit(f"  {c.details['command']}: within {STARTUP_TARGET}x of import torch: {ok}")
    emit(machine_line(dev).replace("machine:", "at the end, machine:"))
    return out
