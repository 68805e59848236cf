"""Quota and rate reservations in PostgreSQL while Redis is unreachable, and the switch back.

Degraded mode, chosen for exactness over speed: while Redis is down (or slower than
[redis] timeout_ms) each RCPT is decided by PostgreSQL under a per-account advisory lock, in
one conditional statement that counts exactly what reserve.lua counts:

  available = remaining quota (migration 0012's txrelay_remaining_quota, the figure Redis's
              balance is loaded from) − live holds of the account
  rate used = ledger rows of the connection in the last hour + live holds of the connection
  overage   = (capped accounts only) the period's overage recipients (migration 0033's
              txrelay_overage_used, what Redis's overage count is loaded from) + the holds
              beyond the remaining quota; at the cap the recipient is refused (status 7)

and inserts the hold (table quota_holds) only when the decision is "reserved" or "overage".
The end-of-message ledger transaction deletes the message's holds (record_acceptance's
release_holds), so "pending" and "held" move together atomically. A killed milter's holds stop
counting at expires_at ([milter] reservation_ttl_seconds).

When Redis answers again, rebuild_redis() makes it agree with PostgreSQL before the node
uses it: balances of the accounts touched are dropped (reloaded from PostgreSQL on next use,
which already counts everything recorded meanwhile), live PostgreSQL holds are copied into
the held sets, holds recorded meanwhile are removed, and the connections' rate windows are
refilled from the ledger of the last hour.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg
import psycopg_pool
import redis

from txrelay.errors import ServiceUnavailable
from txrelay.policy.billing import parse_period
from txrelay.policy.quota import Reservation, ReservationStatus
from txrelay.store.keys import AccountKeys
from txrelay.store.redis_client import reply_text
from txrelay.store.reservations import (
    RESERVE_STATUSES,
    RedisReservations,
    RedisUnavailable,
    ReservationRequest,
)
from txrelay.supervised import SupervisedLoop

log = logging.getLogger("txrelay.milter.fallback")

RATE_WINDOW_SECONDS = 3600
PROBE_INTERVAL_SECONDS = 1.0
# pg_advisory_xact_lock(class, account id): one reservation decision per account at a time,
# across every relay node. The class keeps these locks apart from any other advisory lock.
HOLD_LOCK_CLASS = 0x7478

LOCK_ACCOUNT_HOLDS = "SELECT pg_advisory_xact_lock(%(lock_class)s, %(account_id)s::int)"

PURGE_EXPIRED_HOLDS = """
DELETE FROM quota_holds WHERE account_id = %(account_id)s AND expires_at <= now()"""

# The decision and the hold in one statement (statuses as in reserve.lua). It runs after the
# account's advisory lock was taken, so its snapshot includes every earlier decision and
# every ledger transaction that committed before.
RESERVE_HOLD = """
WITH state AS (
  SELECT
    txrelay_remaining_quota(%(account_id)s, now())
    - (SELECT count(*) FROM quota_holds WHERE account_id = %(account_id)s) AS available,
    (SELECT count(*) FROM ledger WHERE connection_id = %(connection_id)s
        AND accepted_at > now() - make_interval(secs => %(window)s))
    + (SELECT count(*) FROM quota_holds WHERE connection_id = %(connection_id)s)
    + (SELECT coalesce(sum(cardinality(recipients)), 0) FROM sandbox_messages
        WHERE connection_id = %(connection_id)s
          AND captured_at > now() - make_interval(secs => %(window)s)) AS rate_used,
    (SELECT min(accepted_at) FROM ledger WHERE connection_id = %(connection_id)s
        AND accepted_at > now() - make_interval(secs => %(window)s)) AS oldest,
    EXISTS (SELECT 1 FROM quota_holds WHERE member = %(member)s) AS duplicate,
    CASE WHEN %(cap)s::integer IS NULL THEN 0
         ELSE txrelay_overage_used(%(account_id)s, %(period_start)s, %(period_end)s)
    END AS overage_used
), decision AS (
  SELECT CASE
           WHEN duplicate THEN 3
           WHEN NOT %(quota)s AND %(rate_limit)s > 0 AND rate_used >= %(rate_limit)s THEN 4
           WHEN NOT %(quota)s THEN 1
           WHEN available <= 0 AND NOT %(paid)s THEN 5
           WHEN available <= 0 AND %(cap)s::integer IS NOT NULL
                AND overage_used - available >= %(cap)s::integer THEN 7
           WHEN %(rate_limit)s > 0 AND rate_used >= %(rate_limit)s THEN 4
           WHEN available <= 0 THEN 2
           ELSE 1
         END AS status, available, oldest
    FROM state
), hold AS (
  INSERT INTO quota_holds (member, account_id, connection_id, node, expires_at)
  SELECT %(member)s, %(account_id)s, %(connection_id)s, %(node)s,
         now() + make_interval(secs => %(ttl)s)
    FROM decision WHERE status IN (1, 2) AND %(quota)s
)
SELECT status, available,
       COALESCE(ceil(extract(epoch FROM oldest + make_interval(secs => %(window)s) - now())
                     * 1000), 0)::bigint AS retry_ms
  FROM decision"""

RELEASE_HOLDS = "DELETE FROM quota_holds WHERE member = ANY(%(members)s)"

SELECT_LIVE_HOLDS = """
SELECT member, account_id, connection_id, extract(epoch FROM expires_at) AS expires,
       extract(epoch FROM held_at) AS held
  FROM quota_holds
 WHERE expires_at > now() AND (account_id = ANY(%(accounts)s) OR %(all)s)"""

# The sliding hour of each connection of the accounts: what the rate zsets must contain
# (sandbox connections' captured recipients count toward the rate too).
SELECT_RATE_MEMBERS = """
SELECT l.account_id, l.connection_id, m.txn_id::text || '|' || l.recipient AS member,
       extract(epoch FROM l.accepted_at) AS at
  FROM ledger l JOIN messages m ON m.id = l.message_id
 WHERE l.account_id = ANY(%(accounts)s)
   AND l.accepted_at > now() - make_interval(secs => %(window)s)
