"""The tracker's loop: read the log, void what Postfix never queued, run the quota tick."""

from __future__ import annotations

import datetime as dt
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from txrelay import metrics
from txrelay.clock import Clock
from txrelay.config import Config
from txrelay.errors import ServiceUnavailable
from txrelay.notify import Mailer, SmtpMailer
from txrelay.store import database, lifecycle, tracking
from txrelay.store.redis_client import open_redis
from txrelay.store.reporting import AccountCohort
from txrelay.store.tracking import Counters
from txrelay.supervised import RUN_AGAIN, SupervisedLoop, backing_off
from txrelay.tracker.engine import Tracker
from txrelay.tracker.follower import LogFollower
from txrelay.tracker.journal import JournalUnreadable
from txrelay.tracker.sources import SourceChoice, choose_source
from txrelay.tracker.tick import TickResult, run_tick

log = logging.getLogger("txrelay.tracker")
# One pass reads up to 1000 chunks of 256 KiB (engine.run_pass) and may tick: minutes on a
# slow disk or database. Only a pass stuck far longer makes the tracker's /healthz 503.
PASS_STALE_AFTER = 900.0


def node_name(config: Config) -> str:
    """The same name the milter writes to messages.node: queue ids are unique per node."""
    return config.milter.node_name or socket.gethostname()


