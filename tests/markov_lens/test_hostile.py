"""Hostile input in every command and the `ml` front door (issues #27, #28): sizes nobody
could run, specs that are valid YAML but not data, FIFOs and devices, symlink loops, bogus
devices, contradictory or empty flags, runs that are not what they say, runs still
training, failed runs behind exit 0, half-written outputs.

Each case ends in one line `markov-lens CMD: error: ...` with exit code 2 within seconds, and
writes nothing. Commands run in-process through the CLI's main(argv). The property test at
the end drives every command's parser with hostile values and flag combinations.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from markov_lens.cli import main
from tests.training.test_hostile_input import run_cli
from training import limits
from training.checkpoints import MANIFEST
from training.locks import lock_directory
from training.runs import atomic_path, load_run

HUGE = "1000000000000"
DIGITS = "9" * 5000


def snapshot(root: Path) -> set[tuple[str, int]]:
    """Every path under root with its size (what a refused command must leave unchanged)."""
    return {(str(p), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")}


def assert_refused(argv: list[str], expected: str, root: Path, seconds: float = 10.0) -> str:
    """argv exits 2 with one error line holding `expected`, quickly, writing nothing."""
    before = snapshot(root)
    t0 = time.perf_counter()
    rc, _, err = run_cli(argv)
    elapsed = time.perf_counter() - t0
    lines = err.strip().splitlines()
    assert rc == 2, (argv, rc, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    command = next(a for a in argv if not a.startswith("-"))
    assert lines[0].startswith(f"markov-lens {command}: error: "), lines[0]
    assert expected in lines[0], (expected, lines[0])
    assert elapsed < seconds, f"{argv} took {elapsed:.1f} s"
    assert snapshot(root) == before, "a refused command wrote something"
    return lines[0]


@pytest.fixture(scope="module")
def root(tmp_path_factory, one_thread_module):
    """A tiny finished run, and hostile inputs: a FIFO, YAML that is not data, a symlink loop."""
    d = tmp_path_factory.mktemp("hostile")
    rc, _, err = run_cli(
        "train --p 0.3 --q 0.6 --no-progress --iters 4 --seq-len 8 --batch 2 --eval-every 2 "
        f"--eval-batches 1 --d-model 4 --out {d / 'run'}".split()
    )
    assert rc == 0, err
    os.mkfifo(d / "fifo.yaml")
    (d / "ok.yaml").write_text("chain: {p: 0.5, q: 0.8}\ntrain: {iters: 2, seq_len: 8, batch: 2}\n")
    (d / "recursive.yaml").write_text("chain: {p: 0.5, q: 0.8}\nmodel: {window: &r [1, *r]}\n")
    (d / "complex_key.yaml").write_text("chain: {p: 0.5, q: 0.8}\n? [a, b]\n: 1\n")
    laughs = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        laughs.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    (d / "laughs.yaml").write_text("\n".join(laughs) + "\nchain: {p: 0.5, q: 0.8}\n")
    (d / "digits.yaml").write_text(f"chain: {{p: 0.5, q: 0.8}}\nseeds: {DIGITS}\n")
    (d / "layers.yaml").write_text("chain: {p: 0.5, q: 0.8}\nmodel: {layers: [1, 10000]}\n")
    (d / "memory.yaml").write_text(
        "chain: {p: 0.5, q: 0.8}\ntrain: {iters: 2, seq_len: 1000000, batch: 1000}\n"
    )
    (d / "cuda.yaml").write_text("chain: {p: 0.5, q: 0.8}\ntrain: {device: cuda}\n")
    (d / "loop").mkdir()
    os.symlink("b", d / "loop" / "a")
    os.symlink("a", d / "loop" / "b")
    return d


def cases(d: Path) -> list[tuple[list[str], str]]:
    run, out, loop = str(d / "run"), str(d / "out"), str(d / "loop" / "a" / "x")
    train = ["train", "--p", "0.5", "--q", "0.8", "--no-progress", "--out", str(d / "t")]
    theta = ["landscape", "--theta-pi", "--p", "0.5", "--q", "0.8", "--out", out]
    cases = [
        # sizes (#27): caps, and the memory estimate against this machine's memory
        ([*train, "--seq-len", "1000000000"], "seq_len=1000000000 is above the cap"),
        ([*train, "--batch", "10000000"], "batch=10000000 is above the cap"),
        ([*train, "--batch", "1000000"], "training needs about"),
        ([*train, "--d-model", "100000"], "d_model=100000 is above the cap"),
        ([*train, "--heads", "100000", "--d-head", "100000"], "n_heads=100000 is above"),
        ([*train, "--layers", "100000"], "n_layers=100000 is above the cap"),
        ([*train, "--threads", "1000000"], "--threads must be in 1.."),
        ([*train, "--eval-batches", "10000000"], "eval_batches=10000000 is above the cap"),
        ([*train, "--checkpoints-per-octave", "1000000"], "checkpoints_per_octave=1000000"),
        (["attention", run, "--n-seqs", "1000000000", "--out", out], "--n-seqs 1000000000 is"),
        (["attention", run, "--n-seqs", "10000000", "--out", out], "available"),
        (["explain", run, "--n-seqs", "1000000000", "--out", out], "--n-seqs 1000000000 is"),
        (["patch", run, "--n-seqs", "1000000000", "--out", out], "--n-seqs 1000000000 is"),
        (["probe", run, "--n-seqs", "1000000000", "--out", out], "--n-seqs 1000000000 is"),
        (["probe", run, "--positions", "1000000000", "--out", out], "--positions 1000000000"),
        (["probe", run, "--positions", "100", "--out", out], "more than the 8 positions"),
        ([*theta, "--d-model", "100000"], "d_model=100000 is above the cap"),
        ([*theta, "--layers", "100000"], "n_layers=100000 is above the cap"),
        ([*theta, "--n-ctx", "100000000"], "n_ctx=100000000 is above the cap"),
        ([*theta, "--n-ctx", "100000"], "needs about"),
        ([*theta, "--n-sequences", "1000000000"], "--n-sequences 1000000000 is above"),
        (["landscape", run, "--span", "nan", "--out", out], "--span must be a finite"),
        (["landscape", run, "--points", "1000000", "--out", out], "--points 1000000 is above"),
        (["chain", "--in-context", "--length", "100000", "--n-sequences", "100000"], "tokens"),
        (["chain", "--in-context", "--n-sequences", "1000000000"], "--n-sequences 1000000000"),
        (["bench", "--tiny", "--only", "step", "--members", "1000000000"], "--members"),
        (["compare", run, "--n-seqs", "1000000000"], "--n-seqs 1000000000 is above"),
        # specs that are valid YAML but not data, the same in sweep and train --config
        (["sweep", str(d / "recursive.yaml"), "--out", out], "contains itself"),
        (["train", "--config", str(d / "recursive.yaml"), "--out", out], "contains itself"),
        (["sweep", str(d / "complex_key.yaml"), "--out", out], "keys must be strings"),
        (["train", "--config", str(d / "complex_key.yaml"), "--out", out], "keys must be"),
        (["train", "--config", str(d / "laughs.yaml"), "--out", out], "aliases are expanded"),
        (["sweep", str(d / "laughs.yaml"), "--out", out], "aliases are expanded"),
        (["sweep", str(d / "digits.yaml"), "--out", out], "thousands of digits"),
        # files that are not regular, output paths that do not resolve, devices by name
        (["chain", "--kernel", "/dev/zero"], "is a device or socket, not a regular file"),
        (["chain", "--kernel", str(d / "fifo.yaml")], "is a FIFO, not a regular file"),
        (["train", "--config", str(d / "fifo.yaml"), "--out", out], "is a FIFO"),
        (["sweep", str(d / "fifo.yaml"), "--out", out], "is a FIFO"),
        ([*train[:-1], loop], "symlink loop"),
        (["attention", run, "--out", loop], "symlink loop"),
        (["report", run, "--out", loop + ".html"], "symlink loop"),
        (["sweep", str(d / "ok.yaml"), "--out", loop], "symlink loop"),
        (["chain", "--p", "0.5", "--q", "0.8", "--plot", "/dev/full", "--force"], "regular"),
        (["report", run, "--device", "bogus"], "--device 'bogus' is not a device"),
        (["attention", run, "--device", "bogus", "--out", out], "is not a device"),
        (["landscape", run, "--device", "bogus", "--out", out], "is not a device"),
        (["bench", "--device", "bogus"], "is not a device"),
        # contradictory and empty flags (#28)
        (["train", "--resume", "--force", "--out", run], "give one of them, not both"),
        ([*train[:-1], ""], "must not be empty"),
        (["attention", run, "--out", ""], "must not be empty"),
        (["bench", "--only", ""], "--only names no section"),
        # sweep --dry-run checks each run as train would
        (["sweep", str(d / "layers.yaml"), "--out", out, "--dry-run"], "n_layers=10000"),
        (["sweep", str(d / "memory.yaml"), "--out", out, "--dry-run"], "training needs about"),
        # argparse's errors carry the command's name
        ([*train, "--bogus", "1"], "unrecognized arguments: --bogus"),
    ]
    if not torch.cuda.is_available():  # cuda.yaml: written by the fixture
        cases.append(
            (["sweep", str(d / "cuda.yaml"), "--out", out, "--dry-run"], "CUDA is not available")
        )
    return cases


CASE_IDS = [
    f"{i}-{' '.join(a for a in argv[:4] if '/' not in a)}"
    for i, (argv, _) in enumerate(cases(Path("/x")))
]


@pytest.mark.parametrize("i", range(len(CASE_IDS)), ids=CASE_IDS)
def test_refused_in_one_line(root, i):
    argv, expected = cases(root)[i]
    assert_refused(argv, expected, root)


def test_the_memory_refusal_names_the_estimate_and_the_machine(root):
    line = assert_refused(
        ["train", "--p", "0.5", "--q", "0.8", "--batch", "1000000", "--out", str(root / "t")],
        "training needs about",
        root,
    )
    assert " TB " in line and "this machine has" in line and "available" in line
    assert "--allow-large" in line


def test_allow_large_lifts_only_the_estimate(monkeypatch):
    from training.config import ModelConfig
    from training.recipe import TrainConfig

    est = limits.training_estimate(ModelConfig.paper(), TrainConfig.paper(batch=1000000))
    monkeypatch.delenv(limits.ALLOW_LARGE_ENV, raising=False)
    with pytest.raises(limits.TooLarge, match="training needs about"):
        limits.check_fits(est, "training")
    with limits.allow_large():
        limits.check_fits(est, "training")  # the estimate is not checked
        assert os.environ[limits.ALLOW_LARGE_ENV] == "1"  # sweep workers inherit it
        with pytest.raises(ValueError, match="above the cap"):  # the caps still apply
            TrainConfig.paper(seq_len=10**12)
    assert limits.ALLOW_LARGE_ENV not in os.environ


def test_estimates_grow_with_every_size():
    from training.config import ModelConfig
    from training.recipe import TrainConfig

    base = limits.training_estimate(ModelConfig.paper(), TrainConfig.paper()).total
    bigger = [
        (ModelConfig.paper(d_model=64), TrainConfig.paper()),
        (ModelConfig.paper(n_layers=4), TrainConfig.paper()),
        (ModelConfig.paper(n_ctx=4096), TrainConfig.paper(seq_len=4096)),
        (ModelConfig.paper(), TrainConfig.paper(batch=64)),
        (ModelConfig.paper(), TrainConfig.paper(eval_batches=200)),
        (ModelConfig.paper(), TrainConfig.paper(fused_attention=False)),  # [pos, pos] scores
    ]
    for m, t in bigger:
        assert limits.training_estimate(m, t).total > base, (m, t)
    model = __import__("training.model", fromlist=["MarkovTransformer"]).MarkovTransformer
    configs = [ModelConfig.paper(), ModelConfig.paper(tie_embeddings=False, n_layers=2)]
    configs += [ModelConfig.paper(ln_bias=True, linear_bias=True, attn_only=True, n_heads=2)]
    for cfg in configs:
        n = sum(p.numel() for p in model(cfg, seed=0).parameters())
        assert limits.parameter_count(cfg) == n


def test_available_memory_reads_meminfo():
    free = limits.available_memory()
    text = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    line = next((x for x in text.splitlines() if x.startswith("MemAvailable:")), None)
    if line is not None:  # the kernel's figure changes between reads: within 10%
        assert free == pytest.approx(int(line.split()[1]) * 1024, rel=0.1)
    assert free > 0


# ------------------------------------------------------------------------ the front door


def test_front_door_messages(root):
    import markov_lens as ml

    with pytest.raises(ValueError, match="seq_len=1000000000000 is above the cap"):
        ml.TrainConfig(seq_len=10**12)
    with pytest.raises(ValueError, match="got bytes"):
        ml.load_run(str(root / "run").encode())
    with pytest.raises(ValueError, match="step must be an integer"):
        ml.load_run(root / "run").model(step=20.0, device="cpu")


def test_plain_data_names_the_path():
    shared = [1, 2]
    limits.check_plain_data({"a": shared, "b": shared, "c": [1.5, "x", None, True]}, "ok")
    cyclic: list = [1]
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match=r"spec: model\.window\[1\] contains itself"):
        limits.check_plain_data({"model": {"window": cyclic}}, "spec")
    with pytest.raises(ValueError, match=r"key \(1, 2\) at chain is a tuple"):
        limits.check_plain_data({"chain": {(1, 2): 3}}, "spec")
    with pytest.raises(ValueError, match=r"integer at seeds\[0\] has 1024 bits"):
        limits.check_plain_data({"seeds": [2**1023]}, "spec")


def test_input_files_are_regular_and_bounded(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 101)
    with pytest.raises(limits.TooLarge, match="big.json is 101 bytes; at most 100 bytes"):
        limits.read_input_file(big, "--kernel", max_bytes=100)
    os.mkfifo(tmp_path / "fifo")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="is a FIFO"):
        limits.read_input_file(tmp_path / "fifo", "--kernel")
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(FileNotFoundError, match="--kernel .*missing does not exist"):
        limits.read_input_file(tmp_path / "missing", "--kernel")


# -------------------------------------------------------- runs that are not what they say


def _copy_run(root: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    return run


def _rewrite_weights(ckpt: Path, change) -> None:
    """Replace model.safetensors by change(weights), with the manifest's checksum fixed."""
    weights = change(load_file(ckpt / "model.safetensors"))
    save_file(weights, ckpt / "model.safetensors")
    manifest = json.loads((ckpt / MANIFEST).read_text())
    digest = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    manifest["sha256"]["model.safetensors"] = digest
    (ckpt / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("chain", "was trained on the chain"),
        ("int64", "is torch.int64, not floating point"),
        ("nan", "holds NaN or infinite values"),
        ("huge", "reaches 3e+38"),
    ],
)
def test_a_run_is_checked_against_itself(root, tmp_path, damage, expected):
    run = _copy_run(root, tmp_path)
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    if damage == "chain":
        config = json.loads((run / "config.json").read_text())
        config["chain"]["p"] = 0.9
        (run / "config.json").write_text(json.dumps(config))
    else:
        name, value = "embed.W_E", {"nan": float("nan"), "huge": 3e38}.get(damage)

        def change(w):
            if damage == "int64":
                w[name] = w[name].to(torch.int64)
            else:
                w[name] = w[name].clone()
                w[name][0, 0] = value
            return w

        _rewrite_weights(ckpt, change)
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_run(run).model(device="cpu")
    assert_refused(["explain", str(run), "--out", str(tmp_path / "e")], expected, tmp_path)


