"""The quota rule defined once (migration 0012): after a mixed history, PostgreSQL's
txrelay_remaining_quota, the degraded-mode fallback and reserve.lua's balance in Redis (after
a rebuild and after a reconcile) all agree (real PostgreSQL, real Redis)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
import redis

from tests.store.builders import Tenant, add_block
from txrelay.config import DatabaseConfig
from txrelay.policy.billing import parse_period
from txrelay.policy.quota import ReservationStatus
from txrelay.store import database, lifecycle
from txrelay.store.fallback import PostgresReservations, rebuild_redis
from txrelay.store.keys import AccountKeys
from txrelay.store.ledger import (
    AcceptedMessage,
    overage_used,
    record_acceptance,
    remaining_quota,
    settle,
)
from txrelay.store.quota import list_blocks, quota_rules
from txrelay.store.reservations import (
    RedisReservations,
    ReservationRequest,
    reservation_member,
)
from txrelay.store.tracking import void_unconfirmed

TTL = 60


@pytest.fixture()
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with database.connect(DatabaseConfig(url=database_url)) as connection:
        yield connection


@dataclass
class History:
    """Writes an account's history through the store's own functions."""

    conn: psycopg.Connection
    tenant: Tenant
    node: str

    def record(self, count: int, tag: str, *, node: str | None = None) -> uuid.UUID:
        txn = uuid.uuid4()
        recipients = [f"{tag}{n}@rcpt.example" for n in range(count)]
        record_acceptance(self.conn, AcceptedMessage(
            txn, "Q" + txn.hex[:10], node or self.node, None, self.tenant.account_id,
            self.tenant.connection_id, f"o@{self.tenant.domain}", f"o@{self.tenant.domain}",
            100, recipients, dt.datetime.now(dt.UTC)))
        return txn

    def settle(self) -> int:
        return settle(self.conn, self.tenant.account_id)

    def bounce(self, txn: uuid.UUID, count: int) -> None:
        self.conn.execute(
            "UPDATE ledger SET state = 'bounced' WHERE id IN (SELECT l.id FROM ledger l "
            "JOIN messages m ON m.id = l.message_id WHERE m.txn_id = %s ORDER BY l.id "
            "LIMIT %s)", (txn, count))
        self.conn.commit()

    def void_node(self, node: str) -> int:
        now = dt.datetime.now(dt.UTC)
        voided = void_unconfirmed(self.conn, node, now + dt.timedelta(seconds=1), now)
        self.conn.commit()
        return voided.rows

    def sql_rule(self) -> int:
        remaining, _paid = quota_rules(self.conn, self.tenant.account_id,
                                       dt.datetime.now(dt.UTC))
        self.conn.rollback()
        return remaining


def request(tenant: Tenant, label: str) -> ReservationRequest:
    return ReservationRequest(tenant.account_id, tenant.connection_id,
                              reservation_member(str(uuid.uuid4()), f"{label}@rcpt.example"),
                              0, True)


def blocks_used(conn: psycopg.Connection, account_id: int) -> list[tuple[str, int, int]]:
    now = dt.datetime.now(dt.UTC)
    blocks = [(b.kind, b.amount, b.used) for b in list_blocks(conn, account_id, now)]
    conn.rollback()
    return blocks


def agreement(pool: object, conn: psycopg.Connection, client: redis.Redis, prefix: str,
              tenant: Tenant, holds: int) -> tuple[int, int, int, int]:
    """(rule, fallback's remaining + 1 + holds, Redis's after a rebuild, Redis's balance
    after a reconcile): what each path says the account has left before any hold."""
    rule = History(conn, tenant, "").sql_rule()
    fallback = PostgresReservations(pool, TTL, "rule-node")  # type: ignore[arg-type]
    probe = request(tenant, "probe-pg")
    by_fallback = fallback.reserve(probe)
    fallback.release([probe.member])

    with pool.connection() as pooled:  # type: ignore[attr-defined]
        rebuild_redis(pooled, client, prefix, {tenant.account_id})

    def load_balance(account_id: int) -> int:
        with pool.connection() as pooled:  # type: ignore[attr-defined]
            return remaining_quota(pooled, account_id, dt.datetime.now(dt.UTC))

    live = RedisReservations(client, prefix, TTL, load_balance)
    probe = request(tenant, "probe-redis")
    by_redis = live.reserve(probe)
    live.release(tenant.account_id, tenant.connection_id, [probe.member])
    assert by_redis.status is by_fallback.status

    keys = AccountKeys(prefix, tenant.account_id)
    client.set(keys.balance, 999_999)  # stale: reconcile rewrites it from PostgreSQL
    checks = lifecycle.reconcile(conn, client, prefix, dt.datetime.now(dt.UTC),
                                 tenant.account_name)
    reconciled = int(client.get(keys.balance) or -1)
    assert [c.postgres for c in checks] == [reconciled]
    held = client.zcard(keys.held)
    assert held == holds  # the PostgreSQL holds were copied into Redis by the rebuild
    return (rule, by_fallback.remaining + 1 + holds, by_redis.remaining + 1 + held,
            reconciled)


def test_rule_fallback_and_redis_agree_after_bookings_expiry_bounces_voids_pending_and_holds(
        pool: object, conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant], redis_client: redis.Redis, prefix: str,
        unique: str) -> None:
    tenant = tenant_factory(demo_quota=100)
    add_block(db, tenant.account_id, "booked", 50, expires_in_days=10)
    add_block(db, tenant.account_id, "booked", 40, expires_in_days=-1)  # expired, tick not run
    closed = add_block(db, tenant.account_id, "plan", 30, used=5, expires_in_days=-2)
    db.execute("UPDATE quota_blocks SET expired_unused = 25 WHERE id = %s", (closed,))
    history = History(conn, tenant, f"keep-{unique}")

    sent = history.record(20, "sent")
    assert history.settle() == 20  # into the booked block that expires first
    history.bounce(sent, 2)  # bounced recipients stay billed
    history.record(3, "voided", node=f"void-{unique}")
    assert history.settle() == 3
    assert history.void_node(f"void-{unique}") == 3  # never queued: the units go back
    history.record(7, "pending")  # recorded, not yet settled: counted as used
    fallback = PostgresReservations(pool, TTL, "rule-node")  # type: ignore[arg-type]
    for n in range(2):  # degraded-mode holds of a message still in flight
        assert fallback.reserve(request(tenant, f"held{n}")).status is ReservationStatus.RESERVED

    # demo 100 + booked 50 − 20 settled; −7 pending. The expired and closed blocks count 0.
    expected = 100 + 50 - 20 - 7
    assert agreement(pool, conn, redis_client, prefix, tenant, holds=2) == (expected,) * 4
    # A report's projection is what settling then writes, and the rule does not move.
    projected = blocks_used(conn, tenant.account_id)
    assert projected == [("plan", 30, 5), ("booked", 40, 0), ("booked", 50, 27),
                         ("demo", 100, 0)]
    assert history.settle() == 7
    assert blocks_used(conn, tenant.account_id) == projected
    assert history.sql_rule() == expected


def test_rule_fallback_and_redis_agree_beyond_quota_with_overage_and_pending_rows(
        pool: object, conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant], redis_client: redis.Redis, prefix: str,
        unique: str) -> None:
    """More pending rows than units left: the rule stops at 0 (the rest is overage), and the
    fallback counts from that same 0 as reserve.lua does."""
    tenant = tenant_factory(demo_quota=5)
    add_block(db, tenant.account_id, "booked", 10, expires_in_days=30)
    history = History(conn, tenant, f"over-{unique}")
    history.record(15, "quota")
    history.record(3, "overage")
    assert history.settle() == 18
    history.record(4, "pending")
    billing = conn.execute("SELECT billing, count(*) AS n FROM ledger WHERE account_id = %s "
                           "GROUP BY billing ORDER BY billing", (tenant.account_id,)).fetchall()
    conn.rollback()
    assert [(r["billing"], r["n"]) for r in billing] == [
        ("overage", 3), ("pending", 4), ("quota", 15)]

    assert agreement(pool, conn, redis_client, prefix, tenant, holds=0) == (0, 0, 0, 0)
    probe = request(tenant, "paid-probe")
    result = PostgresReservations(pool, TTL, "rule-node").reserve(probe)  # type: ignore[arg-type]
    assert (result.status, result.remaining) == (ReservationStatus.OVERAGE, -1)


def test_overage_cap_counts_settled_and_pending_overage_alike_in_fallback_and_redis(
        pool: object, conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant], redis_client: redis.Redis, prefix: str,
        unique: str) -> None:
    """Migration 0033's txrelay_overage_used: 3 settled overage rows and 4 pending ones that
    settling would bill as overage make 7; a cap of 7 refuses the next recipient in the
    degraded-mode fallback and in reserve.lua (loaded from PostgreSQL), a cap of 8 takes it."""
    tenant = tenant_factory(demo_quota=5)
    add_block(db, tenant.account_id, "booked", 10, expires_in_days=30)
    history = History(conn, tenant, f"cap-{unique}")
    history.record(18, "settled")
    assert history.settle() == 18
    history.record(4, "pending")
    period = dt.datetime.now(dt.UTC).strftime("%Y-%m")

    def capped(label: str, cap: int) -> ReservationRequest:
        return dataclasses.replace(request(tenant, label), overage_cap=cap, period=period)

    def load_overage(account_id: int, label: str) -> int:
        month = parse_period(label)
        with pool.connection() as pooled:  # type: ignore[attr-defined]
            return overage_used(pooled, account_id, month.start, month.end)

    fallback = PostgresReservations(pool, TTL, "rule-node")  # type: ignore[arg-type]
    live = RedisReservations(redis_client, prefix, TTL, lambda _account: 0, load_overage)
    for store in (fallback, live):
        refused = store.reserve(capped(f"at-cap-{id(store)}", 7))
        assert refused.status is ReservationStatus.OVERAGE_CAP
        taken = capped(f"below-cap-{id(store)}", 8)
        assert store.reserve(taken).status is ReservationStatus.OVERAGE
        if store is fallback:
            fallback.release([taken.member])
        else:
            live.release(tenant.account_id, tenant.connection_id, [taken.member])
