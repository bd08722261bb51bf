"""Hostile input: property-based tests (hypothesis) over chains, model configs, the CLI, sweep
specs, checkpoints and run directories.

Every input either works, with finite results (references, losses, logits), or ends in a
clear error: ValueError / FileNotFoundError / FileExistsError with a message, or the CLI's
`markov-lens CMD: error: ...` line with exit code 2 (argparse's own usage errors also exit 2).
Anything else escaping (TypeError, RuntimeError from torch, IndexError, ...) fails the test,
and deadlines catch hangs. Loading never unpickles: torch.load / pickle.load are made to raise.

The default budget keeps this file well under a minute; the `slow` variants run the same
properties with many more examples (`make test-slow`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from markov_lens.cli import main  # noqa: E402
from training.chains import (  # noqa: E402
    FAMILIES,
    BinaryChain,
    InContextChain,
    KthOrderChain,
    chain_from_dict,
)
from training.checkpoints import MANIFEST, load_checkpoint, read_checkpoint  # noqa: E402
from training.config import ModelConfig  # noqa: E402
from training.options import build_run_config  # noqa: E402
from training.references import in_context_losses, reference_losses  # noqa: E402
from training.runs import load_run  # noqa: E402
from training.sweeps import expand, load_spec  # noqa: E402

CLEAR = (ValueError, FileNotFoundError, FileExistsError)
SUPPRESS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]


def budget(n: int, deadline_ms: int | None = 5000, slow: bool = False):
    """Hypothesis settings: n examples, a deadline per example (hangs fail), deterministic
    in the default run (derandomize: the same cases in CI every time), random when slow."""
    return settings(
        max_examples=n,
        deadline=deadline_ms,
        derandomize=not slow,
        database=None,
        suppress_health_check=SUPPRESS,
        print_blob=True,
    )


def outcome(fn, *args, **kwargs):
    """fn(*args, **kwargs), or the clear error it raised (with a non-empty message). Any
    other exception propagates and fails the test."""
    try:
        result = fn(*args, **kwargs)
    except CLEAR as err:
        assert str(err).strip(), f"{type(err).__name__} without a message"
        event(f"{getattr(fn, '__name__', 'call')}: {type(err).__name__}")
        return err
    event(f"{getattr(fn, '__name__', 'call')}: ok")
    return result


def finite(x) -> bool:
    if isinstance(x, dict):
        return all(finite(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return all(finite(v) for v in x)
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all())
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return math.isfinite(x)
    return True


# ------------------------------------------------------------------------- strategies

HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=6),
    st.sampled_from([10**6, 2**63, 2**70, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.sampled_from(["nan", "inf", "0.5", "2", "", "true", "none"]),
    st.lists(st.integers(-1, 3), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(-1, 3), max_size=2),
)
PROB = st.one_of(
    st.floats(min_value=0.0, max_value=1.0),
    st.sampled_from([0.0, 1.0, 5e-324, 1e-300, 1e-20, 1 - 1e-16, 0.5]),
)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 10), st.floats(-2, 2), st.text(max_size=4)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def maybe(draw, valid, hostile=HOSTILE):
    """A valid value 3 times in 4, else a hostile one (st.one_of would flatten HOSTILE's
    branches and make the valid value rare)."""
    return draw(hostile) if draw(st.integers(0, 3)) == 3 else draw(valid)


@st.composite
def kernels(draw):
    """A kernel [S]*k + [S] (S^(k+1) <= 64, rows normalised, zeros and tiny entries
    likely), or one broken on purpose (an entry replaced, a row dropped, a hostile blob)."""
    S = draw(st.integers(2, 4))
    k = draw(st.integers(1, 5 if S == 2 else 2))
    M = S**k
    entry = st.one_of(st.floats(0, 1), st.sampled_from([0.0, 0.0, 1e-300, 5e-324, 1.0]))
    rows = []
    for _ in range(M):
        row = draw(st.lists(entry, min_size=S, max_size=S))
        total = sum(row)
        if not total > 0 or not math.isfinite(total):
            row = [0.0] * S
            row[draw(st.integers(0, S - 1))] = 1.0
        else:
            row = [x / total for x in row]
        rows.append(row)
    kernel = torch.tensor(rows, dtype=torch.float64).reshape([S] * (k + 1)).tolist()
    how = draw(st.sampled_from(["valid"] * 4 + ["entry", "drop", "blob", "scale"]))
    if how == "entry":
        flat = kernel
        while isinstance(flat[0], list):
            flat = flat[draw(st.integers(0, len(flat) - 1))]
        flat[draw(st.integers(0, S - 1))] = draw(HOSTILE)
    elif how == "drop":
        kernel = kernel[:-1]
    elif how == "blob":
        kernel = draw(JSON)
    elif how == "scale":
        kernel = (torch.tensor(kernel) * draw(st.floats(0.5, 2.0))).tolist()
    return kernel


def check_fixed_chain(chain, reducible_ok: bool) -> None:
    """References finite and consistent; samples in range; true next-token laws sum to 1."""
    refs = outcome(reference_losses, chain)
    if isinstance(refs, Exception):
        assert reducible_ok and "reducible" in str(refs), refs
        return
    S = chain.n_states
    assert finite(refs["stationary"]) and finite(refs["order_losses"]), refs
    H, L_u = refs["entropy_rate"], refs["unigram_loss"]
    assert math.isfinite(H) and math.isfinite(L_u), refs
    assert -1e-12 <= H <= L_u + 1e-9 <= math.log(S) + 2e-9, refs
    losses = refs["order_losses"]
    assert all(a >= b - 1e-9 for a, b in zip(losses, losses[1:], strict=False)), losses
    assert sum(refs["stationary"]) == pytest.approx(1.0)
    gen = torch.Generator().manual_seed(0)
    tokens = chain.sample(3, 7, generator=gen)
    assert tokens.shape == (3, 7) and int(tokens.min()) >= 0 and int(tokens.max()) < S
    probs = chain.next_token_probs(tokens)
    assert finite(probs) and torch.allclose(probs.sum(-1), torch.ones(3, 7, dtype=probs.dtype))


def check_in_context(chain) -> None:
    losses = outcome(in_context_losses, chain, 5, 4, 0, 1.0)
    if isinstance(losses, Exception):  # Dirichlet draws with no stationary law (tiny alpha)
        assert chain.init == "stationary" and "reducible" in str(losses), losses
        return
    for name in ("uniform", "unigram", "bigram", "bayes", "oracle"):
        assert finite(losses[name]), (name, losses[name])


# ------------------------------------------------------------------------------ chains


def names_one_of(err: Exception, *names: str) -> bool:
    return any(re.search(rf"\b{re.escape(n)}\b", str(err)) for n in names)


def prop_binary(p, q, init):
    chain = outcome(BinaryChain, p, q, init)
    if isinstance(chain, Exception):
        assert names_one_of(chain, "p", "q", "init"), chain
        return
    check_fixed_chain(chain, reducible_ok=False)  # p + q > 0: always a unique law


BINARY = dict(p=maybe(PROB), q=maybe(PROB), init=maybe(st.sampled_from(["stationary", "uniform"])))


@budget(120)
@given(**BINARY)
@example(p=1e-300, q=1e-300, init="stationary")  # nearly reducible: was "reducible"
@example(p=5e-324, q=1e-323, init="stationary")  # subnormal: was pi = (1, 0)
def test_binary_chain(p, q, init):
    prop_binary(p, q, init)


@pytest.mark.slow
@budget(3000, slow=True)
@given(**BINARY)
def test_binary_chain_large(p, q, init):
    prop_binary(p, q, init)


def prop_kernel(kernel, init):
    chain = outcome(KthOrderChain, kernel, init)
    if isinstance(chain, Exception):
        assert names_one_of(chain, "kernel", "init"), chain
        return
    check_fixed_chain(chain, reducible_ok=True)
    if init == "uniform":  # sampling needs no stationary law, reducible or not
        tokens = chain.sample(2, 5, generator=torch.Generator().manual_seed(1))
        assert int(tokens.max()) < chain.n_states


KERNEL = dict(kernel=kernels(), init=maybe(st.sampled_from(["stationary", "uniform"])))


@budget(100)
@given(**KERNEL)
@example(kernel=[[1 - 1e-10, 1e-10], [1e-10, 1 - 1e-10]], init="stationary")
def test_kth_order_kernels(kernel, init):
    prop_kernel(kernel, init)


@pytest.mark.slow
@budget(2000, slow=True)
@given(**KERNEL)
def test_kth_order_kernels_large(kernel, init):
    prop_kernel(kernel, init)


def prop_constructors(which, a, b, c, d):
    make = {
        "lag": lambda: KthOrderChain.lag(a, b, c),
        "symmetric": lambda: KthOrderChain.symmetric(a, b, c),
        "random": lambda: KthOrderChain.random(a, b, c, d),
    }[which]
    chain = outcome(make)
    if isinstance(chain, Exception):
        assert names_one_of(chain, "k", "p", "q", "states", "order", "alpha", "seed"), chain
        return
    check_fixed_chain(chain, reducible_ok=True)


SMALL_INT = st.integers(0, 4)
CONSTRUCTORS = dict(
    which=st.sampled_from(["lag", "symmetric", "random"]),
    a=maybe(SMALL_INT),
    b=maybe(st.one_of(PROB, SMALL_INT)),
    c=maybe(st.one_of(PROB, SMALL_INT, st.floats(1e-3, 10))),
    d=maybe(st.integers(0, 2**64)),
)


@budget(100)
@given(**CONSTRUCTORS)
@example(which="random", a=100, b=5, c=1.0, d=0)  # was a 8 TB allocation (RuntimeError)
@example(which="lag", a=40, b=0.5, c=0.5, d=0)  # was an allocation error
@example(which="random", a=2, b=1, c=1.0, d=2**70)  # was "Overflow when unpacking long long"
def test_kernel_constructors(which, a, b, c, d):
    prop_constructors(which, a, b, c, d)


@pytest.mark.slow
@budget(2000, slow=True)
@given(**CONSTRUCTORS)
def test_kernel_constructors_large(which, a, b, c, d):
    prop_constructors(which, a, b, c, d)


def prop_in_context(states, order, alpha, doubly, init):
    chain = outcome(InContextChain, states, order, alpha, doubly, init)
    if isinstance(chain, Exception):
        assert names_one_of(chain, "states", "order", "alpha", "doubly_stochastic", "init")
        return
    check_in_context(chain)


IN_CONTEXT = dict(
    states=maybe(st.integers(2, 4)),
    order=maybe(st.integers(1, 2)),
    alpha=maybe(st.one_of(st.floats(1e-3, 1e3), st.sampled_from([1e-300, 1e300, 5e-324]))),
    doubly=maybe(st.booleans()),
    init=maybe(st.sampled_from(["stationary", "uniform"])),
)


@budget(60, deadline_ms=10000)
@given(**IN_CONTEXT)
@example(states=1000, order=4, alpha=1.0, doubly=False, init="uniform")  # was RuntimeError
def test_in_context_chain(states, order, alpha, doubly, init):
    prop_in_context(states, order, alpha, doubly, init)


@pytest.mark.slow
@budget(1000, deadline_ms=20000, slow=True)
@given(**IN_CONTEXT)
def test_in_context_chain_large(states, order, alpha, doubly, init):
    prop_in_context(states, order, alpha, doubly, init)


VALID_CHAIN_DICTS = [
    BinaryChain(0.3, 0.6).to_dict(),
    KthOrderChain.lag(2, 0.2, 0.3).to_dict(),
    KthOrderChain.random(3, 1, seed=1).to_dict(),
    InContextChain(3, 1, 0.5).to_dict(),
]
KEYS = ["family", "p", "q", "init", "kernel", "label", "states", "order", "alpha"]
KEYS += ["doubly_stochastic", "extra"]


@st.composite
def chain_dicts(draw):
    """A valid chain dict with 0-3 mutations (a key removed, set to a hostile or JSON value,
    an unknown key added), or a random dict."""
    if draw(st.integers(0, 4)) == 4:
        return draw(st.one_of(JSON, st.dictionaries(st.sampled_from(KEYS), JSON, max_size=5)))
    d = copy.deepcopy(draw(st.sampled_from(VALID_CHAIN_DICTS)))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(KEYS))
        action = draw(st.sampled_from(["drop", "hostile", "json", "family"]))
        if action == "drop":
            d.pop(key, None)
        elif action == "hostile":
            d[key] = draw(HOSTILE)
        elif action == "json":
            d[key] = draw(JSON)
        else:
            d["family"] = draw(maybe(st.sampled_from(FAMILIES), st.one_of(HOSTILE, JSON)))
    return d


def prop_chain_dict(d):
    chain = outcome(chain_from_dict, d)
    if isinstance(chain, Exception):
        return
    assert chain_from_dict(chain.to_dict()) == chain
    json.dumps(chain.to_dict())
    if isinstance(chain, InContextChain):
        check_in_context(chain)
    else:
        check_fixed_chain(chain, reducible_ok=True)


@budget(120, deadline_ms=10000)
@given(d=chain_dicts())
@example(d={"family": ["binary"], "p": 0.5, "q": 0.5})  # was TypeError: unhashable
def test_chain_from_dict(d):
    prop_chain_dict(d)


@pytest.mark.slow
@budget(3000, deadline_ms=20000, slow=True)
@given(d=chain_dicts())
def test_chain_from_dict_large(d):
    prop_chain_dict(d)


# ------------------------------------------------------------------------ model configs

MODEL_FIELDS = [k for k in ModelConfig.paper().to_dict()]
PLAUSIBLE = {
    "d_vocab": st.integers(0, 5),
    "n_ctx": st.integers(0, 12),
    "n_layers": st.integers(0, 3),
    "n_heads": st.integers(0, 4),
    "d_model": st.integers(0, 12),
    "d_head": st.one_of(st.none(), st.integers(0, 6)),
    "d_mlp": st.one_of(st.none(), st.integers(0, 16)),
    "act_fn": st.sampled_from(["gelu", "relu", "tanh"]),
    "normalization_type": st.sampled_from(["LN", None, "RMS"]),
    "ln_eps": st.one_of(st.floats(1e-8, 1e-2), st.sampled_from([0.0, -1.0])),
    "positional_embedding_type": st.sampled_from(["standard", "none", "rotary"]),
    "attn_window": st.one_of(
        st.none(), st.integers(-1, 4), st.lists(st.one_of(st.none(), st.integers(-1, 3)))
    ),
    "init": st.sampled_from(["paper", "theta_pi", "good", "xavier"]),
    "init_range": st.one_of(st.floats(1e-4, 1.0), st.sampled_from([0.0, -0.02])),
}


@st.composite
def model_dicts(draw):
    d = ModelConfig.paper(n_ctx=8).to_dict()
    changed = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(MODEL_FIELDS + ["device", "d_vocabulary", ""]))
        plausible = PLAUSIBLE.get(key, st.booleans())
        d[key] = draw(maybe(plausible, st.one_of(HOSTILE, JSON)))
        changed.append(key)
    return d, changed


def prop_model_config(d_changed):
    d, changed = d_changed
    cfg = outcome(ModelConfig.from_dict, d)
    if isinstance(cfg, Exception):
        assert names_one_of(cfg, *changed, "d_model", "n_heads", "n_layers"), (cfg, changed)
        return
    assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg
    small = cfg.d_model * cfg.d_mlp * cfg.n_layers * cfg.n_heads * cfg.d_head <= 1 << 16
    if small and cfg.n_ctx <= 64 and cfg.init_range <= 1.0:
        from training.model import MarkovTransformer

        model = MarkovTransformer(cfg, seed=0)
        tokens = torch.randint(0, cfg.d_vocab, (2, min(cfg.n_ctx, 8)))
        assert finite(model(tokens))


@budget(80)
@given(d_changed=model_dicts())
@example(d_changed=({**ModelConfig.paper().to_dict(), "init_range": "x"}, ["init_range"]))
@example(d_changed=({**ModelConfig.paper().to_dict(), "init_range": math.inf}, ["init_range"]))
@example(d_changed=({**ModelConfig.paper().to_dict(), "ln_eps": -1.0}, ["ln_eps"]))
@example(d_changed=({**ModelConfig.paper().to_dict(), "tie_embeddings": "no"}, ["tie_embeddings"]))
def test_model_config_from_dict(d_changed):
    prop_model_config(d_changed)


@pytest.mark.slow
@budget(2000, deadline_ms=20000, slow=True)
@given(d_changed=model_dicts())
def test_model_config_from_dict_large(d_changed):
    prop_model_config(d_changed)


# -------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Prepared inputs for file-valued options: good, bad, absent, a directory, a pickle,
    JSON nested 100000 deep, a finished tiny run."""
    root = tmp_path_factory.mktemp("hostile_files")
    f = {
        "kernel_ok": root / "k.json",
        "kernel_3d": root / "k3.json",
        "bad_json": root / "bad.json",
        "strings": root / "strings.json",
        "deep": root / "deep.json",
        "pickle": root / "obj.pkl",
        "empty": root / "empty.yaml",
        "dir": root / "a_dir",
        "missing": root / "missing.json",
        "config_ok": root / "cfg.yaml",
        "config_bad": root / "cfg_bad.yaml",
        "config_list": root / "cfg_list.yaml",
        "yaml_bad": root / "bad.yaml",
    }
    f["kernel_ok"].write_text("[[0.9, 0.1], [0.2, 0.8]]")
    f["kernel_3d"].write_text(json.dumps(KthOrderChain.lag(2, 0.2, 0.3).kernel.tolist()))
    f["bad_json"].write_text("{[")
    f["strings"].write_text('[["a", "b"], ["c", "d"]]')
    f["deep"].write_text("[" * 100_000 + "]" * 100_000)
    f["pickle"].write_bytes(pickle.dumps({"a": [1, 2]}))
    f["empty"].write_text("")
    f["dir"].mkdir()
    f["config_ok"].write_text(
        "chain: {p: 0.3, q: 0.6}\nmodel: {layers: 1, d_model: 4}\n"
        "train: {iters: 2, seq_len: 4, batch: 2, eval_every: 1, eval_batches: 1}\nseed: 1\n"
    )
    f["config_bad"].write_text(
        "chain: {p: 0.3, q: 0.6, order: 0}\nmodel: {ln: 'no', tie: 'yes'}\n"
        "train: {betas: [0.9, x], device: 'cuda:abc'}\nseed: 2020-01-01\n"
    )
    f["config_list"].write_text("- 1\n- 2\n")
    f["yaml_bad"].write_text("chain: {p: [0.1\n")
    return {k: str(v) for k, v in f.items()}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) with captured output; argparse's SystemExit becomes its exit code. Torch's
    thread count (--threads changes it) is restored."""
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        torch.set_num_threads(threads)
    return rc, out.getvalue(), err.getvalue()


def check_cli_outcome(command: str, rc: int, out: str, err: str) -> None:
    event(f"markov-lens {command}: exit {rc}")
    if rc == 2:
        # our error line (its message may go on over lines, e.g. a YAML parser's), or
        # argparse's usage error "markov-lens chain: error: argument --p: ..."
        assert re.search(rf"^markov-lens {command}: error: ", err, re.M), err
        assert "Traceback" not in err, err
        return
    if rc == 1 and command == "train":
        assert "diverged" in err, err  # a run whose loss became NaN/inf stops with exit 1
        return
    assert rc == 0, (rc, err)
    assert not re.search(r"\b(nan|inf|NaN|Infinity)\b", out), out


NUM = ["0", "1", "2", "3", "-1", "x", "1.5", "", "1e3", "99999999999999999999"]
FLOAT = ["0", "1", "0.5", "0.25", "1e-300", "5e-324", "nan", "inf", "-1", "1e300", "x", ""]
SMALL = ["0", "1", "2", "5", "-3", "x"]
CHAIN_ARGS = {
    "--p": FLOAT,
    "--q": FLOAT,
    "--lag": NUM + ["40", "1000000"],
    "--order": NUM + ["60"],
    "--kernel": [
        "kernel_ok",
        "kernel_3d",
        "bad_json",
        "strings",
        "deep",
        "pickle",
        "empty",
        "dir",
        "missing",
    ],
    "--random-kernel": None,
    "--states": NUM + ["1000000", "100"],
    "--stay": FLOAT,
    "--alpha": FLOAT,
    "--init": ["stationary", "uniform", "x"],
    "--seed": NUM + [str(2**70)],
    "--in-context": None,
    "--doubly-stochastic": None,
    "--length": SMALL,
    "--n-sequences": SMALL,
    "--beta": FLOAT,
    "--json": None,
    "--plot": ["png", "dir", "missing_dir", "bad_ext"],
}


CHAIN_MODES = [  # a valid way of naming a chain, which generated flags then add to or break
    [("--p", "0.3"), ("--q", "0.6")],
    [("--lag", "2"), ("--p", "0.2"), ("--q", "0.3")],
    [("--kernel", "kernel_3d")],
    [("--random-kernel", None), ("--states", "3"), ("--order", "2")],
    [("--stay", "0.9"), ("--states", "4")],
    [("--in-context", None), ("--states", "3")],
]


@st.composite
def chain_argv(draw):
    pairs = list(draw(st.sampled_from(CHAIN_MODES))) if draw(st.integers(0, 3)) < 3 else []
    if draw(st.booleans()):
        pairs.append(("--json", None))
    flags = draw(st.lists(st.sampled_from(sorted(CHAIN_ARGS)), max_size=3))
    for flag in flags:
        values = CHAIN_ARGS[flag]
        pairs.append((flag, None if values is None else draw(st.sampled_from(values))))
    return pairs


def _materialise(pairs, files, tmp: Path) -> list[str]:
    argv = []
    for flag, value in pairs:
        argv.append(flag)
        if value is None:
            continue
        if flag in ("--kernel", "--config"):
            value = files[value]
        elif flag == "--plot":
            value = {
                "png": str(tmp / "plot.png"),
                "dir": str(tmp),
                "missing_dir": str(tmp / "no" / "such" / "x.png"),
                "bad_ext": str(tmp / "plot.unknownext"),
            }[value]
        argv.append(value)
    return argv


def prop_chain_cli(pairs, files):
    with tempfile.TemporaryDirectory() as tmp:
        argv = _materialise(pairs, files, Path(tmp))
        if "--in-context" in argv:  # keep the Monte Carlo small; generated values override
            argv = ["--n-sequences", "8", "--length", "6", *argv]
        rc, out, err = run_cli(["chain", *argv])
    check_cli_outcome("chain", rc, out, err)
    if rc == 0 and "--json" in argv:
        assert finite(json.loads(out))


@budget(60, deadline_ms=20000)
@given(pairs=chain_argv())
@example(pairs=[("--random-kernel", None), ("--states", "100"), ("--order", "60")])
@example(pairs=[("--kernel", "dir")])  # was IsADirectoryError
@example(pairs=[("--kernel", "deep")])  # was RecursionError
@example(pairs=[("--p", "1e-300"), ("--q", "1e-300"), ("--json", None)])
def test_chain_cli(pairs, files):
    prop_chain_cli(pairs, files)


@pytest.mark.slow
@budget(1000, deadline_ms=60000, slow=True)
@given(pairs=chain_argv())
def test_chain_cli_large(pairs, files):
    prop_chain_cli(pairs, files)


TRAIN_ARGS = {
    "--p": FLOAT,
    "--q": FLOAT,
    "--order": ["0", "1", "2", "-1", "x", "60"],
    "--states": ["0", "1", "2", "3", "x", "1000000"],
    "--alpha": FLOAT,
    "--chain-init": ["stationary", "uniform", "x"],
    "--layers": ["0", "1", "2", "-1", "x"],
    "--heads": ["0", "1", "2", "3"],
    "--d-model": ["0", "1", "4", "8", "-2", "x"],
    "--d-head": ["0", "1", "4"],
    "--d-mlp": ["0", "1", "8"],
    "--tie": None,
    "--no-tie": None,
    "--no-mlp": None,
    "--no-ln": None,
    "--window": ["none", "0", "1", "-1", "x", "100"],
    "--init": ["paper", "theta_pi", "good", "x"],
    "--init-range": FLOAT,
    "--act-fn": ["gelu", "relu", "x"],
    "--iters": ["0", "1", "2", "3", "-1", "x"],
    "--seq-len": ["0", "1", "2", "4", "-1"],
    "--batch": ["0", "1", "2", "-1"],
    "--lr": FLOAT,
    "--weight-decay": FLOAT,
    "--schedule": ["onecycle", "constant", "x"],
    "--grad-clip": FLOAT,
    "--eval-every": ["0", "1", "2"],
    "--eval-batches": ["0", "1", "2"],
    "--save-every": ["0", "1", "-1"],
    "--checkpoints-per-octave": ["0", "1", "2", "-1"],
    "--device": ["cpu", "auto", "cuda", "cuda:abc", "meta", "cuda:-1", ""],
    "--seed": NUM + [str(2**70)],
    "--resume": None,
    "--force": None,
    "--stop-at": ["-1", "0", "1", "5"],
    "--threads": ["0", "1", "-1"],
    "--json": None,
    "--config": ["config_ok", "config_bad", "config_list", "yaml_bad", "deep", "dir", "missing"],
    "--out": ["fresh", "file", "under_file", "finished", "empty"],
}


@st.composite
def train_argv(draw):
    flags = draw(st.lists(st.sampled_from(sorted(TRAIN_ARGS)), min_size=1, max_size=6))
    pairs = [] if "--config" in flags else [("--p", "0.3"), ("--q", "0.6")]
    for flag in flags:
        values = TRAIN_ARGS[flag]
        pairs.append((flag, None if values is None else draw(st.sampled_from(values))))
    return pairs


def prop_train_cli(pairs, files, finished_run):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        outs = {
            "fresh": tmp / "run",
            "file": tmp / "a_file",
            "under_file": tmp / "a_file" / "run",
            "finished": tmp / "finished",
            "empty": "",
        }
        (tmp / "a_file").write_text("not a run")
        shutil.copytree(finished_run, tmp / "finished")
        out = [v for f, v in pairs if f == "--out"]
        pairs = [(f, v) for f, v in pairs if f != "--out"]
        argv = [
            *("--no-progress --iters 2 --seq-len 4 --batch 2 --eval-every 1".split()),
            *("--eval-batches 1 --d-model 4 --save-every 1".split()),
            *_materialise(pairs, files, tmp),
            "--out",
            str(outs[out[-1]] if out else outs["fresh"]),
        ]
        cwd = os.getcwd()
        os.chdir(tmp)  # `--out ""` must never write into the repository
        try:
            rc, stdout, err = run_cli(["train", *argv])
        finally:
            os.chdir(cwd)
        check_cli_outcome("train", rc, stdout, err)
        if rc == 0 and "paused" not in stdout:
            target = Path(argv[-1])
            summary = json.loads((tmp / target / "summary.json").read_text())
            assert finite(summary["final_eval_loss"]) and finite(summary["entropy_rate"])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    rc, _, err = run_cli(
        "train --p 0.3 --q 0.6 --no-progress --iters 2 --seq-len 4 --batch 2 --eval-every 1 "
        f"--eval-batches 1 --d-model 4 --save-every 1 --out {out}".split()
    )
    assert rc == 0, err
    return out


@budget(25, deadline_ms=60000)
@given(pairs=train_argv())
@example(pairs=[("--p", "0.3"), ("--q", "0.6"), ("--device", "cuda:abc")])  # RuntimeError
@example(pairs=[("--config", "dir")])  # was IsADirectoryError
@example(pairs=[("--p", "0.3"), ("--q", "0.6"), ("--out", "under_file")])  # NotADirectory
@example(pairs=[("--p", "0.3"), ("--q", "0.6"), ("--order", "0")])  # was silently order 1
@example(pairs=[("--p", "0.3"), ("--q", "0.6"), ("--out", "empty")])  # was the cwd
def test_train_cli(pairs, files, finished_run):
    prop_train_cli(pairs, files, finished_run)


@pytest.mark.slow
@budget(400, deadline_ms=120000, slow=True)
@given(pairs=train_argv())
def test_train_cli_large(pairs, files, finished_run):
    prop_train_cli(pairs, files, finished_run)


# ------------------------------------------------------------------------- sweep specs

SPEC_VALUES = {
    "chain": {
        "p": PROB,
        "q": PROB,
        "order": st.integers(0, 3),
        "states": st.integers(0, 4),
        "in_context": st.booleans(),
        "alpha": st.floats(1e-3, 10),
        "doubly_stochastic": st.booleans(),
        "chain_init": st.sampled_from(["stationary", "uniform"]),
        "P": PROB,
        "family": st.sampled_from(FAMILIES),
    },
    "model": {
        "layers": st.integers(0, 3),
        "heads": st.integers(0, 3),
        "d_model": st.integers(0, 8),
        "tie": st.booleans(),
        "mlp": st.booleans(),
        "ln": st.booleans(),
        "window": st.one_of(st.none(), st.integers(-1, 3)),
        "init": st.sampled_from(["paper", "theta_pi", "good"]),
        "n_layers": st.integers(0, 2),
        "d_vocab": st.integers(1, 3),
        "n_ctx": st.integers(1, 32),
        "x": st.integers(),
    },
    "train": {
        "iters": st.integers(0, 10),
        "seq_len": st.integers(0, 16),
        "batch": st.integers(0, 4),
        "lr": st.floats(0, 1),
        "betas": st.lists(st.floats(0, 1), min_size=1, max_size=3),
        "device": st.sampled_from(["cpu", "auto", "cuda:x"]),
        "steps": st.integers(),
    },
}


BASE_SPEC = {
    "chain": {"p": 0.5, "q": 0.8},
    "model": {"layers": 1, "d_model": 4},
    "train": {"iters": 2, "seq_len": 8, "batch": 2},
}


@st.composite
def specs(draw):
    """A small valid spec with 0-2 options per section added, changed to grid axes or to
    hostile values (or the section replaced), hostile seeds, unknown keys, lists of specs."""
    spec: dict = {}
    for section, options in SPEC_VALUES.items():
        sec = dict(BASE_SPEC[section]) if draw(st.integers(0, 3)) < 3 else {}
        for key in draw(st.lists(st.sampled_from(sorted(options)), max_size=2, unique=True)):
            value = draw(maybe(options[key]))
            if draw(st.integers(0, 3)) == 3:  # a grid axis
                value = draw(st.lists(maybe(options[key]), max_size=3))
            sec[key] = value
        if draw(st.integers(0, 5)) < 5:
            spec[section] = draw(maybe(st.just(sec)))
    if draw(st.booleans()):
        spec["seeds"] = draw(
            st.one_of(
                st.integers(-2, 4),
                st.sampled_from([10**9, 2**70]),
                st.lists(st.integers(-1, 4), max_size=3),
                HOSTILE,
            )
        )
    if draw(st.integers(0, 5)) == 5:
        spec[draw(st.sampled_from(["seed", "extra", "Chain"]))] = draw(JSON)
    if draw(st.integers(0, 5)) == 5:
        return [spec, draw(maybe(st.just(spec), JSON))]
    return spec


def prop_spec(spec, tmp: Path):
    tasks = outcome(expand, spec, tmp)
    if isinstance(tasks, Exception):
        return
    runs = (tmp / "runs").resolve()
    seen = set()
    for t in tasks:
        build_run_config(t.options | {"seed": t.seed})
        path = Path(t.run_dir).resolve()
        assert path.parent.parent == runs and path not in seen, t.run_dir  # no ../ escapes
        seen.add(path)
        json.dumps(t.to_dict())


@budget(150)
@given(spec=specs())
@example(spec={"chain": {"p": 0.5, "q": 0.5}, "seeds": 10**9})  # was minutes of expansion
@example(spec={"chain": {"p": 0.5, "q": 0.5, "order": 0}})  # was silently order 1
@example(spec={"chain": {"p": 0.5, "q": 0.5}, "model": {"mlp": "no"}})  # was an MLP
@example(spec={"chain": {"family": ["binary"], "p": 0.5, "q": 0.5}})
def test_sweep_specs(spec, tmp_path):
    prop_spec(spec, tmp_path)


@pytest.mark.slow
@budget(3000, deadline_ms=20000, slow=True)
@given(spec=specs())
def test_sweep_specs_large(spec, tmp_path):
    prop_spec(spec, tmp_path)


DEEP = "[" * 5_000 + "]" * 5_000  # deeper than the interpreter's recursion limit


@budget(80)
@given(text=st.text(max_size=60), suffix=st.sampled_from([".yaml", ".json", ".yml", ".txt"]))
@example(text="DEEP", suffix=".json")  # 5000 nested lists: was RecursionError
@example(text="DEEP", suffix=".yaml")
@example(text="a: &a [1, 2]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b, *b, *b]\n", suffix=".yaml")
def test_spec_files(text, suffix, tmp_path):
    path = tmp_path / f"spec{suffix}"
    path.write_text(DEEP if text == "DEEP" else text)
    doc = outcome(load_spec, path)
    if not isinstance(doc, Exception):
        outcome(expand, doc, tmp_path / "out")


# -------------------------------------------------------- checkpoints and run directories


def _train_tiny_run(root: Path) -> Path:
    rc, _, err = run_cli(
        "train --p 0.3 --q 0.6 --no-progress --iters 4 --seq-len 4 --batch 2 --eval-every 2 "
        f"--eval-batches 1 --d-model 4 --save-every 1 --out {root / 'run'}".split()
    )
    assert rc == 0, err
    return root / "run"


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    return _train_tiny_run(tmp_path_factory.mktemp("good_run"))


def _json_paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _json_paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _json_paths(v, (*prefix, i))


@st.composite
def mutated_json(draw, doc):
    """`doc` with 1-3 nodes replaced by hostile or JSON values, or deleted."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_json_paths(doc))
        path = draw(st.sampled_from(paths))
        value = draw(st.one_of(HOSTILE, JSON))
        if not path:
            doc = value
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.integers(0, 3)) == 0:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return doc


