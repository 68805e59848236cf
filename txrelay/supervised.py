"""One supervised background loop: every periodic task of the daemons runs in one of these.

A loop calls its work every `interval` seconds on a daemon thread. An unexpected exception
in the work is logged at ERROR with the loop's name (a traceback for the first of a streak,
one line for its repeats), counted in txrelay_background_errors_total{loop}, and the loop
goes on: a bug or a bad row must never end a thread for good in silence. The time of the
last run that finished is kept (txrelay_background_loop_last_success_timestamp_seconds) so
that /healthz can tell a dead or frozen loop from a working one (policy/health.py judges).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from txrelay import metrics
from txrelay.policy.health import LoopStatus

log = logging.getLogger("txrelay.loops")

STALE_INTERVALS = 10  # a loop is frozen after this many intervals without a finished run…
STALE_MINIMUM = 60.0  # …and never sooner than this many seconds (a slow PostgreSQL timeout)
RUN_AGAIN = object()  # returned by a work that has more to do now: no wait before the next


class SupervisedLoop:
    """Calls `work` every `interval` seconds until stopped.

    first_run_now: the first call right away (a milter started after an outage replays its
    journal at once), else after one interval. last_run: one more call after stop() (the
    settler, so that a clean shutdown leaves nothing pending). critical: see LoopStatus.
    stop_event: an Event of the caller's that also stops the loop (the tracker's, set by its
    signal handler). A work returning RUN_AGAIN is called again without waiting.
    stale_after: seconds without a successful run before /healthz calls it frozen (default:
    10 intervals, at least STALE_MINIMUM)."""

    def __init__(
        self,
        name: str,
        interval: float,
        work: Callable[[], object],
        *,
        first_run_now: bool = False,
        last_run: bool = False,
        critical: bool = False,
        stop_event: threading.Event | None = None,
        stale_after: float | None = None,
    ) -> None:
        self.name = name
        self.interval = interval
        self.critical = critical
        self.stale_after = stale_after or max(STALE_INTERVALS * interval, STALE_MINIMUM)
        self._work = work
        self._first_run_now = first_run_now
        self._last_run = last_run
        self._stop = stop_event or threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = time.monotonic()
        self._running = False  # inside _run, on its thread or the caller's (run())
        self._last_success: float | None = None
        self._errors = 0
        self._streak = 0
        # The loop's error series at 0 from the start: increase() and alerts need a first sample.
        metrics.BACKGROUND_ERRORS.labels(name)

    def start(self) -> SupervisedLoop:
        self._started = time.monotonic()
        # Running from now on, not from when the new thread is first scheduled: /healthz,
        # already listening while the daemon starts, must not call it dead in between.
        self._running = True
        try:
            self._thread.start()
        except BaseException:
            self._running = False
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to end and wait for it (a run under way finishes first)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def run(self) -> None:
        """Run the loop in the calling thread until stopped (a daemon's main loop)."""
        self._started = time.monotonic()
        self._run()

    def run_once(self) -> object:
        """One supervised call of the work: what it returned, or None when it raised (logged
        and counted)."""
        try:
            result = self._work()
        except Exception as exc:  # noqa: BLE001 - the point of a supervisor: log, count, go on
            self._failed(exc)
            return None
        self._last_success = time.monotonic()
        metrics.BACKGROUND_LAST_SUCCESS.labels(self.name).set(time.time())
        if self._streak:
            log.warning(
                "event=background_loop_recovered loop=%s after_errors=%d", self.name, self._streak
            )
        self._streak = 0
        return result

    def status(self) -> LoopStatus:
        # Before a first finished run, a loop is judged from its start: a first run that
        # hangs is as frozen as a later one.
        reference = self._last_success if self._last_success is not None else self._started
        since = (
            time.monotonic() - reference
            if self._running or self._last_success is not None
            else None
        )
        return LoopStatus(
            self.name, self._running, since, self.stale_after, self._errors, self.critical
        )

    def _failed(self, exc: Exception) -> None:
        self._errors += 1
        self._streak += 1
        metrics.BACKGROUND_ERRORS.labels(self.name).inc()
        if self._streak == 1:
            log.error(
                "event=background_loop_error loop=%s error=%r (the loop goes on)",
                self.name,
                exc,
                exc_info=exc,
            )
        else:
            log.error(
                "event=background_loop_error loop=%s error=%r failures_in_a_row=%d",
                self.name,
                exc,
                self._streak,
            )

    def _run(self) -> None:
        self._running = True
        try:
            self._loop()
        finally:
            self._running = False

    def _loop(self) -> None:
        again = self._first_run_now
        while True:
            if not again and self._stop.wait(self.interval):
                break
            again = self.run_once() is RUN_AGAIN
            if self._stop.is_set():
                break
        if self._last_run:
            self.run_once()


class Loops:
    """The loops of one daemon, for /healthz: created before them, filled as they start."""

    def __init__(self) -> None:
        self._loops: list[SupervisedLoop] = []
        self._lock = threading.Lock()

    def add(self, loop: SupervisedLoop) -> SupervisedLoop:
        with self._lock:
            self._loops.append(loop)
        return loop

    def statuses(self) -> list[LoopStatus]:
        with self._lock:
            loops = list(self._loops)
        return [loop.status() for loop in loops]


BACKOFF_SECONDS = 5.0  # a daemon's wait after its database or Redis went away


def backing_off(
    work: Callable[[], object],
    *,
    outages: tuple[type[Exception], ...],
    disconnect: Callable[[], None],
    stop: threading.Event,
    logger: logging.Logger,
    event: str,
) -> object:
    """One pass of a daemon's main loop that rides out its services going away.

    An outage (one of `outages`) is logged at ERROR as `event=EVENT reason=…`, the daemon's
    connections dropped and BACKOFF_SECONDS waited (less when `stop` is set): None, so the
    loop waits its interval before trying again. Any other exception drops the connections
    too (one may be mid-transaction; the next pass takes fresh ones) and goes on to the
    SupervisedLoop, which logs and counts it. Otherwise what `work` returned."""
    try:
        return work()
    except outages as exc:
        logger.error("event=%s reason=%s", event, exc)
        disconnect()
        stop.wait(BACKOFF_SECONDS)
        return None
    except Exception:
        disconnect()
        raise
