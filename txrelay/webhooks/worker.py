"""`txrelay webhooks run`: claim due outbox rows, POST them signed, record what came back.

A few deliveries run at once on a thread pool (`[webhooks] concurrency`); the database is
used by the loop's thread only. Each claimed row carries a lease (its next_attempt_at moved
past the delivery timeout), so a worker that dies mid-delivery leaves the row to another
attempt, and workers on several nodes never take the same row (SKIP LOCKED).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import signal
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from txrelay import metrics
from txrelay.clock import Clock
from txrelay.config import Config
from txrelay.errors import InvalidInput, ServiceUnavailable
from txrelay.kek import WEBHOOK_SECRET_AAD, KeyRing, is_sealed
from txrelay.policy.webhooks import RetryPlan
from txrelay.provisioning.dns_lookup import DnsLookup
from txrelay.store import database
from txrelay.store import webhooks as store
from txrelay.supervised import RUN_AGAIN, SupervisedLoop, backing_off
from txrelay.webhooks.delivery import Outcome, Resolver, post

log = logging.getLogger("txrelay.webhooks")
LEASE_MARGIN = dt.timedelta(seconds=60)  # beyond the timeout: a claimed row stays ours


@dataclass
class WorkerSummary:
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "delivered": self.delivered,
            "retried": self.retried,
            "failed": self.failed,
            "refused": self.refused,
        }


def retry_plan(config: Config) -> RetryPlan:
    settings = config.webhooks
    return RetryPlan(
        dt.timedelta(seconds=settings.retry_first_seconds),
        dt.timedelta(seconds=settings.retry_max_seconds),
        dt.timedelta(seconds=settings.give_up_after_seconds),
    )


class WebhookWorker:
    """Owns the database connection and the delivery pool; `run` until stopped, or `once`."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        *,
        resolver: Resolver | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.settings = config.webhooks
        self.plan = retry_plan(config)
        self.resolver = resolver or DnsLookup(config.dns)
        self.tls_context = tls_context
        self.keys = _key_ring(Path(config.database.kek_file))
        self.stop = threading.Event()
        self.pool = concurrent.futures.ThreadPoolExecutor(
            self.settings.concurrency, thread_name_prefix="webhook"
        )
        self.in_flight: dict[concurrent.futures.Future[Outcome], store.Claimed] = {}
        self.conn: psycopg.Connection | None = None
        self.summary = WorkerSummary()

    # -- one pass ---------------------------------------------------------------------------

    def deliver_pass(self) -> object:
        """Record finished deliveries, claim rows for the free slots, wait a moment for one
        to finish. RUN_AGAIN while deliveries are under way or more rows were due."""
        conn = self._connect()
        self._record_finished(conn)
        free = self.settings.concurrency - len(self.in_flight)
        claimed: list[store.Claimed] = []
        if free > 0 and not self.stop.is_set():
            lease = dt.timedelta(seconds=self.settings.timeout_seconds) + LEASE_MARGIN
            with conn.transaction():
                claimed = store.claim_due(conn, self.clock.now(), free, lease)
            for row in claimed:
                self.in_flight[self.pool.submit(self._deliver, row)] = row
        if not self.in_flight:
            return None
        concurrent.futures.wait(
            list(self.in_flight),
            timeout=self.settings.poll_interval_seconds,
            return_when=concurrent.futures.FIRST_COMPLETED,
        )
        self._record_finished(conn)
        return RUN_AGAIN

    def _deliver(self, row: store.Claimed) -> Outcome:
        """On a pool thread: no database here."""
        try:
            secret = self._secret(row.secret)
        except InvalidInput as exc:
            return Outcome(None, f"cannot open the webhook's secret: {exc}")
        return post(
            row.url,
            row.payload,
            str(row.event_id),
            secret,
            resolver=self.resolver,
            allow_private=row.allow_private,
            timeout=self.settings.timeout_seconds,
            context=self.tls_context,
        )

    def _secret(self, stored: str) -> str:
        if not is_sealed(stored):
            return stored
        if self.keys is None:
            raise InvalidInput(f"it is sealed and {self.config.database.kek_file} is missing")
        return self.keys.open(stored, aad=WEBHOOK_SECRET_AAD)

    def _record_finished(self, conn: psycopg.Connection) -> None:
        done = [future for future in self.in_flight if future.done()]
        for future in done:
            row = self.in_flight.pop(future)
            with conn.transaction():
                self._record(conn, row, future.result())

    def _record(self, conn: psycopg.Connection, row: store.Claimed, outcome: Outcome) -> None:
        now = self.clock.now()
        if outcome.delivered:
            assert outcome.status is not None
            store.mark_delivered(conn, row.id, outcome.status, now)
            self.summary.delivered += 1
            metrics.WEBHOOK_ATTEMPTS.labels("delivered").inc()
            log.info(
                "event=webhook_delivered webhook_id=%d event=%s event_id=%s status=%d attempts=%d",
                row.webhook_id,
                row.event,
                row.event_id,
                outcome.status,
                row.attempts,
            )
            return
        error = outcome.error or f"HTTP {outcome.status}"
        if outcome.refused:
            self.summary.refused += 1
            metrics.WEBHOOK_ATTEMPTS.labels("refused").inc()
        next_attempt = self.plan.next_attempt(row.created_at, row.attempts, now)
        if next_attempt is None:
            store.mark_failed(conn, row.id, outcome.status, error, now)
            self.summary.failed += 1
            metrics.WEBHOOK_ATTEMPTS.labels("failed").inc()
            log.warning(
                "event=webhook_failed webhook_id=%d event=%s event_id=%s attempts=%d error=%r: "
                "given up after [webhooks] give_up_after_seconds",
                row.webhook_id,
                row.event,
                row.event_id,
                row.attempts,
                error,
            )
            return
        store.mark_retry(conn, row.id, outcome.status, error, next_attempt)
        self.summary.retried += 1
        metrics.WEBHOOK_ATTEMPTS.labels("retry").inc()
        log.info(
            "event=webhook_retry webhook_id=%d event=%s event_id=%s attempts=%d error=%r "
            "next_attempt_at=%s",
            row.webhook_id,
            row.event,
            row.event_id,
            row.attempts,
            error,
            next_attempt.isoformat(),
        )

    # -- connections --------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = database.connect(self.config.database.for_daemons(), autocommit=True)
        return self.conn

    def disconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def backlog(self) -> tuple[int, float] | None:
        """For the metrics endpoint's thread: its own short connection."""
        try:
            with database.connect(self.config.database.for_daemons(), autocommit=True) as conn:
                return store.backlog(conn, self.clock.now())
        except (ServiceUnavailable, psycopg.Error) as exc:
            log.warning("event=webhook_backlog_unreadable error=%r", str(exc))
            return None

    # -- the daemon ---------------------------------------------------------------------------

    def once(self) -> WorkerSummary:
        """Deliver what is due now, wait for those deliveries, exit (`--once`)."""
        try:
            while self.deliver_pass() is RUN_AGAIN:
                pass
        finally:
            self.close()
        return self.summary

    def run(self) -> None:
        """Until SIGTERM/SIGINT; each pass supervised (an unexpected error is logged and
        counted, the worker reconnects and goes on). Deliveries under way when stopped are
        waited for and recorded."""
        loop = SupervisedLoop(
            "webhooks",
            self.settings.poll_interval_seconds,
            self._supervised_pass,
            first_run_now=True,
            stop_event=self.stop,
        )
        endpoint = metrics.start_webhooks_endpoint(
            self.config, self.backlog, lambda: [loop.status()]
        )
        log.info(
            "event=webhooks_start concurrency=%d timeout_seconds=%s",
            self.settings.concurrency,
            self.settings.timeout_seconds,
        )
        loop.run()
        self.close()
        if endpoint is not None:
            endpoint.close()
        log.info("event=webhooks_stop")

    def _supervised_pass(self) -> object:
        return backing_off(
            self.deliver_pass,
            outages=(psycopg.OperationalError, ServiceUnavailable),
            disconnect=self.disconnect,
            stop=self.stop,
            logger=log,
            event="webhooks_backoff",
        )

    def close(self) -> None:
        """Wait for the deliveries under way and record them, then let go of everything."""
        self.pool.shutdown(wait=True)
        if self.in_flight:
            try:
                self._record_finished(self._connect())
            except (psycopg.OperationalError, ServiceUnavailable) as exc:
                log.error("event=webhooks_unrecorded rows=%d reason=%s", len(self.in_flight), exc)
        self.disconnect()

    def install_signal_handlers(self) -> None:
        def handle(_signum: int, _frame: object) -> None:
            self.stop.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


def _key_ring(path: Path) -> KeyRing | None:
    """The KEK when this node has one (secrets added without it are stored in clear)."""
    return KeyRing.load(path) if path.exists() else None