def _no_pickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a loader tried to unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def _fresh_copy(src: Path) -> Path:
    dst = Path(tempfile.mkdtemp()) / src.name
    shutil.copytree(src, dst)
    return dst


@budget(60, deadline_ms=10000)
@given(data=st.data())
def test_checkpoint_manifests(data, good_run, monkeypatch):
    _no_pickle(monkeypatch)
    src = sorted((good_run / "checkpoints").iterdir())[-1]
    manifest = json.loads((src / MANIFEST).read_text())
    bad = data.draw(mutated_json(manifest))
    ckpt = _fresh_copy(src)
    try:
        (ckpt / MANIFEST).write_text(json.dumps(bad))
        got = outcome(read_checkpoint, ckpt)
        model = outcome(load_checkpoint, ckpt, device="cpu")
        if not isinstance(model, Exception):
            assert not isinstance(got, Exception)
            assert isinstance(got.metadata, dict) and finite(list(model.parameters()))
    finally:
        shutil.rmtree(ckpt.parent)


@budget(40, deadline_ms=10000)
@given(data=st.data())
def test_run_directories(data, good_run, monkeypatch):
    _no_pickle(monkeypatch)
    run = _fresh_copy(good_run)
    try:
        which = data.draw(st.sampled_from(["config.json", "summary.json", "metrics.jsonl"]))
        path = run / which
        if which == "metrics.jsonl":
            lines = path.read_text().splitlines()
            i = data.draw(st.integers(0, len(lines) - 1))
            lines[i] = json.dumps(data.draw(mutated_json(json.loads(lines[i]))))
            path.write_text("\n".join(lines) + "\n")
        else:
            path.write_text(json.dumps(data.draw(mutated_json(json.loads(path.read_text())))))
        loaded = outcome(load_run, run)
        if isinstance(loaded, Exception):
            return
        metrics = outcome(loaded.metrics)
        if not isinstance(metrics, Exception):
            assert all(isinstance(m, dict) and isinstance(m.get("step"), int) for m in metrics)
        summary = outcome(loaded.summary)
        if not isinstance(summary, Exception):
            assert isinstance(summary, dict)
        outcome(loaded.model, device="cpu")
    finally:
        shutil.rmtree(run.parent)


