"""A training.sweeps backend that runs a sweep on Ray (one machine or a cluster).

``run_sweep(spec, out, backend=RayBackend(address=...))`` (CLI: ``markov-lens sweep SPEC
--backend ray [--address ADDR]``) sends every pending run to Ray as one task (with
``ensemble=True``, runs of one architecture and recipe go as one task that trains them
together, training.sweeps.ensemble). The spec, the run directories, the resume logic and the
aggregate are the sweep's own: each Ray task calls the sweep's ``run_task`` on its run, so a
run trains exactly as with the local backend (one torch thread per CPU the task asks for)
and the results table is the same.

Where Ray runs:
  address None   ``RAY_ADDRESS`` if set, else a private local instance with `workers` CPUs,
                 shut down when the sweep ends;
  "auto"         the cluster this machine belongs to (``ray start``);
  "HOST:PORT"    a cluster's head node (the GCS port, 6379 by default), or
  "ray://HOST:10001"  through Ray Client.
A Ray instance already initialised in this process (``ray.init`` called by the caller) is
used as it is and left running.

Every worker must import the same markov-lens (install it on every node) and see the output
directory at the same path (a shared filesystem): the backend writes a marker file next to the
run directories and each task checks it can read it, so a node without the shared directory
fails its runs with an error that says so instead of writing checkpoints nowhere useful.
A worker killed mid-run is retried by Ray (max_retries) and the retry resumes the run from
its last checkpoint (run_task resumes), ending bit-identical on CPU.

Ray is imported only when the backend runs: the package works without it
(``pip install 'markov-lens[ray]'`` adds it).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.sweeps.tasks import result_row

INSTALL_HINT = "pip install 'markov-lens[ray]'"
MARKER_PREFIX = ".markov-lens-ray-"


def import_ray():
    """The ray module, or a ValueError saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ValueError(
            f"the ray backend needs Ray, which is not installed ({err}); install the extra: "
            f"{INSTALL_HINT}"
        ) from None
    return ray