@dataclass
class RunSummary:
    counters: Counters = field(default_factory=Counters)
    voided: int = 0
    ticks: list[TickResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        c = self.counters
        return {
            "lines_read": c.lines_read,
            "unparsed_lines": c.unparsed_lines,
            "unmatched_events": c.unmatched_events,
            "nrcpt_mismatches": c.nrcpt_mismatches,
            "voided": self.voided,
            "ticks": [t.as_dict() for t in self.ticks],
        }


class TrackerDaemon:
    """Owns the connections; `run` loops until stopped (or one pass with once=True)."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        *,
        log_path: Path | None = None,
        node: str | None = None,
        mailer: Mailer | None = None,
        rotation_grace: float | None = None,
        source: SourceChoice | None = None,
    ) -> None:
        """log_path (--log-path) means that file; else `source`, else [tracker] decides
        (ConfigError when it names no log that is there)."""
        self.config = config
        self.clock = clock
        self.node = node or node_name(config)
        if log_path is not None:
            source = SourceChoice("file", log_path, "", "--log-path is given")
        self.source = source or choose_source(config.tracker)
        self.log_path = self.source.describe()
        self.mailer = mailer or SmtpMailer(config.notify)
        self.rotation_grace = (
            rotation_grace
            if rotation_grace is not None
            else max(2.0, 2 * config.tracker.poll_interval_seconds)
        )
        self.stop = threading.Event()
        self.conn: psycopg.Connection | None = None
        self.redis: redis.Redis = open_redis(config.redis, lazy=True)
        self.tracker: Tracker | None = None
        self.superuser_warning = database.SuperuserWarning("tracker")
        self._next_tick = 0.0
        # The last tick's arrivals and complaints per account, for /metrics (None: no tick yet).
        self.last_day: list[AccountCohort] | None = None

    def connect(self) -> Tracker:
        if self.tracker is None:
            self.conn = database.connect(self.config.database.for_daemons(), autocommit=True)
            self.superuser_warning(self.conn)
            self.tracker = Tracker(
                self.conn,
                self.node,
                self.source.open(self.rotation_grace),
                self.clock,
                self.config.suppression.rules(),
            )
        return self.tracker

    def disconnect(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def run_once(self, summary: RunSummary, tick: bool) -> bool:
        """Read everything there is, then void and tick; True when the log was caught up."""
        tracker = self.connect()
        result = tracker.run_pass()
        summary.counters += result.counters + tracker.apply_kept()
        if result.caught_up and not self._rotation_pending():
            summary.voided += self.void_unconfirmed()
        if tick:
            self.expire_kept()
            assert self.conn is not None
            summary.ticks.append(self._tick())
        return result.caught_up

    def _tick(self) -> TickResult:
        assert self.conn is not None
        result = run_tick(self.conn, self.redis, self.config, self.clock.now(), self.mailer)
        self.last_day = result.last_day
        return result

    def once(self) -> RunSummary:
        """Catch up with the log, void, tick once: what `txrelay tracker --once` does."""
        summary = RunSummary()
        log.info(
            "event=tracker_source node=%s source=%s: %s",
            self.node,
            self.log_path,
            self.source.reason,
        )
        try:
            while not self.run_once(summary, tick=False) or self._rotation_pending():
                time.sleep(0.2)
            self.expire_kept()
            assert self.conn is not None
            summary.ticks.append(self._tick())
        finally:
            self.disconnect()
        return summary

    def _rotation_pending(self) -> bool:
        """Catching up includes the file that replaced a rotated one."""
        return self.tracker is not None and self.tracker.follower.rotation_pending

    def void_unconfirmed(self) -> int:
        """Only once the log is caught up: a lagging tracker must not void what it has
        simply not read yet."""
        assert self.conn is not None
        now = self.clock.now()
        cutoff = now - dt.timedelta(seconds=self.config.tracker.confirm_timeout_seconds)
        with self.conn.transaction():
            voided = tracking.void_unconfirmed(self.conn, self.node, cutoff, now)
        lifecycle.apply_credits(self.redis, self.config.redis.key_prefix, voided.credits)
        if voided.rows:
            log.warning(
                "event=ledger_voided node=%s rows=%d: accepted by the milter but "
                "never queued by Postfix within %ds",
                self.node,
                voided.rows,
                self.config.tracker.confirm_timeout_seconds,
            )
        return voided.rows

    def expire_kept(self) -> int:
        """Kept lines no message claimed within tracking.PENDING_EVENT_RETENTION: Postfix's
        own mail (bounces, local mail), never txrelay's."""
        assert self.conn is not None
        with self.conn.transaction():
            expired = tracking.expire_pending(self.conn, self.node, self.clock.now())
        if expired:
            log.info("event=kept_lines_expired node=%s lines=%d", self.node, expired)
        return expired

    def run(self) -> RunSummary:
        """Until SIGTERM/SIGINT: follow the log, tick every tick_interval_seconds. Each pass
        runs supervised: an unexpected exception is logged at ERROR and counted
        (txrelay_background_errors_total{loop="tracker"}), and the tracker reconnects and
        goes on instead of exiting."""
        summary = RunSummary()
        self._next_tick = 0.0
        log.info(
            "event=tracker_start node=%s source=%s: %s",
            self.node,
            self.log_path,
            self.source.reason,
        )
        loop = SupervisedLoop(
            "tracker",
            self.config.tracker.poll_interval_seconds,
            lambda: self._pass(summary),
            first_run_now=True,
            stop_event=self.stop,
            stale_after=PASS_STALE_AFTER,
        )
        endpoint = metrics.start_tracker_endpoint(
            self.config, self.log_position, lambda: [loop.status()], lambda: self.last_day
        )
        loop.run()
        self.disconnect()
        if endpoint is not None:
            endpoint.close()
        log.info("event=tracker_stop node=%s", self.node)
        return summary

    def _pass(self, summary: RunSummary) -> object:
        """One pass of `run`: RUN_AGAIN while the log is not caught up; an outage of
        PostgreSQL, Redis or the journal backs off (supervised.backing_off)."""
        return backing_off(
            lambda: self._follow(summary),
            outages=(
                psycopg.OperationalError,
                ServiceUnavailable,
                redis.RedisError,
                JournalUnreadable,
            ),
            disconnect=self.disconnect,
            stop=self.stop,
            logger=log,
            event="tracker_backoff",
        )

    def _follow(self, summary: RunSummary) -> object:
        due = time.monotonic() >= self._next_tick
        caught_up = self.run_once(summary, tick=due)
        if due:
            self._next_tick = time.monotonic() + self.config.tracker.tick_interval_seconds
            summary.ticks.clear()
        return None if caught_up else RUN_AGAIN

    def log_position(self) -> metrics.FollowerPosition | None:
        """Where this tracker is in the log, for the metrics endpoint (None while
        disconnected)."""
        tracker = self.tracker
        if tracker is None or not isinstance(tracker.follower, LogFollower):
            return None  # the journal tells no distance in bytes
        return metrics.FollowerPosition(tracker.follower)

    def install_signal_handlers(self) -> None:
        def handle(_signum: int, _frame: object) -> None:
            self.stop.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
