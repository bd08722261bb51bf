"""Progress of a long command, stage by stage, on stderr.

``with Stages("markov-lens report", total=6) as stage:`` then ``stage("attention")`` before
each stage: on a terminal a tqdm bar (stage name, elapsed time); otherwise, e.g. in a log
file, one line per stage (``markov-lens report: [3/6] attention (12 s)``), so that nothing
that can take minutes is silent. A stage's line appears once it has run for ``delay``
seconds (DEFAULT_DELAY), so quick commands, and bad input that fails in its first moments
(one error line, nothing else), print no progress. ``enabled=False`` prints nothing.

Inside one long stage, ``Counter("hessian", "Hessian-vector products")`` counts units of
work: ``counter.total = 330`` once the plan is known, ``counter.advance(n)`` as they are done,
and a line (``hessian: 120/330 Hessian-vector products, 25 s``) at most every ``every``
seconds (DEFAULT_EVERY), the first after ``every`` seconds, so short computations stay silent.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

DEFAULT_DELAY = 1.0  # seconds a stage runs before its line is printed
DEFAULT_EVERY = 5.0  # seconds between a Counter's lines


class Stages:
    def __init__(
        self,
        prog: str,
        total: int,
        enabled: bool = True,
        stream: TextIO | None = None,
        delay: float | None = None,
    ):
        self.prog, self.total, self.enabled = prog, total, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.delay = DEFAULT_DELAY if delay is None else delay
        self.done = 0
        self.t0 = time.perf_counter()
        self._bar = None
        self._timer: threading.Timer | None = None
        self._tty = enabled and self.stream.isatty()

    def __enter__(self) -> Stages:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _line(self, number: int, name: str) -> None:
        elapsed = time.perf_counter() - self.t0
        print(f"{self.prog}: [{number}/{self.total}] {name} ({elapsed:.0f} s)", file=self.stream)
        self.stream.flush()

    def _show_bar(self, name: str) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.prog, file=self.stream, leave=False)
        self._bar.n = self.done - 1
        self._bar.set_description(f"{self.prog}: {name}")

    def __call__(self, name: str) -> None:
        """Stage `name` starts now."""
        if not self.enabled:
            return
        self._cancel()
        self.done += 1
        show = (lambda: self._show_bar(name)) if self._tty else None
        show = show or (lambda n=self.done: self._line(n, name))
        if self.delay <= 0:
            show()
        else:
            self._timer = threading.Timer(self.delay, show)
            self._timer.daemon = True
            self._timer.start()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """The last stage ended (or the command failed): nothing more is printed."""
        self._cancel()
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Counter:
    """Units of work done inside one stage, as a line on stderr at most every ``every``
    seconds (module docstring); ``total`` (None: unknown) may be set or raised on the way,
    ``phase`` names what is being done now. ``enabled=False`` prints nothing."""

    def __init__(
        self,
        prog: str,
        unit: str,
        total: int | None = None,
        enabled: bool = True,
        stream: TextIO | None = None,
        every: float | None = None,
    ):
        self.prog, self.unit, self.total, self.enabled = prog, unit, total, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.every = DEFAULT_EVERY if every is None else every
        self.done = 0
        self.phase: str | None = None
        self.t0 = time.perf_counter()
        self._last = self.t0

    def line(self) -> str:
        """The progress line as it reads now."""
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        phase = f" ({self.phase})" if self.phase else ""
        elapsed = time.perf_counter() - self.t0
        return f"{self.prog}: {count} {self.unit}{phase}, {elapsed:.0f} s"

    def advance(self, n: int = 1) -> None:
        """``n`` more units done; prints the line when ``every`` seconds have passed since
        the last one (or since the start)."""
        self.done += n
        if self.total is not None and self.done > self.total:
            self.total = self.done
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.every:
            self._last = now
            print(self.line(), file=self.stream)
            self.stream.flush()
