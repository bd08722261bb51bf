"""Nothing lost: sweeps killed mid-run, disks that fill up, permission denied, damaged
checkpoints, and two sweeps on one output directory.

Tiny models train for real (one torch thread, CPU) so that resumed runs can be compared bit
for bit with runs that never stopped.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import training.checkpoints as checkpoints
from markov_lens.cli import main
from training.checkpoints import CheckpointError, read_checkpoint
from training.locks import LOCK_FILE, DirectoryLock, DirectoryLocked, is_locked, read_lock
from training.options import build_run_config
from training.runs import load_run
from training.sweeps import run_sweep
from training.trainer import TIMING_KEYS, train

REPO = Path(__file__).resolve().parents[2]  # tests/training/this file
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


pytestmark = pytest.mark.usefixtures("one_thread")


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def strip_timing(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in metrics]


def uninterrupted(options: dict, seed: int):
    """The same run trained in memory, start to end (the reference for bit equality)."""
    rc = build_run_config(options | {"seed": seed})
    return train(rc.model, rc.chain, rc.train, seed=rc.seed, progress=False)


def file_stats(root: Path) -> dict[str, tuple]:
    """(inode, mtime_ns, size) of every file under root: a rewrite changes one of them."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def wait_for(condition, proc, timeout=240.0, what="") -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: {proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


SLOW_SPEC = {  # 3 runs of a few seconds each, resume checkpoints every 5 updates
    "chain": {"p": 0.5, "q": 0.8},
    "model": {"layers": 1, "d_model": 8},
    "train": {
        "iters": 200,
        "seq_len": 16,
        "batch": 4,
        "eval_every": 40,
        "eval_batches": 1,
        "save_every": 5,
        "device": "cpu",
    },
    "seeds": [0, 1, 2],
}


def sweep_process(spec_path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "markov_lens.cli", "sweep", str(spec_path), "--out", str(out)]
        + ["--workers", "1"],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


# ----------------------------------------------------------------- killed sweeps, locks


