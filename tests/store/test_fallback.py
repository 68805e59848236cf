"""Degraded Redis mode: reservations held in PostgreSQL, exact under races, and Redis rebuilt
from PostgreSQL when it returns (real PostgreSQL, real Redis DB 9)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import uuid
from collections import Counter
from collections.abc import Callable

import psycopg
import pytest
import redis

from tests.store.builders import Tenant
from txrelay.config import DatabaseConfig
from txrelay.policy.quota import ReservationStatus
from txrelay.store import database
from txrelay.store.fallback import (
    FailoverReservations,
    PostgresHoldsUnavailable,
    PostgresReservations,
    rebuild_redis,
)
from txrelay.store.keys import AccountKeys
from txrelay.store.ledger import AcceptedMessage, record_acceptance, remaining_quota, settle
from txrelay.store.reservations import (
    RedisReservations,
    ReservationRequest,
    reservation_member,
)
from txrelay.store.sandbox import CapturedMessage, capture


def holds(pool: object, ttl: int = 60) -> PostgresReservations:
    return PostgresReservations(pool, ttl, "test-node")  # type: ignore[arg-type]


def ask(tenant: Tenant, member: str, *, rate_limit: int = 0,
        paid: bool = False) -> ReservationRequest:
    return ReservationRequest(tenant.account_id, tenant.connection_id, member, rate_limit, paid)


def message(tenant: Tenant, txn: uuid.UUID, recipients: list[str]) -> AcceptedMessage:
    return AcceptedMessage(txn, "Q" + txn.hex[:8], "test-node", None, tenant.account_id,
                           tenant.connection_id, f"o@{tenant.domain}", f"o@{tenant.domain}",
                           100, recipients, dt.datetime.now(dt.UTC))


def live_holds(db: psycopg.Connection, tenant: Tenant) -> int:
    row = db.execute("SELECT count(*) AS n FROM quota_holds WHERE account_id = %s",
                     (tenant.account_id,)).fetchone()
    return int(row["n"]) if isinstance(row, dict) else 0


def test_last_unit_race_in_postgresql_mode_gives_out_exactly_the_quota(
        pool: object, tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=100)
    store = holds(pool)
    outcomes: Counter[ReservationStatus] = Counter()
    lock = threading.Lock()

    def session(n: int) -> None:
        txn = uuid.uuid4()
        for r in range(10):
            result = store.reserve(ask(tenant, reservation_member(str(txn), f"r{n}-{r}@x.example")))
            with lock:
                outcomes[result.status] += 1

    threads = [threading.Thread(target=session, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == {ReservationStatus.RESERVED: 100, ReservationStatus.QUOTA_EXHAUSTED: 100}


def test_recorded_message_ends_its_holds_in_the_same_transaction(
        pool: object, tenant_factory: Callable[..., Tenant], db: psycopg.Connection) -> None:
    tenant = tenant_factory(demo_quota=2)
    store = holds(pool)
    txn = uuid.uuid4()
    members = [reservation_member(str(txn), r) for r in ("a@x.example", "b@x.example")]
    assert [store.reserve(ask(tenant, m)).status for m in members] == [
        ReservationStatus.RESERVED, ReservationStatus.RESERVED]
    assert store.reserve(ask(tenant, reservation_member(str(uuid.uuid4()), "c@x.example"))
                         ).status is ReservationStatus.QUOTA_EXHAUSTED
    with database.connect(DatabaseConfig(url=db.info.dsn)) as conn:
        recorded = record_acceptance(conn, message(tenant, txn, ["a@x.example", "b@x.example"]),
                                     members)
    assert recorded.quota_units == 2 and live_holds(db, tenant) == 0
    # Used up in the ledger now, and no hold counted twice: still exhausted, nothing more.
    assert store.reserve(ask(tenant, reservation_member(str(uuid.uuid4()), "d@x.example"))
                         ).status is ReservationStatus.QUOTA_EXHAUSTED


def test_postgresql_mode_counts_pending_rows_as_used_before_and_after_settling(
        pool: object, tenant_factory: Callable[..., Tenant], db: psycopg.Connection) -> None:
    """Recorded recipients not yet billed to a block take their units all the same: the
    decision is the same before and after the account is settled."""
    tenant = tenant_factory(demo_quota=3)
    store = holds(pool)
    with database.connect(DatabaseConfig(url=db.info.dsn)) as conn:
        record_acceptance(conn, message(tenant, uuid.uuid4(), ["a@x.example", "b@x.example"]))
        txn = str(uuid.uuid4())
        last = store.reserve(ask(tenant, reservation_member(txn, "c@x.example")))
        assert (last.status, last.remaining) == (ReservationStatus.RESERVED, 0)
        assert store.reserve(ask(tenant, reservation_member(txn, "d@x.example"))
                             ).status is ReservationStatus.QUOTA_EXHAUSTED
        assert settle(conn, tenant.account_id) == 2
    assert store.reserve(ask(tenant, reservation_member(txn, "d@x.example"))
                         ).status is ReservationStatus.QUOTA_EXHAUSTED


def test_postgresql_mode_counts_the_rate_from_ledger_and_holds(
        pool: object, tenant_factory: Callable[..., Tenant], db: psycopg.Connection) -> None:
    tenant = tenant_factory()
    store = holds(pool)
    first = uuid.uuid4()
    with database.connect(DatabaseConfig(url=db.info.dsn)) as conn:
        record_acceptance(conn, message(tenant, first, ["a@x.example", "b@x.example"]))
    txn = str(uuid.uuid4())
    assert store.reserve(ask(tenant, reservation_member(txn, "c@x.example"), rate_limit=3)
                         ).status is ReservationStatus.RESERVED
    limited = store.reserve(ask(tenant, reservation_member(txn, "d@x.example"), rate_limit=3))
    assert limited.status is ReservationStatus.RATE_LIMITED
    assert 3500 < limited.retry_after <= 3600
    assert store.reserve(ask(tenant, reservation_member(txn, "c@x.example"), rate_limit=3)
                         ).status is ReservationStatus.DUPLICATE


def test_paid_account_beyond_quota_is_overage_in_postgresql_mode(
        pool: object, tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=1, paid=True)
    store = holds(pool)
    txn = str(uuid.uuid4())
    statuses = [store.reserve(ask(tenant, reservation_member(txn, f"{r}@x.example"), paid=True)
                              ).status for r in "ab"]
    assert statuses == [ReservationStatus.RESERVED, ReservationStatus.OVERAGE]


def test_expired_holds_of_a_killed_milter_stop_counting(
        pool: object, tenant_factory: Callable[..., Tenant], db: psycopg.Connection) -> None:
    tenant = tenant_factory(demo_quota=1)
    holds(pool, ttl=1).reserve(ask(tenant, reservation_member(str(uuid.uuid4()), "a@x.example")))
    db.execute("UPDATE quota_holds SET expires_at = now() - interval '1 second' "
               "WHERE account_id = %s", (tenant.account_id,))
    assert holds(pool).reserve(ask(tenant, reservation_member(str(uuid.uuid4()), "b@x.example"))
                               ).status is ReservationStatus.RESERVED
    assert live_holds(db, tenant) == 1


def test_postgresql_unreachable_too_is_service_unavailable() -> None:
    dead = database.open_pool(DatabaseConfig(url="postgresql://postgres@127.0.0.1:1/x",
                                             timeout_ms=300), "dead")
    dead.open(wait=False)
    try:
        with pytest.raises(PostgresHoldsUnavailable):
            holds(dead).reserve(ReservationRequest(1, 1, "t|a@x.example", 0, False))
    finally:
        dead.close()


def test_redis_down_switches_to_postgresql_and_back_with_redis_rebuilt(
        pool: object, tenant_factory: Callable[..., Tenant], db: psycopg.Connection,
        redis_client: redis.Redis, prefix: str) -> None:
    tenant = tenant_factory(demo_quota=10)
    keys = AccountKeys(prefix, tenant.account_id)
    redis_client.set(keys.balance, 999)  # stale: PostgreSQL is the truth after an outage
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)

    def load_balance(account_id: int) -> int:
        with pool.connection() as conn:  # type: ignore[attr-defined]
            return remaining_quota(conn, account_id, dt.datetime.now(dt.UTC))

    live_store = RedisReservations(redis_client, prefix, 60, load_balance)

    def rebuild(accounts: set[int]) -> None:
        with pool.connection() as conn:  # type: ignore[attr-defined]
            rebuild_redis(conn, redis_client, prefix, accounts)

    failover = FailoverReservations(RedisReservations(dead, prefix, 60, lambda a: 10),
                                    holds(pool), rebuild)
    done, pending = uuid.uuid4(), uuid.uuid4()
    for txn, rcpt in ((done, "a@x.example"), (pending, "b@x.example")):
        result = failover.reserve(ask(tenant, reservation_member(str(txn), rcpt), rate_limit=5))
        assert result.status is ReservationStatus.RESERVED
    assert failover.degraded
    with database.connect(DatabaseConfig(url=db.info.dsn)) as conn:
        record_acceptance(conn, message(tenant, done, ["a@x.example"]),
                          failover.held_in_postgres(done))
    failover.commit(tenant.account_id, [reservation_member(str(done), "a@x.example")], 1)

    failover.redis = live_store  # Redis answers again
    assert failover.try_recover() and not failover.degraded
    assert redis_client.get(keys.balance) is None  # reloaded from PostgreSQL on next use
    assert redis_client.zrange(keys.held, 0, -1) == [
        reservation_member(str(pending), "b@x.example").encode()]
    assert set(redis_client.zrange(keys.rate(tenant.connection_id), 0, -1)) == {
        reservation_member(str(done), "a@x.example").encode(),
        reservation_member(str(pending), "b@x.example").encode()}
    # In Redis again: 10 − 1 used − 1 held (copied from PostgreSQL) = 8 left, rate 2 of 5.
    result = failover.reserve(ask(tenant, reservation_member(str(uuid.uuid4()), "c@x.example"),
                                  rate_limit=5))
    assert result.status is ReservationStatus.RESERVED and result.remaining == 7


def test_postgresql_mode_counts_sandbox_mail_in_the_rate_and_holds_nothing_for_it(
        pool: object, tenant_factory: Callable[..., Tenant], db: psycopg.Connection,
        redis_client: redis.Redis, prefix: str) -> None:
    tenant = tenant_factory()
    store = holds(pool)
    sandboxed = uuid.uuid4()
    with database.connect(DatabaseConfig(url=db.info.dsn)) as conn:
        capture(conn, CapturedMessage(sandboxed, "QSBX", "test-node", None,
                                      tenant.account_id, tenant.connection_id,
                                      f"o@{tenant.domain}", f"o@{tenant.domain}",
                                      ["a@x.example", "b@x.example"], b"Subject: t\r\n\r\n"))
        # Redis rebuilt after an outage has them in the connection's hour as well.
        rebuild_redis(conn, redis_client, prefix, {tenant.account_id})
    rate = AccountKeys(prefix, tenant.account_id).rate(tenant.connection_id)
    assert set(redis_client.zrange(rate, 0, -1)) == {
        f"{sandboxed}|a@x.example".encode(), f"{sandboxed}|b@x.example".encode()}
    txn = str(uuid.uuid4())
    sandbox = dataclasses.replace(ask(tenant, reservation_member(txn, "c@x.example"),
                                      rate_limit=3), quota=False)
    assert store.reserve(sandbox).status is ReservationStatus.RESERVED
    assert live_holds(db, tenant) == 0  # nothing held: commit and release have nothing to do
    limited = store.reserve(ask(tenant, reservation_member(txn, "d@x.example"), rate_limit=2))
    assert limited.status is ReservationStatus.RATE_LIMITED  # the sandbox's two count
