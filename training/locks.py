"""An exclusive lock on an output directory, so two sweeps never write one directory at once.

``with lock_directory(out):`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``out/.markov-lens.lock``
and writes the holder into it (JSON: pid, host, started, command). A second process asking
for the same directory gets ``DirectoryLocked`` (a FileExistsError) naming the holder, at
once: it never waits and never writes a byte into the directory. Release (leaving the block,
or ``release()``) deletes the file; a process that dies without releasing (SIGKILL, power
loss) loses its flock with its last file descriptor, so the next process takes the lock and
reports the record it found as stale (``DirectoryLock.stale``: the dead holder's record).

flock is per open file: the lock is not inherited across exec (Python's descriptors are
close-on-exec) and two acquisitions in one process conflict like two processes. On a shared
filesystem (a Ray cluster's output directory) it needs locks that work across hosts (NFSv4,
CephFS, Lustre mounted with flock); where flock is not supported at all the lock falls back to
the record: a holder alive on this host, or any holder on another host, refuses.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

LOCK_FILE = ".markov-lens.lock"
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class DirectoryLocked(FileExistsError):
    """The directory is locked by another process (or another lock in this one).
    ``holder`` is the holder's record (pid, host, started, command), or {} if unreadable."""

    def __init__(self, message: str, holder: dict[str, Any]):
        super().__init__(message)
        self.holder = holder


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a zombie counts as alive)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _record(purpose: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "purpose": purpose,
        "command": " ".join(sys.argv)[:500],
    }


def _read_record(fd: int) -> dict[str, Any]:
    """The JSON record in the open lock file, or {} if empty or not a record."""
    try:
        data = os.pread(fd, 1 << 16, 0)
        record = json.loads(data.decode())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _holder_record(fd: int, wait: float = 0.5) -> dict[str, Any]:
    """The record of a lock another process holds. A holder writes its record just after it
    takes the lock (truncate, then write): if we read in between, the file is empty, so read
    again for up to `wait` seconds before calling the holder unknown."""
    deadline = time.monotonic() + wait
    record = _read_record(fd)
    while not record and time.monotonic() < deadline:
        time.sleep(0.01)
        record = _read_record(fd)
    return record


def describe_holder(record: dict[str, Any]) -> str:
    """'PID 123 on host h since 2026-01-01T10:00:00+0000 (markov-lens sweep ...)'."""
    if not record:
        return "an unknown process (the lock file holds no readable record)"
    text = f"PID {record.get('pid')} on host {record.get('host')}"
    if record.get("started"):
        text += f" since {record['started']}"
    if record.get("command"):
        text += f" ({record['command']})"
    return text


def read_lock(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The record of the lock file in `directory` (None if there is none). The record
    outlives a holder killed without release; ``is_locked`` says whether it is held."""
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return _read_record(fd)
    finally:
        os.close(fd)


def is_locked(directory: str | os.PathLike) -> bool:
    """Whether some process holds the lock on `directory` now (a shared flock probe)."""
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as err:
        if err.errno not in NO_FLOCK:
            raise
        record = _read_record(fd)
        return bool(record) and (
            record.get("host") != socket.gethostname() or pid_alive(record.get("pid"))
        )
    finally:
        os.close(fd)
    return False


class DirectoryLock:
    """An exclusive, non-blocking lock on `directory` (created if missing). Use it as a
    context manager or call acquire()/release(). After acquire, ``stale`` is the record of
    a previous holder that died without releasing (None if there was none)."""

    def __init__(self, directory: str | os.PathLike, purpose: str = "sweep"):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.purpose = purpose
        self.stale: dict[str, Any] | None = None
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _refuse(self, record: dict[str, Any]) -> DirectoryLocked:
        mine = record.get("pid") == os.getpid() and record.get("host") == socket.gethostname()
        who = "this process" if mine else describe_holder(record)
        return DirectoryLocked(
            f"{self.directory} is locked by {who}: another {record.get('purpose', 'sweep')} is "
            f"writing it. Wait for it to finish or choose another output directory (the lock "
            f"file {self.path} is released when its holder exits, even if it is killed)",
            record,
        )

    def acquire(self) -> DirectoryLock:
        """Take the lock or raise DirectoryLocked naming its holder (never waits)."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this DirectoryLock")
        if self.directory.exists() and not self.directory.is_dir():
            raise FileExistsError(f"{self.directory} exists and is not a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # retry only when a releasing holder unlinked the file under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._flock(fd):
                    continue
                st = os.fstat(fd)
                try:
                    now = os.stat(self.path)
                except FileNotFoundError:
                    now = None
                if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    continue  # we locked a file its holder had already deleted: try again
                previous = _read_record(fd)
                self.stale = previous or None
                if previous:
                    self._warn_stale(previous)
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(_record(self.purpose)) + "\n").encode(), 0)
                os.fsync(fd)
                self._fd, fd = fd, None
                self._ino = (st.st_dev, st.st_ino)
                return self
            finally:
                if fd is not None:
                    os.close(fd)
        raise RuntimeError(f"could not lock {self.path}: it keeps being replaced")

    def _flock(self, fd: int) -> bool:
        """True if `fd` is now locked; raise DirectoryLocked if another holder has it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            raise self._refuse(_holder_record(fd)) from None
        except OSError as err:
            if err.errno not in NO_FLOCK:
                raise
        # no flock on this filesystem: the record decides
        record = _read_record(fd)
        if record and (record.get("host") != socket.gethostname() or pid_alive(record.get("pid"))):
            raise self._refuse(record)
        return True

    def _warn_stale(self, record: dict[str, Any]) -> None:
        here = record.get("host") == socket.gethostname()
        if here and pid_alive(record.get("pid")) and record.get("pid") != os.getpid():
            state = "is running but no longer holds the lock"
        elif here:
            state = "is no longer running"
        else:
            state = "runs on another host, whose lock was released (it ended or was killed)"
        warnings.warn(
            f"{self.path}: took over a stale lock: its holder {describe_holder(record)} {state}",
            stacklevel=3,
        )

    def release(self) -> None:
        """Delete the lock file (if it is still ours) and drop the lock. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            now = os.stat(self.path)
            if (now.st_dev, now.st_ino) == self._ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)  # drops the flock

    def __enter__(self) -> DirectoryLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


def lock_directory(directory: str | os.PathLike, purpose: str = "sweep") -> DirectoryLock:
    """Lock `directory` now (DirectoryLocked if it is held); use as ``with lock_directory(d):``."""
    return DirectoryLock(directory, purpose).acquire()
