"""Progress of a long command, stage by stage, on stderr.

``with Stages("markov-lens report", total=6) as stage:`` then ``stage("attention")`` before
each stage: on a terminal a tqdm bar (stage name, elapsed time); otherwise, e.g. in a log
file, one line per stage (``markov-lens report: [3/6] attention (12 s)``), so that nothing
that can take minutes is silent. A stage's line appears once it has run for ``delay``
seconds (DEFAULT_DELAY), so quick commands, and bad input that fails in its first moments
(one error line, nothing else), print no progress. ``enabled=False`` prints nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

DEFAULT_DELAY = 1.0  # seconds a stage runs before its line is printed


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
