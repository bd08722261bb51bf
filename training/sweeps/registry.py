"""Sweep backends by name: "local" (training.sweeps.local), "ensemble"
(training.sweeps.ensemble) and "ray" (training.sweeps.ray), and any added with
``register_backend(name, fn)``. The ensemble and Ray backends are imported only when asked
for (``get_backend``): they load the trainer and Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from training.sweeps.local import local_backend

BACKENDS: dict[str, Callable[..., Iterable[dict]]] = {"local": local_backend}
BUILTIN_BACKENDS = ("local", "ensemble", "ray")


def register_backend(name: str, fn: Callable[..., Iterable[dict]]) -> None:
    """Add a backend: fn(run_fn, tasks (dicts), workers) yields one result row per task."""
    BACKENDS[name] = fn


def get_backend(backend: str | Callable[..., Iterable[dict]]) -> Callable[..., Iterable[dict]]:
    """A backend by name ("local"; "ensemble": training.sweeps.ensemble.ensemble_backend;
    "ray": training.sweeps.ray.RayBackend() on RAY_ADDRESS or a private local instance; or
    one added with register_backend), or the backend object itself. Imported only when
    asked."""
    if callable(backend):
        return backend
    if backend in BACKENDS:
        return BACKENDS[backend]
    if backend == "ensemble":
        from training.sweeps.ensemble import ensemble_backend

        return ensemble_backend
    if backend == "ray":
        from training.sweeps.ray import RayBackend

        return RayBackend()
    names = sorted(set(BACKENDS) | set(BUILTIN_BACKENDS))
    raise ValueError(f"unknown backend {backend!r}; available: {names}")