UNION ALL
SELECT s.account_id, s.connection_id, s.txn_id::text || '|' || r.recipient,
       extract(epoch FROM s.captured_at)
  FROM sandbox_messages s CROSS JOIN unnest(s.recipients) AS r (recipient)
 WHERE s.account_id = ANY(%(accounts)s)
   AND s.captured_at > now() - make_interval(secs => %(window)s)"""

SELECT_RECORDED_TXNS = "SELECT txn_id::text AS txn FROM messages WHERE txn_id = ANY(%(txns)s)"

Conn = psycopg.Connection[Any]  # dict_row connections (txrelay.store.database)


class PostgresHoldsUnavailable(ServiceUnavailable):
    """Neither Redis nor PostgreSQL could decide: the recipient gets a 451."""


class PostgresReservations:
    """Reservations as rows of quota_holds; the exact equivalent of reserve.lua."""

    def __init__(self, pool: psycopg_pool.ConnectionPool, ttl_seconds: int, node: str) -> None:
        self.pool = pool
        self.ttl_seconds = ttl_seconds
        self.node = node

    def reserve(self, request: ReservationRequest) -> Reservation:
        period = parse_period(request.period) if request.overage_cap is not None else None
        params = {
            "cap": request.overage_cap,
            "period_start": period.start if period else None,
            "period_end": period.end if period else None,
            "lock_class": HOLD_LOCK_CLASS,
            "account_id": request.account_id,
            "connection_id": request.connection_id,
            "member": request.member,
            "paid": request.paid,
            "rate_limit": request.rate_limit,
            "ttl": self.ttl_seconds,
            "window": RATE_WINDOW_SECONDS,
            "node": self.node,
            "quota": request.quota,
        }
        row = self._run(lambda conn: _reserve_in(conn, params))
        if not request.quota:  # rate only: reserve.lua's answer, remaining 0
            return Reservation(RESERVE_STATUSES[int(row["status"])], 0, int(row["retry_ms"]) / 1000)
        return Reservation(
            RESERVE_STATUSES[int(row["status"])],
            int(row["available"]) - 1,
            int(row["retry_ms"]) / 1000,
        )

    def release(self, members: Sequence[str]) -> None:
        if members:
            self._run(lambda conn: _execute(conn, RELEASE_HOLDS, {"members": list(members)}))

    def _run(self, work: Callable[[Conn], Any]) -> Any:
        try:
            with self.pool.connection() as conn:
                return work(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise PostgresHoldsUnavailable(
                f"Redis is down and PostgreSQL did not answer either ({exc.__class__.__name__})"
            ) from exc


def _reserve_in(conn: Conn, params: dict[str, Any]) -> dict[str, Any]:
    with conn.transaction():
        conn.execute(LOCK_ACCOUNT_HOLDS, params)
        conn.execute(PURGE_EXPIRED_HOLDS, params)
        row = conn.execute(RESERVE_HOLD, params).fetchone()
    assert row is not None  # one row from one-row CTEs
    return dict(row)


def _execute(conn: Conn, sql: str, params: dict[str, Any]) -> None:
    with conn.transaction():
        conn.execute(sql, params)


class FailoverReservations:
    """Redis while it answers; PostgreSQL holds while it does not; Redis rebuilt on return.

    Thread-safe: the mode and the bookkeeping sets are guarded by one lock, held only for
    set operations, never across a network call.
    """

    def __init__(
        self,
        redis_store: RedisReservations,
        postgres: PostgresReservations,
        rebuild: Callable[[set[int]], None],
    ) -> None:
        self.redis = redis_store
        self.postgres = postgres
        self.rebuild = rebuild
        self.degraded = False
        self._lock = threading.Lock()
        self._held_in_postgres: dict[str, set[str]] = {}  # txn id -> members
        self._stale_accounts: set[int] = set()  # their Redis state lags PostgreSQL
        self.loop = SupervisedLoop("redis-recovery", PROBE_INTERVAL_SECONDS, self._probe)

    def reserve(self, request: ReservationRequest) -> Reservation:
        if not self.degraded:
            try:
                return self.redis.reserve(request)
            except RedisUnavailable as exc:
                self._enter_degraded(exc)
        result = self.postgres.reserve(request)
        with self._lock:
            self._stale_accounts.add(request.account_id)
            held = result.status in (ReservationStatus.RESERVED, ReservationStatus.OVERAGE)
            if held and request.quota:  # a rate-only request holds nothing
                txn = request.member.split("|", 1)[0]
                self._held_in_postgres.setdefault(txn, set()).add(request.member)
        return result

    def held_in_postgres(self, txn_id: uuid.UUID) -> list[str]:
        """The transaction's members held in quota_holds: the ledger deletes them."""
        with self._lock:
            return sorted(self._held_in_postgres.get(str(txn_id), ()))

    def commit(self, account_id: int, members: Sequence[str], units: int, period: str = "") -> int:
        """After the ledger recorded the message (and deleted its PostgreSQL holds)."""
        self._forget(members)
        if self.degraded:
            self._mark_stale(account_id)
            return 0
        try:
            return self.redis.commit(account_id, members, units, period)
        except RedisUnavailable as exc:
            self._mark_stale(account_id)
            self._enter_degraded(exc)
            return 0

    def release(self, account_id: int, connection_id: int, members: Sequence[str]) -> int:
        in_postgres = set(self._forget(members))
        self.postgres.release(sorted(in_postgres))
        in_redis = [m for m in members if m not in in_postgres]
        if not in_redis or self.degraded:
            return len(in_postgres)
        try:
            return len(in_postgres) + self.redis.release(account_id, connection_id, in_redis)
        except RedisUnavailable as exc:
            self._enter_degraded(exc)  # the held members expire by themselves
            return len(in_postgres)

    def try_recover(self) -> bool:
        """Ping Redis; when it answers, rebuild it from PostgreSQL and leave degraded mode."""
        if not self.degraded:
            return True
        try:
            self.redis.client.ping()
        except redis.RedisError:
            return False
        with self._lock:
            stale = set(self._stale_accounts)
        try:
            self.rebuild(stale)
        except (
            ServiceUnavailable,
            psycopg.Error,
            psycopg_pool.PoolTimeout,
            redis.RedisError,
        ) as exc:
            log.warning(
                "event=redis_rebuild_failed accounts=%d error=%r (staying on PostgreSQL)",
                len(stale),
                str(exc),
            )
            return False
        with self._lock:
            self._stale_accounts -= stale
            self.degraded = False
        log.warning("event=redis_recovered accounts_rebuilt=%d mode=redis", len(stale))
        return True

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()

    def _probe(self) -> None:
        if self.degraded:
            self.try_recover()

    def _enter_degraded(self, exc: Exception) -> None:
        with self._lock:
            was, self.degraded = self.degraded, True
        if not was:
            log.warning("event=redis_unavailable mode=postgresql error=%r", str(exc))

    def _mark_stale(self, account_id: int) -> None:
        with self._lock:
            self._stale_accounts.add(account_id)

    def _forget(self, members: Iterable[str]) -> list[str]:
        """Drop members from the PostgreSQL bookkeeping; returns those that were there."""
        found = []
        with self._lock:
            for member in members:
                txn = member.split("|", 1)[0]
                held = self._held_in_postgres.get(txn)
                if held is not None and member in held:
                    held.discard(member)
                    found.append(member)
                    if not held:
                        del self._held_in_postgres[txn]
        return found


