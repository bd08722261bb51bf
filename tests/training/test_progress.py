"""training.progress: a line per stage in logs, only for stages that run long enough, and
nothing after the command ends."""

from __future__ import annotations

import io
import time

from training.progress import Counter, Stages


def test_a_line_per_stage_that_runs_past_the_delay():
    out = io.StringIO()
    with Stages("markov-lens x", 3, stream=out, delay=0.05) as stage:
        stage("quick")  # ends before its line is due
        stage("slow")
        time.sleep(0.2)
        stage("last")
    time.sleep(0.1)  # the last stage ended with the block: its line never comes
    lines = [ln.split(" (")[0] for ln in out.getvalue().splitlines()]
    assert lines == ["markov-lens x: [2/3] slow"]


def test_a_failure_in_the_first_moments_prints_no_progress():
    out = io.StringIO()
    try:
        with Stages("markov-lens x", 2, stream=out, delay=0.05) as stage:
            stage("checking the input")
            raise ValueError("bad input")
    except ValueError:
        pass
    time.sleep(0.1)
    assert out.getvalue() == ""


def test_disabled_and_immediate():
    out = io.StringIO()
    with Stages("p", 2, stream=out, enabled=False) as stage:
        stage("a")
    with Stages("p", 2, stream=out, delay=0) as stage:
        stage("a")
        stage("b")
    assert [ln.split(" (")[0] for ln in out.getvalue().splitlines()] == ["p: [1/2] a", "p: [2/2] b"]


def test_a_counter_prints_at_most_every_so_often_and_raises_its_total():
    out = io.StringIO()
    counter = Counter("hessian", "Hessian-vector products", total=4, stream=out, every=0.05)
    counter.advance(2)  # before `every` has passed: silent
    assert out.getvalue() == ""
    time.sleep(0.08)
    counter.phase = "Lanczos"
    counter.advance(3)  # 5 > 4: the total follows the count
    counter.advance(1)  # right after a line: silent
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "hessian: 5/5 Hessian-vector products (Lanczos), "
    )
    assert lines[0].endswith(" s") and counter.line().startswith("hessian: 6/6 ")
    Counter("x", "steps", stream=out, every=0, enabled=False).advance(1)
    assert len(out.getvalue().splitlines()) == 1