def test_two_sweeps_at_once_then_sigkill_mid_run_resumes_bit_identical(tmp_path):
    """Two `markov-lens sweep` processes started at once on one directory: one runs, the
    other refuses (naming the holder). The runner is SIGKILLed once run 0 has finished and
    run 1 has a checkpoint; re-running the sweep takes over the dead sweep's lock, leaves
    run 0's files untouched (same inodes and mtimes), resumes run 1 from its checkpoint to
    the weights and metrics of an uninterrupted run, bit for bit, and trains run 2."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(SLOW_SPEC))
    out = tmp_path / "sweep"
    a, b = sweep_process(spec_path, out), sweep_process(spec_path, out)
    procs = {a.pid: a, b.pid: b}
    try:
        deadline = time.time() + 240
        while time.time() < deadline and all(p.poll() is None for p in procs.values()):
            time.sleep(0.01)
        loser = next((p for p in procs.values() if p.poll() is not None), None)
        assert loser is not None, "neither sweep ended"
        winner = next(p for p in procs.values() if p is not loser)
        err = loser.stderr.read()
        assert loser.returncode == 2, err[-3000:]
        assert f"{out} is locked by PID {winner.pid} on host {socket.gethostname()}" in err, err
        assert "markov-lens sweep: error:" in err and "Traceback" not in err
        assert read_lock(out)["pid"] == winner.pid and is_locked(out)

        wait_for(  # the winner imports the trainer after taking the lock, then makes runs/
            lambda: (out / "runs").is_dir() and any((out / "runs").iterdir()),
            winner,
            what="the first run directory",
        )
        runs = sorted((out / "runs").iterdir())
        assert len(runs) == 1
        run0, run1, run2 = (runs[0] / f"seed{s}" for s in (0, 1, 2))
        wait_for(
            lambda: (
                (run0 / "summary.json").exists() and (run1 / "checkpoints" / "step_000016").exists()
            ),
            winner,
            what="run 0 finished and run 1 checkpointed",
        )
        os.killpg(winner.pid, signal.SIGKILL)
        winner.wait()
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert winner.returncode == -signal.SIGKILL
    assert not (run1 / "summary.json").exists() and not (run2 / "summary.json").exists()
    assert not is_locked(out) and read_lock(out)["pid"] == winner.pid  # a stale record
    finished_files = file_stats(run0)

    with pytest.warns(UserWarning, match=rf"took over a stale lock.*PID {winner.pid}"):
        result = run_sweep(SLOW_SPEC, out, workers=1, progress=False)
    assert [r["status"] for r in result.rows] == ["finished"] * 3
    assert file_stats(run0) == finished_files, "a finished run was redone"
    assert not (out / LOCK_FILE).exists(), "the lock was not released"

    task = json.loads((out / "sweep.json").read_text())["tasks"][1]
    assert task["run_dir"] == str(run1)
    reference = uninterrupted(task["options"], seed=1)
    resumed = load_run(run1)
    assert same_weights(resumed.model(device="cpu"), reference.model)
    assert strip_timing(resumed.metrics()) == strip_timing(reference.metrics)
    steps = [m["step"] for m in resumed.metrics()]
    assert steps == sorted(set(steps)), "interleaved or duplicated metric records"


def test_lock_names_its_holder_is_released_and_detects_stale_locks(tmp_path):
    d = tmp_path / "out"
    with DirectoryLock(d) as lock:
        assert lock.held and is_locked(d) and lock.stale is None
        record = read_lock(d)
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(DirectoryLocked, match=r"is locked by this process") as info:
            DirectoryLock(d).acquire()  # flock is per open file: one process conflicts too
        assert info.value.holder["pid"] == os.getpid()
        assert isinstance(info.value, FileExistsError)  # the CLI prints it as an error line
    assert not (d / LOCK_FILE).exists() and not is_locked(d)

    # a holder killed without releasing: the kernel drops its flock, its record stays
    code = (
        "import os, sys; from training.locks import DirectoryLock; "
        "lock = DirectoryLock(sys.argv[1]).acquire(); print(os.getpid(), flush=True); "
        "os.kill(os.getpid(), 9)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(d)], env=ENV, capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    dead = int(proc.stdout.split()[0])
    assert read_lock(d)["pid"] == dead and not is_locked(d)
    with pytest.warns(UserWarning, match=rf"stale lock.*PID {dead} .*is no longer running"):
        lock = DirectoryLock(d).acquire()
    assert lock.stale["pid"] == dead and read_lock(d)["pid"] == os.getpid()

    # a live holder in another process: refused with its PID, host and command line
    lock.release()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from training.locks import DirectoryLock; "
            "lock = DirectoryLock(sys.argv[1]).acquire(); print('locked', flush=True); "
            "time.sleep(60)",
            str(d),
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryLocked, match=rf"PID {holder.pid} on host .* \(-c .*out\)"):
            DirectoryLock(d).acquire()
        with pytest.raises(FileExistsError, match=f"locked by PID {holder.pid}"):
            run_sweep(SLOW_SPEC, d, workers=1, progress=False)
        assert not (d / "sweep.json").exists(), "the refused sweep wrote into the directory"
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with pytest.warns(UserWarning, match="stale lock"), DirectoryLock(d) as again:
        assert again.stale["pid"] == holder.pid  # free again once the holder is gone
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        DirectoryLock(not_a_dir).acquire()


# ------------------------------------------------------------- disk full, no permission

TINY_RUN = {
    "chain": {"p": 0.5, "q": 0.8},
    "model": {"layers": 1, "d_model": 8},
    "train": {
        "iters": 40,
        "seq_len": 16,
        "batch": 4,
        "eval_every": 10,
        "eval_batches": 1,
        "save_every": 4,
        "device": "cpu",
    },
    "seed": 3,
}


def train_via_cli(out: Path, *extra: str) -> tuple[int, str]:
    import contextlib
    import io

    cfg = out.parent / "cfg.json"
    cfg.write_text(json.dumps(TINY_RUN))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", *extra])
    return rc, err.getvalue()


def verified_checkpoints(run: Path) -> dict[str, int]:
    """Every checkpoint directory of the run, verified (checksums), with its step; no
    temporary directories from interrupted saves may be left."""
    root = run / "checkpoints"
    leftovers = [p.name for p in root.iterdir() if ".tmp-" in p.name or p.name.endswith(".old")]
    assert not leftovers, leftovers
    return {p.name: read_checkpoint(p).step for p in sorted(root.iterdir())}


def failing_after(n_ok: int, error: OSError, real):
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise error
        return real(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize(
    "fault, message",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
    ],
    ids=["disk_full", "permission_denied"],
)
def test_failed_save_is_a_clear_error_and_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, fault, message
):
    """The disk fills up (or the directory stops being writable) in the middle of a run:
    `markov-lens train` stops with one error line naming the checkpoint and the cause, every
    checkpoint already written still verifies, and once the fault is gone `--resume` ends
    bit-identical to a run that never failed. Both faults are injected into the checkpoint
    writer (training.checkpoints.write_safetensors): the tests run as root, which ignores permissions, and
    a real full disk is the tmpfs test below."""
    out = tmp_path / "run"
    # files written: step 0 (weights only: no optimiser state yet), then 2 per checkpoint
    # (steps 1, 2, 4, 8, latest at 12): the 12th file, step 16's weights, fails
    monkeypatch.setattr(
        checkpoints, "write_safetensors", failing_after(11, fault, checkpoints.write_safetensors)
    )
    rc, err = train_via_cli(out)
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("markov-lens train: error: cannot save checkpoint ") and message in line
    assert "intact" in line or "nothing was written" in line
    before = verified_checkpoints(out)
    assert before and not (out / "summary.json").exists()
    monkeypatch.undo()
    rc, err = train_via_cli(out, "--resume")
    assert rc == 0, err
    reference = uninterrupted(
        {k: TINY_RUN[k] for k in ("chain", "model", "train")}, seed=TINY_RUN["seed"]
    )
    run = load_run(out)
    assert same_weights(run.model(device="cpu"), reference.model)
    assert strip_timing(run.metrics()) == strip_timing(reference.metrics)


def test_a_failed_overwrite_keeps_the_previous_resume_checkpoint(tmp_path, monkeypatch):
    """The rolling `latest` checkpoint is replaced atomically: when writing its successor
    fails (disk full), the old one is still there, verified, with its old step."""
    out = tmp_path / "run"
    rc, err = train_via_cli(out, "--stop-at", "20")  # paused: latest at step 20, next save 24
    assert rc == 0, err
    assert verified_checkpoints(out)["latest"] == 20
    monkeypatch.setattr(
        checkpoints,
        "write_safetensors",
        failing_after(0, OSError(errno.ENOSPC, "No space left on device"), None),
    )
    rc, err = train_via_cli(out, "--resume")
    assert rc == 2 and "cannot save checkpoint" in err and "No space left" in err, err
    after = verified_checkpoints(out)
    assert after["latest"] == 20 and not (out / "summary.json").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root")
def test_a_real_full_disk(tmp_path):
    """A 160 KiB tmpfs fills up mid-run: clear error, earlier checkpoints intact; remounted
    larger, the run resumes and ends bit-identical."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mnt / "run"
        rc, err = train_via_cli(out)
        assert rc == 2, err
        assert "No space left on device" in err and "Traceback" not in err, err
        assert verified_checkpoints(out) and not (out / "summary.json").exists()
        subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        rc, err = train_via_cli(out, "--resume")
        assert rc == 0, err
        reference = uninterrupted(
            {k: TINY_RUN[k] for k in ("chain", "model", "train")}, seed=TINY_RUN["seed"]
        )
        assert same_weights(load_run(out).model(device="cpu"), reference.model)
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


