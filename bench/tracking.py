"""The tracker's throughput against the rate Postfix logs at: the bench's Postfix log of one
scenario, applied by the real tracker (txrelay.tracker.engine) to the bench's ledger.

During a scenario the bench notes where Postfix's maillog stood before and after it
(`LogSpan`). Afterwards that part of the log is copied to a file of its own and a tracker
reads it from a fresh cursor (a new tracker_positions row: the copy's path), as fast as it
can, through the same code and transactions as `txrelay tracker`: engine.Tracker.run_pass
with a LogFollower. The ledger rows of that scenario's messages are still 'accepted' (the
bench runs no tracker while it measures), so the tracker does its whole work: qmgr's line
confirms each message, the smtp line records the delivery (and its webhook event), qmgr's
'removed' ends the queue id.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from dataclasses import dataclass
from pathlib import Path

from txrelay.clock import SystemClock
from txrelay.config import Config
from txrelay.policy import logline
from txrelay.store import database
from txrelay.store.tracking import Counters
from txrelay.tracker.daemon import node_name
from txrelay.tracker.engine import Tracker
from txrelay.tracker.follower import LogFollower

TARGET_RATIO = 3.0  # issue 15 item 6: the tracker applies >= 3 x the lines Postfix logs


@dataclass(frozen=True)
class LogSpan:
    """The bytes Postfix logged during one scenario, and how long the scenario took."""

    path: Path
    start: int
    end: int
    elapsed_s: float

    def read(self) -> bytes:
        with self.path.open("rb") as log:
            log.seek(self.start)
            return log.read(self.end - self.start)


def log_offset(path: Path) -> int:
    """Where Postfix's log ends now (0 before it exists)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@dataclass(frozen=True)
class LogRate:
    lines: int
    delivery_lines: int  # smtp's to=<...> status= lines: one per recipient and attempt
    elapsed_s: float

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def delivery_lines_per_s(self) -> float:
        return self.delivery_lines / self.elapsed_s if self.elapsed_s else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"lines": self.lines, "delivery_lines": self.delivery_lines,
                "elapsed_s": round(self.elapsed_s, 3),
                "lines_per_s": round(self.lines_per_s, 1),
                "delivery_lines_per_s": round(self.delivery_lines_per_s, 1)}


def log_rate(span: LogSpan) -> LogRate:
    """Lines (and delivery lines) Postfix logged a second during the scenario."""
    lines = span.read().decode("utf-8", errors="replace").splitlines()
    deliveries = sum(isinstance(logline.parse_line(line), logline.Delivery) for line in lines)
    return LogRate(len(lines), deliveries, span.elapsed_s)


@dataclass(frozen=True)
class TrackerRun:
    """One tracker's pass over a log copy: how long it took and what it recorded."""

    log: LogRate  # the lines it read, and the seconds it took to apply them
    counters: Counters
    transactions: int

    def as_dict(self) -> dict[str, object]:
        c = self.counters
        return {**self.log.as_dict(), "transactions": self.transactions,
                "delivered": c.delivered, "deferred": c.deferred, "bounced": c.bounced,
                "unmatched_events": c.unmatched_events, "unparsed_lines": c.unparsed_lines}


def apply_log(config: Config, span: LogSpan, copy: Path,
              profile_to: Path | None = None) -> TrackerRun:
    """Copy the span to `copy` and let a tracker of the milter's node apply it from a fresh
    cursor, timing only the applying (opening the log and the connection excluded). With
    `profile_to`, under cProfile (slower: for where the time goes, not for the figure),
    its top functions written there."""
    data = span.read()
    copy.write_bytes(data)
    deliveries = sum(isinstance(logline.parse_line(line), logline.Delivery)
                     for line in data.decode("utf-8", errors="replace").splitlines())
    conn = database.connect(config.database.for_daemons(), autocommit=True)
    tracker = Tracker(conn, node_name(config), LogFollower(copy), SystemClock(),
                      config.suppression.rules())
    try:
        if not tracker.resume():
            raise FileNotFoundError(copy)
        profiler = cProfile.Profile() if profile_to else None
        counters, transactions = Counters(), 0
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        while True:
            result = tracker.run_pass(max_chunks=1)
            counters += result.counters
            if result.caught_up:
                break
            transactions += 1
        if profiler:
            profiler.disable()
        elapsed = time.perf_counter() - started
        if profiler and profile_to:
            profile_to.write_text(_top_functions(profiler))
    finally:
        tracker.close()
        conn.close()
    return TrackerRun(LogRate(counters.lines_read, deliveries, elapsed), counters,
                      transactions)


def _top_functions(profiler: cProfile.Profile) -> str:
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).strip_dirs()
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(20)
    return text.getvalue()


@dataclass(frozen=True)
class TrackerFigure:
    """The tracker's rate next to Postfix's log rate of the same scenario."""

    scenario: str  # "10KB/txrelay-unix"
    messages: int
    msg_per_s: float
    logged: LogRate
    applied: TrackerRun
    run_ratios: tuple[float, ...] = ()  # every run's ratio, when this is their median run

    @property
    def ratio(self) -> float:
        logged = self.logged.lines_per_s
        return self.applied.log.lines_per_s / logged if logged else 0.0

    def report(self, with_target: bool = True) -> list[str]:
        logged, applied = self.logged, self.applied.log
        c = self.applied.counters
        return [
            f"   Postfix logged {logged.lines} lines ({logged.delivery_lines} delivery lines) "
            f"in {logged.elapsed_s:.2f} s during {self.scenario} ({self.messages} msgs, "
            f"{self.msg_per_s} msg/s): {logged.lines_per_s:.0f} lines/s, "
            f"{logged.delivery_lines_per_s:.0f} delivery lines/s",
            f"   the tracker applied them from a fresh cursor in {applied.elapsed_s:.2f} s, "
            f"{self.applied.transactions} transactions: {applied.lines_per_s:.0f} lines/s, "
            f"{applied.delivery_lines_per_s:.0f} delivery lines/s (delivered {c.delivered}, "
            f"unmatched {c.unmatched_events}, unparsed {c.unparsed_lines})",
            f"   tracker / log rate = {self.ratio:.2f}"
            + (f" (target >= {TARGET_RATIO:g})" if with_target else "")
            + (f"; run by run: {' '.join(map(str, self.run_ratios))}"
               if len(self.run_ratios) > 1 else ""),
        ]

    def as_dict(self) -> dict[str, object]:
        return {"scenario": self.scenario, "messages": self.messages,
                "msg_per_s": self.msg_per_s, "logged": self.logged.as_dict(),
                "applied": self.applied.as_dict(), "ratio": round(self.ratio, 2),
                "run_ratios": list(self.run_ratios),
                "target": TARGET_RATIO}
