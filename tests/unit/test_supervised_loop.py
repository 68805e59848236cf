"""The supervised background loop: survives its work's exceptions, logs and counts them,
keeps its last success, stops promptly, and tells /healthz when it is dead or frozen."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from txrelay import metrics
from txrelay.supervised import BACKOFF_SECONDS, RUN_AGAIN, Loops, SupervisedLoop, backing_off


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def errors_counted(loop: str) -> float:
    return metrics.REGISTRY.get_sample_value("txrelay_background_errors_total",
                                             {"loop": loop}) or 0.0


def test_a_loop_whose_work_raises_logs_error_counts_it_and_keeps_running(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def work() -> None:
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError("a bad row")

    before = errors_counted("unit-raises")
    loop = SupervisedLoop("unit-raises", 0.01, work)
    with caplog.at_level(logging.ERROR, logger="txrelay.loops"):
        loop.start()
        wait_for(lambda: len(calls) >= 6)
        loop.stop()
    assert errors_counted("unit-raises") - before == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3 and all("loop=unit-raises" in r.getMessage() for r in errors)
    assert errors[0].exc_info is not None  # the traceback, once per streak
    assert errors[1].exc_info is None and "failures_in_a_row=2" in errors[1].getMessage()
    status = loop.status()
    assert status.errors == 3 and status.since_success is not None
    assert metrics.REGISTRY.get_sample_value(
        "txrelay_background_loop_last_success_timestamp_seconds",
        {"loop": "unit-raises"}) == pytest.approx(time.time(), abs=5)


def test_the_first_run_waits_one_interval_unless_asked_to_run_now() -> None:
    ran = threading.Event()
    later = SupervisedLoop("unit-later", 30.0, ran.set).start()
    time.sleep(0.1)
    later.stop()
    assert not ran.is_set()
    now = SupervisedLoop("unit-now", 30.0, ran.set, first_run_now=True).start()
    assert ran.wait(2)
    now.stop()


def test_stop_is_prompt_and_a_last_run_happens_when_asked() -> None:
    calls: list[float] = []
    loop = SupervisedLoop("unit-stop", 60.0, lambda: calls.append(time.monotonic()),
                          last_run=True).start()
    started = time.monotonic()
    loop.stop()
    assert time.monotonic() - started < 1.0
    assert len(calls) == 1  # the last run, not an interval's
    assert not loop.status().alive


def test_a_loop_counts_as_running_from_start_not_from_when_its_thread_is_scheduled() -> None:
    """/healthz listens while the daemon starts its loops: a loop started a moment ago whose
    thread has not run a line yet is not dead (CI once caught /healthz in that moment)."""
    loop = SupervisedLoop("unit-starting", 0.01, lambda: None)
    gate = threading.Event()
    run = loop._run
    loop._thread = threading.Thread(target=lambda: (gate.wait(5), run()), daemon=True)
    loop.start()
    try:
        assert loop.status().problem() is None
    finally:
        gate.set()
        loop.stop()
    assert loop.status().problem() == "its thread is not running"


def test_a_stopped_loop_is_reported_as_not_running() -> None:
    loop = SupervisedLoop("unit-dead", 0.01, lambda: None).start()
    loop.stop()
    assert loop.status().problem() == "its thread is not running"


def test_a_loop_stuck_in_its_work_is_frozen_after_its_stale_time() -> None:
    release = threading.Event()
    loop = SupervisedLoop("unit-stuck", 0.01, lambda: release.wait(10), first_run_now=True)
    loop.stale_after = 0.2
    loop.start()
    try:
        wait_for(lambda: loop.status().problem() is not None)
        problem = loop.status().problem()
        assert problem is not None and problem.startswith("no successful run for")
    finally:
        release.set()
        loop.stop()


def test_a_working_loop_has_no_problem_and_the_registry_lists_it() -> None:
    loops = Loops()
    loop = loops.add(SupervisedLoop("unit-ok", 0.01, lambda: None, critical=True)).start()
    try:
        wait_for(lambda: loop.status().since_success is not None)
        [status] = loops.statuses()
        assert (status.name, status.alive, status.critical, status.problem()) == (
            "unit-ok", True, True, None)
    finally:
        loop.stop()


def test_run_again_skips_the_wait_and_a_callers_event_stops_a_loop_run_in_place() -> None:
    stop = threading.Event()
    calls: list[int] = []

    def work() -> object:
        calls.append(1)
        if len(calls) == 5:
            stop.set()
        return RUN_AGAIN

    started = time.monotonic()
    SupervisedLoop("unit-again", 60.0, work, first_run_now=True, stop_event=stop).run()
    assert len(calls) == 5 and time.monotonic() - started < 1.0


def test_a_loop_run_in_the_callers_thread_counts_as_running_until_it_returns() -> None:
    stop = threading.Event()
    seen: list[bool] = []
    loops = Loops()

    def work() -> None:
        seen.extend(status.alive for status in loops.statuses())
        stop.set()

    loop = loops.add(SupervisedLoop("unit-in-place", 0.01, work, stop_event=stop))
    loop.run()
    assert seen == [True] and not loop.status().alive


class _Outage(Exception):
    pass


class _StopWatch(threading.Event):
    """A stop event that records the waits asked of it instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return False


def test_backing_off_rides_out_an_outage_and_passes_a_bug_on(
        caplog: pytest.LogCaptureFixture) -> None:
    dropped: list[bool] = []
    stop = _StopWatch()
    logger = logging.getLogger("txrelay.test-daemon")

    def passing(work: Callable[[], object]) -> object:
        return backing_off(work, outages=(_Outage,), disconnect=lambda: dropped.append(True),
                           stop=stop, logger=logger, event="test_backoff")

    assert passing(lambda: RUN_AGAIN) is RUN_AGAIN
    assert (dropped, stop.waits) == ([], [])

    def outage() -> object:
        raise _Outage("database gone")

    with caplog.at_level(logging.ERROR, logger="txrelay.test-daemon"):
        assert passing(outage) is None
    assert (dropped, stop.waits) == ([True], [BACKOFF_SECONDS])
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("txrelay.test-daemon", logging.ERROR, "event=test_backoff reason=database gone")]

    def bug() -> object:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        passing(bug)
    assert (dropped, stop.waits) == ([True, True], [BACKOFF_SECONDS])
