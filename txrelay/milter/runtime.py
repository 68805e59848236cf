"""What every milter connection shares: pool, Redis client, the refreshed policy snapshot,
the local journal, and the degraded modes that keep mail flowing through an outage.

Created once at start; everything here is thread-safe because libmilter runs each SMTP
connection on its own thread. The snapshot is replaced whole (one attribute assignment),
never changed, so a transaction that pinned one keeps deciding with it.

Degraded modes (docs/failure-modes.md): Redis down → reservations in PostgreSQL
(store/fallback.py); PostgreSQL down → policy from memory or its local copy, ledger records
to the local journal (store/journal.py), replayed when PostgreSQL answers again.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psycopg
import psycopg_pool

from txrelay import metrics
from txrelay.clock import Clock
from txrelay.config import Config
from txrelay.errors import ConfigError, ServiceUnavailable
from txrelay.kek import KeyRing
from txrelay.milter.refusal_budget import RefusalBudget
from txrelay.milter.settler import Settler
from txrelay.policy.snapshot import PolicySnapshot
from txrelay.store import database
from txrelay.store.fallback import FailoverReservations, PostgresReservations, rebuild_redis
from txrelay.store.journal import Journal, JournalEntry, database_tag
from txrelay.store.ledger import (
    AcceptedMessage,
    Allocation,
    Recorded,
    record_acceptance,
    remaining_quota,
)
from txrelay.store.passdb_file import PassdbFileError, sync_passdb_file
from txrelay.store.policy import (
    PolicyLoader,
    current_version,
    fetch_policy_rows,
    read_policy_rows,
    save_policy_rows,
)
from txrelay.store.redis_client import open_redis
from txrelay.store.reservations import RedisReservations, ReservationStore
from txrelay.supervised import Loops, SupervisedLoop

log = logging.getLogger("txrelay.milter")
T = TypeVar("T")
UNKNOWN_LOGIN_RECHECK = 0.25  # seconds between on-demand policy checks for unknown logins
UNKNOWN_LOGIN_WAIT = 3.0  # most an unknown login waits for a policy reload in progress
REPLAY_INTERVAL = 1.0  # seconds between attempts to replay the journal into PostgreSQL
# PostgreSQL did not answer (connection refused or lost, timeout): the journal takes over.
# Any other database error (a constraint, a bug) is a 451, never journaled.
UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout)


class LedgerUnavailable(ServiceUnavailable):
    """PostgreSQL did not answer in time, or the pool had no connection to give."""


class Ledger:
    """PostgreSQL behind the two calls the milter makes, failures as ServiceUnavailable.

    With a journal, a record PostgreSQL cannot take is written to the journal instead (and
    the message accepted); without one (tests, tools) it is a 451. Each account recorded
    for is passed to `recorded_for` (the settler, which bills the pending rows to blocks)."""

    def __init__(self, pool: psycopg_pool.ConnectionPool, clock: Clock,
                 journal: Journal | None = None,
                 holds_of: Callable[[uuid.UUID], list[str]] | None = None,
                 recorded_for: Callable[[int], None] | None = None) -> None:
        self.pool = pool
        self.clock = clock
        self.journal = journal
        self.holds_of = holds_of or (lambda txn_id: [])
        self.recorded_for = recorded_for or (lambda account_id: None)

    def record(self, message: AcceptedMessage) -> Recorded:
        holds = self.holds_of(message.txn_id)
        try:
            with self.pool.connection() as conn:
                recorded = record_acceptance(conn, message, holds)
            self.recorded_for(message.account_id)
            return recorded
        except UNREACHABLE as exc:
            if self.journal is None:
                raise _unavailable(exc) from exc
            self.journal.append(JournalEntry(message, holds))  # JournalUnavailable → 451
            log.warning("event=journaled txn=%s rcpts=%d backlog=%d error=%r", message.txn_id,
                        len(message.recipients), self.journal.backlog(),
                        exc.__class__.__name__)
            return Recorded(None, [Allocation(r, "pending", None) for r in message.recipients],
                            journaled=len(message.recipients))
        except psycopg.Error as exc:
            raise _unavailable(exc) from exc

    def replay_journal(self) -> int:
        """Write journaled records to PostgreSQL (idempotent); 0 when there was nothing or
        PostgreSQL is still away."""
        journal = self.journal
        # The files, not the backlog count: `txrelay journal retry` adds one from outside.
        if journal is None or not journal.pending_files():
            return 0
        try:
            with self.pool.connection() as conn:
                done = journal.replay(lambda entry: self._replay(conn, entry), UNREACHABLE)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            log.info("event=journal_replay_waiting backlog=%d error=%r", journal.backlog(),
                     exc.__class__.__name__)
            return 0
        if done:
            log.warning("event=journal_replayed messages=%d backlog=%d", done,
                        journal.backlog())
        return done

    def _replay(self, conn: psycopg.Connection, entry: JournalEntry) -> Recorded:
        recorded = record_acceptance(conn, entry.message, entry.holds)
        self.recorded_for(entry.message.account_id)
        return recorded

    def remaining_quota(self, account_id: int) -> int:
        return self._with_connection(
            lambda conn: remaining_quota(conn, account_id, self.clock.now()))

    def _with_connection(self, work: Callable[[psycopg.Connection], T]) -> T:
        try:
            with self.pool.connection() as conn:
                return work(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise _unavailable(exc) from exc


def _unavailable(exc: Exception) -> LedgerUnavailable:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return LedgerUnavailable(f"PostgreSQL did not answer ({exc.__class__.__name__}: {first})")


class PolicyCache:
    """Holds the current snapshot; a daemon thread polls policy_version and reloads on change.

    With a `passdb_path`, each change of the version also brings this node's SMTP login file
    (Dovecot's passdb) up to date, so that a change made by the CLI on another node
    reaches this node's logins within one poll; while PostgreSQL is down the file stays."""

    def __init__(self, pool: psycopg_pool.ConnectionPool, loader: PolicyLoader,
                 interval: float, copy_path: Path | None = None,
                 passdb_path: Path | None = None) -> None:
        self.pool = pool
        self.loader = loader
        self.interval = max(interval, 0.1)
        self.copy_path = copy_path  # the local copy for a start during a PostgreSQL outage
        self.passdb_path = passdb_path
        self._passdb_due = passdb_path is not None
        self._passdb_failing = False
        self.current: PolicySnapshot | None = None
        # Critical: a frozen snapshot would keep accepting a connection disabled since.
        self.loop = SupervisedLoop("policy-refresh", self.interval, self._poll, critical=True)
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
        # Wait for a reload already running (the poll, or another connection's check): the
        # login is likely what it is loading. Then check ourselves if none ran just now.
        if not self._refresh_lock.acquire(timeout=UNKNOWN_LOGIN_WAIT):
            return self.current
        try:
            current = self.current
            if current is not None and login.strip().lower() in current.connections:
                return current
            now = time.monotonic()
            if now - self._last_refresh >= UNKNOWN_LOGIN_RECHECK:
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
                    rows = fetch_policy_rows(conn)
                    self.current = self.loader.build(rows)
                    log.info("event=policy_loaded version=%d connections=%d domains=%d",
                             self.current.version, len(self.current.connections),
                             len(self.current.domains))
                    self._save_copy(rows)
                    self._passdb_due = self.passdb_path is not None
                if self._passdb_due:
                    self._sync_passdb(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            if not self._failing:
                log.warning("event=policy_refresh_failed error=%r (keeping version %s)",
                            exc.__class__.__name__,
                            self.current.version if self.current else "none")
            self._failing = True
            if self.current is None:
                self._load_copy()
            return self.current is not None
        if self._failing:
            log.info("event=policy_refresh_recovered version=%d", self.current.version)
        self._failing = False
        return True

    def _save_copy(self, rows: dict[str, object]) -> None:
        if self.copy_path is None:
            return
        try:
            save_policy_rows(self.copy_path, rows)
        except OSError as exc:
            log.warning("event=policy_copy_not_saved path=%s error=%r (a restart during a "
                        "PostgreSQL outage could not authorise)", self.copy_path, str(exc))

    def _sync_passdb(self, conn: psycopg.Connection) -> None:
        """Rewrite the login file when its content changed; when it cannot be written, say
        so once and try again at every poll until it can."""
        assert self.passdb_path is not None
        try:
            written = sync_passdb_file(conn, self.passdb_path)
        except PassdbFileError as exc:
            if not self._passdb_failing:
                log.error("event=passdb_file_not_written error=%r (SMTP logins on this node "
                          "miss the latest changes, and fail while PostgreSQL is down)",
                          str(exc))
            self._passdb_failing = True
            return
        if written:
            log.info("event=passdb_file_written path=%s", self.passdb_path)
        self._passdb_due = False
        self._passdb_failing = False

    def _load_copy(self) -> None:
        """PostgreSQL is away and this process has no snapshot yet: use the local copy."""
        rows = None if self.copy_path is None else read_policy_rows(self.copy_path)
        if rows is None:
            return
        self.current = self.loader.build(rows)
        log.warning("event=policy_loaded_from_copy version=%d path=%s connections=%d",
                    self.current.version, self.copy_path, len(self.current.connections))

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()

    def _poll(self) -> None:
        with self._refresh_lock:  # connections meeting an unknown login wait for it
            self.refresh()


@dataclass
class Runtime:
    config: Config
    node: str
    clock: Clock
    policy: PolicyCache
    reservations: ReservationStore
    ledger: Ledger
    refusals: RefusalBudget
    close: Callable[[], None]
    loops: Loops = field(default_factory=Loops)


def open_journal(config: Config) -> Journal:
    """This milter's local journal ([milter] journal_dir), for the runtime and /healthz."""
    return Journal(Path(config.milter.journal_dir), config.database.url,
                   config.milter.journal_max_per_hour)


def _key_ring(config: Config) -> KeyRing:
    """The KEK that opens the DKIM keys. A file that cannot be read now is logged; keys
    stored in clear still sign, each sealed one's domain gets 4xx (bad_dkim_key), and the
    file is read again at each policy load that needs it, so restoring it is enough."""
    keys = KeyRing(Path(config.database.kek_file))
    try:
        keys.reload()
    except ConfigError as exc:
        log.error("event=kek_unavailable error=%r", str(exc))
    return keys


def open_runtime(config: Config, clock: Clock, journal: Journal | None = None,
                 loops: Loops | None = None) -> Runtime:
    """Open the shared handles without waiting for PostgreSQL or Redis: the milter starts
    even when they are away, works in a degraded mode while one of them is, and recovers by
    itself when they return (docs/failure-modes.md). Its background loops are added to
    `loops` (what /healthz reads)."""
    loops = loops if loops is not None else Loops()
    # Connections use the daemons' role (milter_url); the journal and the policy copy keep
    # naming the database by url, so setting milter_url leaves no journal entry behind.
    daemon_db = config.database.for_daemons()
    node = config.milter.node_name or socket.gethostname()
    pool = database.open_pool(daemon_db, "txrelay-milter")
    pool.open(wait=False)
    client = open_redis(config.redis, lazy=True)
    state_dir = Path(config.milter.journal_dir)
    journal = journal or open_journal(config)
    metrics.watch_journal_backlog(journal.backlog)
    metrics.watch_journal_quarantine(journal.quarantined)
    postgres_holds = PostgresReservations(pool, config.milter.reservation_ttl_seconds, node)

    def rebuild(accounts: set[int]) -> None:
        with pool.connection() as conn:
            rebuild_redis(conn, client, config.redis.key_prefix, accounts)

    settler = Settler(lambda: database.connect(daemon_db, autocommit=True))
    loops.add(settler.loop)
    settler.start()
    ledger = Ledger(pool, clock, journal, recorded_for=settler.notify)
    redis_store = RedisReservations(client, config.redis.key_prefix,
                                    config.milter.reservation_ttl_seconds,
                                    ledger.remaining_quota)
    reservations = FailoverReservations(redis_store, postgres_holds, rebuild)
    ledger.holds_of = reservations.held_in_postgres
    copy_path = state_dir / f"policy-{database_tag(config.database.url)}.json"
    policy = PolicyCache(pool, PolicyLoader(config.quota, _key_ring(config)),
                         config.milter.policy_refresh_seconds,
                         copy_path, Path(config.dovecot.passdb_file))
    policy.refresh()
    replayer = SupervisedLoop("journal-replay", REPLAY_INTERVAL, ledger.replay_journal,
                              first_run_now=True)
    for loop in (policy.loop, reservations.loop, replayer):
        loops.add(loop).start()

    def close() -> None:
        replayer.stop()
        settler.stop()
        reservations.stop()
        policy.stop()
        journal.close()
        pool.close()
        client.close()

    refusals = RefusalBudget(client, config.redis.key_prefix,
                             config.milter.refusal_budget_per_hour, clock,
                             lambda: reservations.degraded)
    return Runtime(config, node, clock, policy, reservations, ledger, refusals, close, loops)
