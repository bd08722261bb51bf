"""The fused attention branch (training.fused_attention) against the explicit reference:
the compiled CPU kernel, torch's fallbacks, and their use under vmap, double backward and
torch.func transforms; and the model's branches over windows, lengths and depths."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import subprocess
import sys

import pytest
import torch

import training.fused_attention as fa
from training.config import ModelConfig
from training.fused_attention import (
    _band_unfold,
    fused_attention,
    kernel_status,
    reference_attention,
    uses_fused,
)
from training.model import MarkovTransformer

WINDOWS = [None, 0, 1, 2, 7, 31]
# every build this CPU can run: the native one and, on x86, the AVX2 and portable paths
MARCHES = ["native"] + (
    ["x86-64-v3", "x86-64"] if platform.machine() in ("x86_64", "AMD64") else []
)


@pytest.fixture(params=MARCHES)
def march(request, monkeypatch):
    """Run the test with the kernel built for this -march (skipped where it cannot run)."""
    if request.param != "native":
        build = fa.load_kernel(request.param)
        if build is None:
            pytest.skip(f"no {request.param} build here: {fa._status[request.param]}")
    monkeypatch.setenv(fa.MARCH_ENV, request.param)
    return request.param


def qkv(rows, n, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*rows, n, d, generator=g, dtype=dtype).requires_grad_() for _ in range(3)]


def reference64(q, k, v, window, do):
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    z = reference_attention(q, k, v, window)
    return z, torch.autograd.grad(z, (q, k, v), do.double())


def test_the_kernel_builds_where_a_compiler_exists():
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler on this machine")
    assert kernel_status() == "loaded"
    # loading it leaves the process's floating point alone (no flush-to-zero of subnormals,
    # which an -ffast-math shared object switches on for everyone)
    tiny = torch.tensor(1e-40, dtype=torch.float32)
    assert tiny * 1.0 != 0 and float(tiny) > 0


@pytest.mark.parametrize("n", [1, 2, 5, 16, 17, 33, 100])
@pytest.mark.parametrize("d", [1, 3, 4, 8, 16])
def test_kernel_equals_the_masked_reference(n, d, march):
    """Every build (AVX-512, AVX2, portable) against float64, within one tolerance."""
    for window in WINDOWS + [n - 2, n - 1, n, 10 * n]:
        if window is not None and window < 0:
            continue
        q, k, v = qkv((2, 3), n, d, seed=n * 100 + d)
        do = torch.randn(2, 3, n, d, generator=torch.Generator().manual_seed(1))
        z = fused_attention(q, k, v, window, kernel="kernel")
        grads = torch.autograd.grad(z, (q, k, v), do)
        ref, ref_grads = reference64(q, k, v, window, do)
        assert (z.double() - ref).abs().max() < 1e-6, (n, d, window)
        for g, r in zip(grads, ref_grads, strict=True):
            assert (g.double() - r).abs().max() < 1e-5 * max(1.0, r.abs().max()), (n, d, window)


@pytest.mark.parametrize("window", [None, 0, 3, 40])
def test_torch_fallbacks_equal_the_reference(monkeypatch, window):
    """Without the kernel (no compiler, or kernel=False): SDPA or the unfolded band."""
    q, k, v = qkv((2, 2), 50, 8, seed=3)
    do = torch.randn(2, 2, 50, 8, generator=torch.Generator().manual_seed(2))
    ref, ref_grads = reference64(q, k, v, window, do)
    monkeypatch.setattr(fa, "_load", lambda: None)
    for z in (fused_attention(q, k, v, window), fused_attention(q, k, v, window, kernel=False)):
        grads = torch.autograd.grad(z, (q, k, v), do)
        assert (z.double() - ref).abs().max() < 1e-6
        for g, r in zip(grads, ref_grads, strict=True):
            assert (g.double() - r).abs().max() < 1e-5
    q64, k64, v64 = (t.detach().double() for t in (q, k, v))
    if window is not None:
        band = _band_unfold(q64, k64, v64, window)
        assert (band - reference_attention(q64, k64, v64, window)).abs().max() < 1e-12


def test_vmap_folds_into_the_kernel_and_keeps_gradients(march):
    q, k, v = qkv((4, 3), 20, 8, seed=5)  # 4 vmapped members of 3 rows each
    do = torch.randn(4, 3, 20, 8, generator=torch.Generator().manual_seed(6))
    z = torch.func.vmap(lambda a, b, c: fused_attention(a, b, c, 2, "kernel"))(q, k, v)
    grads = torch.autograd.grad(z, (q, k, v), do)
    ref, ref_grads = reference64(q, k, v, 2, do)
    assert (z.double() - ref).abs().max() < 1e-6
    for g, r in zip(grads, ref_grads, strict=True):
        assert (g.double() - r).abs().max() < 1e-5
    # one member's keys shared by all (in_dims None)
    z = torch.func.vmap(lambda a, c: fused_attention(a, k[0], c, None, "kernel"))(q, v)
    ref = reference_attention(q.double(), k[0].double().expand(4, -1, -1, -1), v.double(), None)
    assert (z.double() - ref).abs().max() < 1e-6


def test_double_backward_and_grad_transforms_take_differentiable_paths():
    if kernel_status() != "loaded":
        pytest.skip("the kernel's double backward (torch's CPU SDPA has none)")
    q, k, v = qkv((1, 2), 12, 4, seed=7)
    w = torch.randn(1, 2, 12, 4, generator=torch.Generator().manual_seed(8))

    def hvp(attend):
        (gq,) = torch.autograd.grad((attend(q, k, v, 3) * w).sum().sin(), q, create_graph=True)
        return torch.autograd.grad((gq * w).sum(), (q, k, v))

    def kernel(q, k, v, window):
        return fused_attention(q, k, v, window, kernel="kernel")

    for a, b in zip(hvp(kernel), hvp(reference_attention), strict=True):
        assert (a - b).abs().max() < 1e-5
    # under jacrev the model takes the explicit branch (uses_fused is False)
    seen = []

    def f(x):
        seen.append(uses_fused(x))
        return reference_attention(x, k, v, None).sum()

    torch.func.jacrev(f)(q.detach())
    assert seen == [False]
    assert uses_fused(q) and not uses_fused(q.double())


@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 9, 40])
@pytest.mark.parametrize("window", [None, 0, 1, 5, 38])
def test_model_fused_branch_equals_the_explicit_branch(n_layers, n, window):
    cfg = ModelConfig.paper(n_ctx=40, n_layers=n_layers, n_heads=2, attn_window=window)
    model = MarkovTransformer(cfg, seed=n_layers)
    toks = torch.randint(0, 2, (3, n), generator=torch.Generator().manual_seed(n))
    zs = {}
    for backend in ("explicit", "auto", "kernel", "torch"):
        model.set_attention_backend(backend)
        _, cache = model.run_with_cache(toks, names_filter=lambda name: name.endswith("hook_z"))
        zs[backend] = cache
    for name in zs["explicit"].keys():
        for backend in ("auto", "kernel", "torch"):
            diff = (zs[backend][name] - zs["explicit"][name]).abs().max()
            assert diff < 1e-6, (backend, name, float(diff))


def test_a_failed_build_falls_back_with_one_warning(tmp_path):
    """No usable compiler: a warning naming why, and the model still computes."""
    code = (
        "import warnings, torch\n"
        "from training.fused_attention import kernel_status\n"
        "from training.config import ModelConfig\n"
        "from training.model import MarkovTransformer\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    m = MarkovTransformer(ModelConfig.paper(n_ctx=8), seed=0)\n"
        "    loss = m(torch.zeros(2, 8, dtype=torch.long), return_type='loss')\n"
        "    loss.backward()\n"
        "print(kernel_status()); print(len(w)); print(w[0].message)\n"
    )
    env = os.environ | {"CC": "false", "XDG_CACHE_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "unavailable (the C compiler 'false' does not run); using torch's attention"
    assert out[1] == "1"
    assert "using torch's attention" in out[2]
    assert not list(tmp_path.glob("markov-lens/*.so"))


def test_auto_takes_the_path_measured_faster_and_caches_the_choice(tmp_path, monkeypatch):
    """choose() times both paths once per shape class, keeps the faster (never an assumed
    one), writes the choice beside the library and reads it back in a new process."""
    if fa._load() is None:
        pytest.skip("no kernel on this machine")
    monkeypatch.setattr(fa, "_choices", {})
    build = fa._load()
    lib = tmp_path / build.path.name
    lib.write_bytes(b"")
    monkeypatch.setattr(fa, "_load", lambda: dataclasses.replace(build, path=lib))
    for fast, expected in (("torch", "torch"), ("kernel", "kernel")):
        fa._choices.clear()
        for f in tmp_path.glob("*.json"):
            f.unlink()
        timings = iter([1.0, 2.0] if fast == "kernel" else [2.0, 1.0])
        monkeypatch.setattr(fa, "_time", lambda fn, repeats=3, t=timings: next(t))
        choice, why = fa.choose(1000, 8, None, True)
        assert choice == expected and why.startswith(f"{expected}: measured forward + backward")
        (saved,) = tmp_path.glob("*-choices.json")
        assert expected in saved.read_text()
        fa._choices.clear()  # a new process: the cached file decides, nothing is timed
        monkeypatch.setattr(fa, "_time", lambda fn, repeats=3: pytest.fail("timed again"))
        assert fa.choose(1024, 8, None, True) == (expected, why + " (cached)")
    monkeypatch.setenv(fa.CHOICE_ENV, "torch")
    assert fa.choose(1000, 8, None, True)[0] == "torch"
    monkeypatch.setenv(fa.CHOICE_ENV, "bogus")
    with pytest.raises(ValueError, match="MARKOV_LENS_ATTENTION must be one of"):
        fa.choose(1000, 8, None, True)


def test_shape_classes_round_up_and_separate_windows():
    assert fa.shape_class(1000, 8, None, True, rows=16)[:5] == (16, 1024, 8, None, True)
    assert fa.shape_class(1024, 8, 8, False, rows=3)[:5] == (4, 1024, 8, 16, False)
    assert fa.shape_class(64, 8, 40, True, rows=1000)[0] == fa.MEASURE_ROWS  # capped
    assert fa.shape_class(64, 8, 40, True)[3] == "wide"  # past the unfolded band's reach


def test_kernel_info_names_the_cpu_and_the_build():
    info = fa.kernel_info()
    assert info["cpu"] and info["rule"] == "measure"
    if info["status"] == "loaded":
        assert info["build"].split()[0] in ("avx512", "avx2", "neon", "portable")