def test_an_analysis_of_a_run_still_training_is_refused(root, tmp_path):
    run = _copy_run(root, tmp_path)
    with lock_directory(run, purpose="training run"):  # as the trainer holds it
        for argv in (["report", str(run)], ["explain", str(run)], ["attention", str(run)]):
            line = assert_refused(argv, "training run", tmp_path)
            assert str(run) in line
    assert not (run / ".markov-lens.lock").exists()


# ------------------------------------------------------------ failures behind exit 0


def test_a_failed_run_makes_sweep_exit_nonzero(root, tmp_path, monkeypatch, capsys):
    from training import trainer

    real = trainer.train

    def fail_seed_1(*args, **kwargs):
        if kwargs.get("seed") == 1:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train", fail_seed_1)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "chain: {p: 0.5, q: 0.8}\nmodel: {d_model: 4}\n"
        "train: {iters: 2, seq_len: 8, batch: 2, eval_every: 1, eval_batches: 1}\nseeds: 2\n"
    )
    out = tmp_path / "sweep"
    rc = main(["sweep", str(spec), "--out", str(out), "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "failed: " in err and "boom" in err and "1 of 2 runs failed" in err
    assert (out / "results.csv").exists()  # what finished is written
    assert (out / "runs").exists() and len(list((out / "runs").rglob("summary.json"))) == 1


def test_a_failed_run_makes_atlas_exit_nonzero(tmp_path, monkeypatch, capsys):
    """The atlas reads its failures from the sweep's results.csv, written before it returns."""
    import interp.atlas.runner as runner

    def fake_run_atlas(spec, out, *args, **kwargs):
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.csv").write_text(
            "run_dir,status,error\nruns/a/seed0,finished,\nruns/a/seed1,failed,atlas: boom\n"
        )
        return {name: out / name for name in ("atlas_md", "atlas_csv", "cells_csv", "atlas_grid")}

    monkeypatch.setattr(runner, "run_atlas", fake_run_atlas)
    assert main(["atlas", "--preset", "test", "--out", str(tmp_path / "atlas")]) == 1
    err = capsys.readouterr().err
    assert "failed: runs/a/seed1: atlas: boom" in err and "1 of 2 runs failed" in err


# ------------------------------------------------------------------- atomic outputs


def test_a_failed_write_leaves_nothing(tmp_path):
    from matplotlib.figure import Figure

    from markov_lens.cli.options import save_figure

    class Broken(Figure):
        def savefig(self, path, **kwargs):
            Path(path).write_bytes(b"half")  # a disk that fills up half-way
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_figure(Broken(), tmp_path / "attention_example.png")
    assert list(tmp_path.iterdir()) == []  # no 0-byte PNG to block the next run
    with pytest.raises(ValueError, match="an output must be a regular file"):
        with atomic_path("/dev/full"):
            pass
    with atomic_path(tmp_path / "ok.txt") as tmp:
        tmp.write_text("whole")
        assert not (tmp_path / "ok.txt").exists()
    assert (tmp_path / "ok.txt").read_text() == "whole" and len(list(tmp_path.iterdir())) == 1


# --------------------------------------------------- property: every command's parser

SIZE = [HUGE, DIGITS, "-1", "x", ""]
DEVICE = ["bogus", "", "meta", "cuda:abc"]


def hostile_table(d: Path) -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """command -> (a valid base argv, flag -> values every one of which must be refused)."""
    run, out = str(d / "run"), str(d / "out")
    loop = str(d / "loop" / "a" / "x")
    files = [str(d / "fifo.yaml"), "/dev/zero", loop, str(d / "recursive.yaml")]
    files += [str(d / "laughs.yaml"), str(d / "complex_key.yaml"), str(d / "digits.yaml")]
    analysis = {"--n-seqs": SIZE + ["0"], "--seq-len": SIZE + ["0"], "--device": DEVICE}
    analysis |= {"--out": [loop, ""], "--step": ["20.0", "x", "999"]}
    return {
        "train": (
            ["--p", "0.5", "--q", "0.8", "--no-progress", "--out", out],
            {
                **{f: SIZE for f in ("--seq-len", "--batch", "--d-model", "--layers")},
                **{f: SIZE for f in ("--heads", "--iters", "--eval-batches", "--threads")},
                "--checkpoints-per-octave": SIZE,
                "--device": DEVICE,
                "--out": [loop, ""],
                "--config": files,
                "--resume --force": [None],
            },
        ),
        "sweep": ([str(d / "ok.yaml"), "--out", out, "--dry-run"], {"SPEC": files}),
        "chain": (
            ["--in-context"],
            {"--n-sequences": SIZE, "--length": SIZE, "--plot": ["/dev/full", loop, ""]},
        ),
        "attention": ([run, "--out", out], analysis),
        "patch": ([run, "--out", out], analysis),
        "explain": ([run, "--out", out], analysis),
        "probe": (
            [run, "--out", out],
            {"--n-seqs": SIZE, "--positions": SIZE, "--threads": SIZE, "--device": DEVICE},
        ),
        "landscape": (
            ["--theta-pi", "--p", "0.5", "--q", "0.8", "--out", out],
            {
                **{f: SIZE + ["0"] for f in ("--d-model", "--layers", "--n-ctx", "--points")},
                "--n-sequences": SIZE + ["0"],
                "--span": ["nan", "-1", "inf", "x"],
                "--device": DEVICE,
            },
        ),
        "report": ([run, "--out", str(d / "r.html")], {"--device": DEVICE, "--out": [loop]}),
        "compare": ([run, "--out", out], {"--n-seqs": SIZE, "--device": DEVICE}),
        "bench": (
            ["--tiny", "--only", "step"],
            {
                "--members": [HUGE, DIGITS, "x"],
                "--threads": SIZE,
                "--device": DEVICE,
                "--json": ["/dev/full", loop],
            },
        ),
        "atlas": (["--preset", "test", "--out", out], {"--n-seqs": SIZE + ["0"]}),
    }


COMMANDS = sorted(hostile_table(Path("/x")))


@st.composite
def hostile_argv(draw, d: Path):
    command = draw(st.sampled_from(COMMANDS))
    base, flags = hostile_table(d)[command]
    argv = [command, *base]
    for flag in draw(st.lists(st.sampled_from(sorted(flags)), min_size=1, max_size=2)):
        value = draw(st.sampled_from(flags[flag]))
        if flag == "SPEC":
            argv[1] = value
        elif value is None:
            argv += flag.split()
        else:
            argv += [flag, value]
    return argv


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_every_parser_refuses_hostile_values(root, data):
    argv = data.draw(hostile_argv(root))
    assert_refused(argv, "", root)


def test_a_run_under_a_name_that_is_not_utf8_round_trips(tmp_path, one_thread_module):
    """A directory name with bytes no text encoding can write (the file system allows them):
    the run trains, loads (checkpoints are read as bytes, not through safetensors' UTF-8-only
    paths), and every analysis writes its outputs with the name shown as \\xNN."""
    name = os.fsdecode(b"run-\xff")
    run_dir = tmp_path / name
    rc, _, err = run_cli(
        "train --p 0.3 --q 0.6 --no-progress --iters 4 --seq-len 8 --batch 2 --eval-every 2 "
        "--eval-batches 1 --d-model 4 --out".split()
        + [str(run_dir)]
    )
    assert rc == 0, err
    run = load_run(run_dir)
    assert run.model().cfg.d_model == 4 and run.summary()["steps"] == 4
    for argv in (
        ["explain", str(run_dir)],
        ["report", str(run_dir), "--no-landscape"],
        ["compare", str(run_dir), str(run_dir), "--out", str(tmp_path / "cmp")],
        ["attention", str(run_dir), "--out", str(tmp_path / "att")],
    ):
        rc, out, err = run_cli(argv)
        assert rc == 0, (argv, err)
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "run-\\xff" in report