# ------------------------------------------------------------------ damaged checkpoints


def paused_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    rc, err = train_via_cli(out, "--stop-at", "20")
    assert rc == 0, err
    assert verified_checkpoints(out)["latest"] == 20
    return out


def damage(ckpt: Path, how: str, tmp_path: Path) -> None:
    weights = ckpt / "model.safetensors"
    if how == "corrupt":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif how == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif how == "other_config":
        other = dict(TINY_RUN, model={"layers": 1, "d_model": 16})
        rc = build_run_config(other)
        from training.model import MarkovTransformer

        meta = read_checkpoint(ckpt).metadata
        shutil.rmtree(ckpt)
        checkpoints.save_checkpoint(ckpt, MarkovTransformer(rc.model, seed=0), metadata=meta)


@pytest.mark.parametrize("how", ["corrupt", "truncated", "other_config"])
def test_damaged_checkpoints_are_refused_saying_which(tmp_path, how):
    """load_run(...).model() refuses a damaged checkpoint with a message naming it and what
    is wrong; `markov-lens train --resume` skips a corrupt or truncated newest checkpoint
    (warning which) and resumes from the previous verified one, bit-identical; a
    checkpoint of another architecture is never trained over: resume refuses it."""
    out = paused_run(tmp_path)
    damage(out / "checkpoints" / "step_000016", how, tmp_path)
    expected = {
        "corrupt": r"step_000016/model.safetensors is corrupt: SHA-256",
        "truncated": r"step_000016/model.safetensors is corrupt: SHA-256",
        "other_config": r"step_000016 is from another config: d_model=16 \(expected 8\)",
    }[how]
    with pytest.raises(CheckpointError, match=expected):
        load_run(out).model(step=16, device="cpu")
    load_run(out).model(step=8, device="cpu")  # the others still load

    latest = out / "checkpoints" / "latest"
    damage(latest, how, tmp_path)
    if how == "other_config":
        rc, err = train_via_cli(out, "--resume")
        assert rc == 2, err
        assert re.search(r"(latest|step_000016) is from another config: d_model=16", err), err
        assert read_checkpoint(latest).config.d_model == 16, "the foreign checkpoint was replaced"
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, err = train_via_cli(out, "--resume")
    assert rc == 0, err
    skipped = [str(w.message) for w in caught if "skipping checkpoint" in str(w.message)]
    assert any("latest" in s and "corrupt" in s for s in skipped), skipped
    reference = uninterrupted(
        {k: TINY_RUN[k] for k in ("chain", "model", "train")}, seed=TINY_RUN["seed"]
    )
    assert same_weights(load_run(out).model(device="cpu"), reference.model)