@dataclass
class RayBackend:
    """Run sweep tasks as Ray tasks; called by run_sweep as backend(run_fn, tasks, workers).

    address: where Ray runs (see the module docstring). cpus_per_task / gpus_per_task: the
    Ray resources each task asks for (its torch threads = cpus_per_task). max_in_flight:
    tasks submitted at once (None: all; Ray queues them by free resources). ensemble: train
    runs of one shape together, one Ray task per ensemble. max_retries: Ray's retries of a
    task whose worker died (each retry resumes from the last checkpoint). init_kwargs:
    extra ray.init arguments (runtime_env, namespace, ...).
    """

    address: str | None = None
    cpus_per_task: int = 1
    gpus_per_task: float = 0.0
    max_in_flight: int | None = None
    ensemble: bool = False
    max_retries: int = 3
    init_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.address is not None and (not isinstance(self.address, str) or not self.address):
            raise ValueError(f"address must be a non-empty string or None, got {self.address!r}")
        if isinstance(self.cpus_per_task, bool) or not (
            isinstance(self.cpus_per_task, int) and self.cpus_per_task >= 1
        ):
            raise ValueError(f"cpus_per_task must be an integer >= 1, got {self.cpus_per_task!r}")
        if not (isinstance(self.gpus_per_task, (int, float)) and 0 <= self.gpus_per_task):
            raise ValueError(f"gpus_per_task must be a number >= 0, got {self.gpus_per_task!r}")
        if self.max_in_flight is not None and (
            isinstance(self.max_in_flight, bool)
            or not isinstance(self.max_in_flight, int)
            or self.max_in_flight < 1
        ):
            raise ValueError(f"max_in_flight must be an integer >= 1, got {self.max_in_flight!r}")
        if isinstance(self.max_retries, bool) or not (
            isinstance(self.max_retries, int) and self.max_retries >= 0
        ):
            raise ValueError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------------------ Ray
    def _connect(self, ray, workers: int) -> bool:
        """ray.init as configured; True if this call started Ray (and must shut it down)."""
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"include_dashboard": False} | dict(self.init_kwargs)
        address = self.address
        if address is None and not os.environ.get("RAY_ADDRESS"):
            address = "local"
            kwargs.setdefault("num_cpus", max(workers, self.cpus_per_task))
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as err:
            raise ValueError(f"cannot connect to the Ray cluster at {address!r}: {err}") from None
        return True

    def __call__(
        self, run_fn: Callable[[dict], dict], tasks: list[dict], workers: int
    ) -> Iterator[dict]:
        """Yield one result row per task as Ray finishes them (see the class docstring)."""
        if not tasks:
            return
        ray = import_ray()
        started = self._connect(ray, workers)
        marker = None
        refs: dict[Any, list[dict]] = {}
        try:
            remote = ray.remote(_run_unit).options(
                num_cpus=self.cpus_per_task,
                num_gpus=self.gpus_per_task,
                max_retries=self.max_retries,
                retry_exceptions=False,
            )
            shared = [_absolute(t) for t in tasks]
            marker, token = _write_marker(shared)
            units = self._units(shared)
            originals = {t["run_dir"]: o for t, o in zip(shared, tasks, strict=True)}
            cap = self.max_in_flight or len(units)
            queue = list(units)
            while queue or refs:
                while queue and len(refs) < cap:
                    unit = queue.pop(0)
                    ref = remote.remote(run_fn, unit, self.cpus_per_task, marker, token)
                    refs[ref] = unit
                (done,), _ = ray.wait(list(refs), num_returns=1)
                unit = refs.pop(done)
                try:
                    rows = ray.get(done)
                except ray.exceptions.RayError as err:
                    rows = [_failed_row(t, f"Ray task failed: {_ray_error(err)}") for t in unit]
                for row in rows:
                    original = originals[row["run_dir"]]
                    row["run_dir"] = original["run_dir"]  # the sweep's own spelling
                    yield row
        finally:
            for ref in refs:  # interrupted: do not leave runs training for nobody
                ray.cancel(ref, force=True)
            if marker is not None:
                Path(marker).unlink(missing_ok=True)
            if started:
                ray.shutdown()

    def _units(self, tasks: list[dict]) -> list[list[dict]]:
        """Lists of tasks, one per Ray task: ensembles of one shape (ensemble=True), else
        one run each."""
        if not self.ensemble:
            return [[t] for t in tasks]
        from training.sweeps.ensemble import plan_groups

        groups, rest = plan_groups(tasks)
        return groups + [[t] for t in rest]


# ------------------------------------------------------------------ in the Ray worker


def _run_unit(
    run_fn: Callable[[dict], dict], tasks: list[dict], threads: int, marker: str, token: str
) -> list[dict]:
    """Run one unit in a Ray worker: check the shared directory, train (an ensemble
    first, if several tasks), and return run_fn's row for each task."""
    import torch

    try:
        seen = Path(marker).read_text()
    except OSError:
        seen = None
    if seen != token:
        where = socket.gethostname()
        error = (
            f"ValueError: the output directory {Path(marker).parent} is not shared with Ray "
            f"node {where} (it cannot read {Path(marker).name}); every node must mount the "
            "output directory at the same path"
        )
        return [_failed_row(t, error) for t in tasks]
    torch.set_num_threads(threads)
    if len(tasks) > 1:
        from training.sweeps.ensemble import run_group

        try:
            run_group(tasks)
        except Exception as err:  # noqa: BLE001 - each run is retried alone below
            warnings.warn(
                f"ensemble of {len(tasks)} runs failed ({type(err).__name__}: {err}); "
                "training them one by one",
                stacklevel=2,
            )
    return [run_fn(t) for t in tasks]


# ---------------------------------------------------------------------------- helpers


def _absolute(task: dict) -> dict:
    """The task with an absolute run_dir (workers do not share the driver's cwd)."""
    return dict(task, run_dir=os.path.abspath(task["run_dir"]))


def _write_marker(tasks: list[dict]) -> tuple[str, str]:
    """A file with a random token in the deepest directory holding every run directory."""
    root = Path(os.path.commonpath([t["run_dir"] for t in tasks]))
    if len(tasks) == 1:
        root = root.parent
    root.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    path = root / f"{MARKER_PREFIX}{token[:12]}"
    path.write_text(token)
    return str(path), token


def _failed_row(task: dict, error: str) -> dict[str, Any]:
    return result_row(task, None, error=error)


def _ray_error(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"