def rebuild_redis(conn: Conn, client: redis.Redis, prefix: str, accounts: set[int]) -> None:
    """Make Redis agree with PostgreSQL for these accounts (and every live PostgreSQL hold)."""
    ids = sorted(accounts)
    holds = conn.execute(SELECT_LIVE_HOLDS, {"accounts": ids, "all": True}).fetchall()
    ids = sorted(set(ids) | {int(h["account_id"]) for h in holds})
    rate_rows = conn.execute(
        SELECT_RATE_MEMBERS, {"accounts": ids, "window": RATE_WINDOW_SECONDS}
    ).fetchall()
    conn.rollback()
    for account_id in ids:
        keys = AccountKeys(prefix, account_id)
        _drop_recorded_holds(conn, client, keys)
        # Reloaded from PostgreSQL by the next reservation (the overage count with it).
        client.delete(keys.balance, keys.overage)
    pipe = client.pipeline(transaction=False)
    for h in holds:
        keys = AccountKeys(prefix, int(h["account_id"]))
        pipe.zadd(keys.held, {h["member"]: float(h["expires"])}, nx=True)
        pipe.expire(keys.held, RATE_WINDOW_SECONDS + 60, gt=True)
        pipe.zadd(keys.rate(int(h["connection_id"])), {h["member"]: float(h["held"])}, nx=True)
    for r in rate_rows:
        keys = AccountKeys(prefix, int(r["account_id"]))
        pipe.zadd(keys.rate(int(r["connection_id"])), {r["member"]: float(r["at"])}, nx=True)
        pipe.expire(keys.rate(int(r["connection_id"])), RATE_WINDOW_SECONDS + 60)
    pipe.execute()


def _drop_recorded_holds(conn: Conn, client: redis.Redis, keys: AccountKeys) -> None:
    """Redis holds whose message PostgreSQL recorded while Redis could not be told."""
    members = [reply_text(m) for m in client.zrange(keys.held, 0, -1)]
    txns = sorted({m.split("|", 1)[0] for m in members})
    if not txns:
        return
    valid = [t for t in txns if _is_uuid(t)]
    rows = conn.execute(SELECT_RECORDED_TXNS, {"txns": valid}).fetchall()
    conn.rollback()
    recorded = {r["txn"] for r in rows}
    done = [m for m in members if m.split("|", 1)[0] in recorded]
    if done:
        client.zrem(keys.held, *done)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