@pytest.mark.parametrize(
    "content",
    ["pickle", "torch_save", "random", "empty", "truncated"],
)
def test_checkpoint_files_are_never_unpickled(content, good_run, monkeypatch, tmp_path):
    """Weights or state replaced by a pickle, a torch.save file, random bytes, nothing or
    half the file, with the manifest's checksum fixed to match: refused, never unpickled;
    and loading a good run never calls torch.load or pickle either."""
    import hashlib

    blobs = {
        "pickle": pickle.dumps({"embed.W_E": [1.0, 2.0]}),
        "random": os.urandom(4096),
        "empty": b"",
    }
    buf = io.BytesIO()
    torch.save({"embed.W_E": torch.zeros(2, 4)}, buf)
    blobs["torch_save"] = buf.getvalue()
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    _no_pickle(monkeypatch)
    load_run(run).model(device="cpu")  # a good run: loads without unpickling
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    for name in ("model.safetensors", "state.safetensors"):
        original = (ckpt / name).read_bytes()
        blob = original[: len(original) // 2] if content == "truncated" else blobs[content]
        (ckpt / name).write_bytes(blob)
        manifest = json.loads((ckpt / MANIFEST).read_text())
        manifest["sha256"][name] = hashlib.sha256(blob).hexdigest()
        (ckpt / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match=rf"{name} is not a readable safetensors file"):
            read_checkpoint(ckpt)
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            load_run(run).model(device="cpu")
        (ckpt / name).write_bytes(original)
        manifest["sha256"][name] = hashlib.sha256(original).hexdigest()
        (ckpt / MANIFEST).write_text(json.dumps(manifest))
    # the same through `markov-lens train --resume`: the damaged newest checkpoint is not
    # unpickled either (the run resumes from an older verified one, or refuses)
    (ckpt / "model.safetensors").write_bytes(blobs["pickle"])
    rc, _, err = run_cli(["train", "--resume", "--no-progress", "--out", str(run)])
    assert rc in (0, 2) and "Traceback" not in err
