"""What every milter connection shares: pool, Redis client, and the refreshed policy snapshot.

Created once at start; everything here is thread-safe because libmilter runs each SMTP
connection on its own thread. The snapshot is replaced whole (one attribute assignment),
never changed, so a transaction that pinned one keeps deciding with it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psycopg
import psycopg_pool

from txrelay.clock import Clock
from txrelay.config import Config
from txrelay.errors import ServiceUnavailable
from txrelay.policy.snapshot import PolicySnapshot
from txrelay.store import database
from txrelay.store.ledger import AcceptedMessage, Recorded, record_acceptance, remaining_quota
from txrelay.store.policy import PolicyLoader, current_version
from txrelay.store.redis_client import open_redis
from txrelay.store.reservations import RedisReservations, ReservationStore

log = logging.getLogger("txrelay.milter")
T = TypeVar("T")
UNKNOWN_LOGIN_RECHECK = 0.25  # seconds between on-demand policy checks for unknown logins


class LedgerUnavailable(ServiceUnavailable):
    """PostgreSQL did not answer in time, or the pool had no connection to give."""


class Ledger:
    """PostgreSQL behind the two calls the milter makes, failures as ServiceUnavailable."""

    def __init__(self, pool: psycopg_pool.ConnectionPool, clock: Clock) -> None:
        self.pool = pool
        self.clock = clock

    def record(self, message: AcceptedMessage) -> Recorded:
        return self._with_connection(lambda conn: record_acceptance(conn, message))

    def remaining_quota(self, account_id: int) -> int:
        return self._with_connection(
            lambda conn: remaining_quota(conn, account_id, self.clock.now()))

    def _with_connection(self, work: Callable[[psycopg.Connection], T]) -> T:
        try:
            with self.pool.connection() as conn:
                return work(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise LedgerUnavailable(f"PostgreSQL did not answer ({exc.__class__.__name__}: "
                                     f"{str(exc).strip().splitlines()[0] if str(exc) else ''})"
                                     ) from exc


class PolicyCache:
    """Holds the current snapshot; a daemon thread polls policy_version and reloads on change."""

    def __init__(self, pool: psycopg_pool.ConnectionPool, loader: PolicyLoader,
                 interval: float) -> None:
        self.pool = pool
        self.loader = loader
        self.interval = max(interval, 0.1)
        self.current: PolicySnapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._refresh_lock = threading.Lock()
        self._last_refresh = 0.0

    def snapshot_knowing(self, login: str | None) -> PolicySnapshot | None:
        """The current snapshot; when it does not know this SASL login, look for a newer one
        first. Dovecot sees a new connection at once, so without this a shop connected a
        second ago would be refused until the next poll. At most one such check runs per
        UNKNOWN_LOGIN_RECHECK seconds, so a stream of bad logins costs PostgreSQL nothing."""
        current = self.current
        if not login or current is None or login.strip().lower() in current.connections:
            return current
        now = time.monotonic()
        if now - self._last_refresh >= UNKNOWN_LOGIN_RECHECK and self._refresh_lock.acquire(
                blocking=False):
            try:
                self._last_refresh = now
                self.refresh()
            finally:
                self._refresh_lock.release()
        return self.current

    def refresh(self) -> bool:
        """Reload when the version moved; True when the snapshot is usable afterwards."""
        try:
            with self.pool.connection() as conn:
                version = current_version(conn)
                conn.rollback()
                if self.current is None or self.current.version != version:
                    self.current = self.loader.load(conn)
                    log.info("event=policy_loaded version=%d connections=%d domains=%d",
                             self.current.version, len(self.current.connections),
                             len(self.current.domains))
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            if not self._failing:
                log.warning("event=policy_refresh_failed error=%r (keeping version %s)",
                            exc.__class__.__name__,
                            self.current.version if self.current else "none")
            self._failing = True
            return self.current is not None
        if self._failing:
            log.info("event=policy_refresh_recovered version=%d", self.current.version)
        self._failing = False
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="policy-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()


@dataclass
class Runtime:
    config: Config
    node: str
    clock: Clock
    policy: PolicyCache
    reservations: ReservationStore
    ledger: Ledger
    close: Callable[[], None]


def open_runtime(config: Config, clock: Clock) -> Runtime:
    """Open the shared handles without waiting for PostgreSQL or Redis: the milter starts and
    answers 4xx until they come, and recovers by itself when they return."""
    pool = database.open_pool(config.database, "txrelay-milter")
    pool.open(wait=False)
    client = open_redis(config.redis)
    ledger = Ledger(pool, clock)
    reservations = RedisReservations(client, config.redis.key_prefix,
                                     config.milter.reservation_ttl_seconds,
                                     ledger.remaining_quota)
    policy = PolicyCache(pool, PolicyLoader(config.quota), config.milter.policy_refresh_seconds)
    policy.refresh()
    policy.start()

    def close() -> None:
        policy.stop()
        pool.close()
        client.close()

    return Runtime(config, config.milter.node_name or socket.gethostname(), clock, policy,
                   reservations, ledger, close)
