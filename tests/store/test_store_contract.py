"""The milter's store Protocols: the same cases against the in-memory implementations (the
fast milter ring's) and the real ones (PostgreSQL and Redis), so the two cannot drift."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import redis

from tests.memory_store import (
    MemoryLedger,
    MemoryPolicy,
    MemoryRefusals,
    MemoryReservations,
    MemorySandbox,
    MemorySuppressions,
)
from tests.store.builders import Tenant, make_tenant
from txrelay.clock import SystemClock
from txrelay.config import Config
from txrelay.milter.refusal_budget import RefusalBudget, Refusals
from txrelay.policy.quota import ReservationStatus
from txrelay.store import suppressions as suppression_rows
from txrelay.store.ledger import AcceptedMessage
from txrelay.store.policy import PolicyLoader
from txrelay.store.policy_cache import PolicyCache, PolicySource
from txrelay.store.recording import Ledger, PostgresLedger, PostgresQuotaBalance
from txrelay.store.reservations import (
    RedisReservations,
    ReservationRequest,
    ReservationStore,
    reservation_member,
)
from txrelay.store.sandbox import CapturedMessage, PostgresSandbox, Sandbox, find_sandbox_message
from txrelay.store.suppression_cache import SuppressionCache, SuppressionList

RESERVED, OVERAGE, DUPLICATE = (ReservationStatus.RESERVED, ReservationStatus.OVERAGE,
                                ReservationStatus.DUPLICATE)


@dataclass
class Stores:
    """One implementation of each Protocol, and how to add a tenant to all of them."""

    ledger: Ledger
    reservations: ReservationStore
    policy: PolicySource
    add_tenant: Callable[..., Tenant]
    cold_reservations: Callable[[], ReservationStore]  # a store that has loaded no balance
    suppressions: SuppressionList
    # suppress(tenant, address, expires_at) and remove(tenant, address) as the CLI and the
    # tracker do, then what the milter's list holds after its next read
    suppress: Callable[[Tenant, str, dt.datetime | None], None]
    remove: Callable[[Tenant, str], None]
    refused_count: Callable[[int], int]  # suppressed recipients counted for a connection
    sandbox: Sandbox
    captured: Callable[[uuid.UUID], tuple[bytes, list[str]] | None]
    refusals: Callable[[int], Refusals]  # a refusal budget of that many messages an hour


@pytest.fixture(params=["memory", "postgresql+redis"])
def stores(request: pytest.FixtureRequest, config: Config, unique: str) -> Iterator[Stores]:
    counter = iter(range(1000))
    if request.param == "memory":
        ledger = MemoryLedger()
        policy = MemoryPolicy(config.quota.demo_rate_limit)

        def add_memory_tenant(demo_quota: int = 1000, **options: Any) -> Tenant:
            tenant = policy.add_tenant(f"{unique}{next(counter)}", **options)
            ledger.grant(tenant.account_id, demo_quota)
            return tenant

        def memory_store() -> ReservationStore:
            return MemoryReservations(ledger.remaining_quota, load_overage=ledger.overage_used)

        listed = MemorySuppressions(SystemClock())
        sandbox = MemorySandbox()

        def memory_captured(txn_id: uuid.UUID) -> tuple[bytes, list[str]] | None:
            found = sandbox.messages.get(str(txn_id))
            return None if found is None else (found.raw, list(found.recipients))

        yield Stores(
            ledger, memory_store(), policy, add_memory_tenant, memory_store, listed,
            lambda tenant, address, expires_at: listed.suppress(
                tenant.account_id, address, "hard_bounce", dsn="5.1.1", expires_at=expires_at),
            lambda tenant, address: listed.remove(tenant.account_id, address),
            lambda connection_id: sum(n for (c, _), n in listed.counts.items()
                                      if c == connection_id),
            sandbox, memory_captured,
            lambda budget: MemoryRefusals(budget, SystemClock()))
        return
    db: psycopg.Connection[Any] = request.getfixturevalue("db")
    pool: Any = request.getfixturevalue("pool")
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"), socket_timeout=5)
    balance = PostgresQuotaBalance(pool, SystemClock())
    cache = PolicyCache(pool, PolicyLoader(config.quota), 60)
    prefixes = iter(range(1000))

    def add_real_tenant(**options: Any) -> Tenant:
        tenant = make_tenant(db, f"{unique}{next(counter)}", **options)
        assert cache.refresh()
        return tenant

    def cold() -> ReservationStore:
        return RedisReservations(client, f"ctr{unique}{next(prefixes)}", 60,
                                 balance.remaining_quota, balance.overage_used)

    listed = SuppressionCache(pool, SystemClock(), 60)  # read by hand: no loop started

    def suppress(tenant: Tenant, address: str, expires_at: dt.datetime | None) -> None:
        suppression_rows.suppress(db, tenant.account_id, address, "hard_bounce",
                                  dt.datetime.now(dt.UTC), expires_at=expires_at, dsn="5.1.1")
        listed.refresh()

    def remove(tenant: Tenant, address: str) -> None:
        suppression_rows.remove(db, tenant.account_id, address, dt.datetime.now(dt.UTC))
        listed.refresh()

    def refused_count(connection_id: int) -> int:
        listed.flush_counts()
        row = db.execute("SELECT coalesce(sum(refused), 0) AS n FROM suppressed_counts "
                         "WHERE connection_id = %s", (connection_id,)).fetchone()
        return int(row["n"]) if row else 0

    def captured(txn_id: uuid.UUID) -> tuple[bytes, list[str]] | None:
        found = find_sandbox_message(db, str(txn_id))
        return None if found is None else (found.raw, found.recipients)

    listed.refresh()
    yield Stores(PostgresLedger(pool, SystemClock()), cold(), cache, add_real_tenant, cold,
                 listed, suppress, remove, refused_count, PostgresSandbox(pool), captured,
                 lambda budget: RefusalBudget(client, f"ctr{unique}{next(prefixes)}", budget,
                                              SystemClock()))
    client.close()


PERIOD = dt.datetime.now(dt.UTC).strftime("%Y-%m")


def reserve(store: ReservationStore, tenant: Tenant, recipient: str, *, txn: str = "t1",
            rate_limit: int = 0, paid: bool = False, overage_cap: int | None = None,
            quota: bool = True) -> tuple[ReservationStatus, int]:
    result = store.reserve(ReservationRequest(
        tenant.account_id, tenant.connection_id, reservation_member(txn, recipient),
        rate_limit, paid, overage_cap, PERIOD, quota))
    return result.status, result.remaining


def accepted(tenant: Tenant, recipients: list[str], txn_id: uuid.UUID | None = None,
             ) -> AcceptedMessage:
    return AcceptedMessage(
        txn_id=txn_id or uuid.uuid4(), queue_id="4QCONTRACT", node="contract-node",
        message_id=f"<{uuid.uuid4().hex}@{tenant.domain}>", account_id=tenant.account_id,
        connection_id=tenant.connection_id, envelope_sender=f"orders@{tenant.domain}",
        header_from=f"orders@{tenant.domain}", size=1234, recipients=recipients,
        accepted_at=dt.datetime.now(dt.UTC))


def members(txn: str, *recipients: str) -> list[str]:
    return [reservation_member(txn, r) for r in recipients]


def test_reserve_commit_and_release_count_units_alike(stores: Stores) -> None:
    tenant = stores.add_tenant(demo_quota=3)
    store = stores.reservations
    assert reserve(store, tenant, "a@x.example") == (RESERVED, 2)
    assert reserve(store, tenant, "b@x.example") == (RESERVED, 1)
    assert reserve(store, tenant, "a@x.example") == (DUPLICATE, 0)
    assert store.release(tenant.account_id, tenant.connection_id,
                         members("t1", "b@x.example", "never@x.example")) == 1
    assert reserve(store, tenant, "c@x.example") == (RESERVED, 1)
    assert reserve(store, tenant, "d@x.example") == (RESERVED, 0)
    status, remaining = reserve(store, tenant, "e@x.example")
    assert (status, remaining) == (ReservationStatus.QUOTA_EXHAUSTED, 0)
    assert store.commit(tenant.account_id, members("t1", "a@x.example", "c@x.example"), 2) == 2
    assert reserve(store, tenant, "f@x.example") == (ReservationStatus.QUOTA_EXHAUSTED, 0)
    assert store.release(tenant.account_id, tenant.connection_id,
                         members("t1", "d@x.example")) == 1
    assert reserve(store, tenant, "f@x.example") == (RESERVED, 0)


def test_paid_account_beyond_its_quota_reserves_as_overage(stores: Stores) -> None:
    tenant = stores.add_tenant(demo_quota=1, paid=True)
    store = stores.reservations
    assert reserve(store, tenant, "a@x.example", paid=True) == (RESERVED, 0)
    assert reserve(store, tenant, "b@x.example", paid=True) == (OVERAGE, -1)
    assert reserve(store, tenant, "c@x.example", paid=True) == (OVERAGE, -2)


def test_overage_cap_refuses_the_first_recipient_beyond_it_held_or_recorded(
        stores: Stores) -> None:
    """Cap 2 beyond a quota of 1: a in quota, b and c overage, d refused; once a, b, c are
    recorded and committed a cold store (loading from the ledger) refuses e as well, and a
    released overage hold frees its unit."""
    tenant = stores.add_tenant(demo_quota=1, paid=True, overage_cap=2)
    store, ledger = stores.reservations, stores.ledger
    cap = ReservationStatus.OVERAGE_CAP
    assert reserve(store, tenant, "a@x.example", paid=True, overage_cap=2) == (RESERVED, 0)
    assert reserve(store, tenant, "b@x.example", paid=True, overage_cap=2) == (OVERAGE, -1)
    assert reserve(store, tenant, "c@x.example", paid=True, overage_cap=2) == (OVERAGE, -2)
    assert reserve(store, tenant, "d@x.example", paid=True, overage_cap=2) == (cap, -2)
    store.release(tenant.account_id, tenant.connection_id, members("t1", "c@x.example"))
    assert reserve(store, tenant, "d@x.example", paid=True, overage_cap=2) == (OVERAGE, -2)
    recorded = ledger.record(accepted(tenant, ["a@x.example", "b@x.example", "d@x.example"]))
    store.commit(tenant.account_id, members("t1", "a@x.example", "b@x.example", "d@x.example"),
                 recorded.quota_units, PERIOD)
    assert reserve(store, tenant, "e@x.example", txn="t2", paid=True, overage_cap=2) == (cap, 0)
    cold = stores.cold_reservations()
    assert reserve(cold, tenant, "e@x.example", txn="t2", paid=True, overage_cap=2) == (cap, 0)
    assert reserve(cold, tenant, "e@x.example", txn="t2", paid=True, overage_cap=3) == (
        OVERAGE, -1)
    assert reserve(cold, tenant, "f@x.example", txn="t2", paid=True) == (OVERAGE, -2)


def test_overage_cap_zero_refuses_a_paid_account_at_quota(stores: Stores) -> None:
    tenant = stores.add_tenant(demo_quota=1, paid=True, overage_cap=0)
    store = stores.reservations
    assert reserve(store, tenant, "a@x.example", paid=True, overage_cap=0) == (RESERVED, 0)
    assert reserve(store, tenant, "b@x.example", paid=True, overage_cap=0) == (
        ReservationStatus.OVERAGE_CAP, 0)


def test_hourly_rate_limit_refuses_the_extra_recipient_and_release_gives_its_slot_back(
        stores: Stores) -> None:
    tenant = stores.add_tenant()
    store = stores.reservations
    assert reserve(store, tenant, "a@x.example", rate_limit=2)[0] is RESERVED
    assert reserve(store, tenant, "b@x.example", rate_limit=2)[0] is RESERVED
    result = store.reserve(ReservationRequest(tenant.account_id, tenant.connection_id,
                                              reservation_member("t1", "c@x.example"), 2,
                                              False))
    assert result.status is ReservationStatus.RATE_LIMITED and 3590 < result.retry_after <= 3600
    store.release(tenant.account_id, tenant.connection_id, members("t1", "b@x.example"))
    assert reserve(store, tenant, "c@x.example", rate_limit=2)[0] is RESERVED


def test_sandbox_recipients_count_toward_the_hourly_rate_and_hold_no_quota(
        stores: Stores) -> None:
    tenant, fresh = stores.add_tenant(), stores.add_tenant()
    store = stores.reservations
    assert reserve(store, tenant, "a@x.example", rate_limit=2, quota=False) == (RESERVED, 0)
    assert reserve(store, tenant, "b@x.example", rate_limit=2, quota=False) == (RESERVED, 0)
    limited = ReservationStatus.RATE_LIMITED
    assert reserve(store, tenant, "c@x.example", rate_limit=2, quota=False)[0] is limited
    assert reserve(store, tenant, "c@x.example", rate_limit=2)[0] is limited  # one hour
    store.release(tenant.account_id, tenant.connection_id, members("t1", "b@x.example"))
    assert reserve(store, tenant, "c@x.example", rate_limit=2, quota=False)[0] is RESERVED
    # No quota unit was held: the account's first live recipient sees its whole balance.
    assert reserve(store, tenant, "d@x.example")[1] == reserve(store, fresh, "d@x.example")[1]


def test_recorded_acceptance_reads_back_and_a_retry_records_nothing(stores: Stores) -> None:
    tenant = stores.add_tenant(demo_quota=10)
    message = accepted(tenant, ["a@x.example", "b@x.example", "a@x.example"])
    first = stores.ledger.record(message)
    assert first.message_row_id is not None
    assert [(a.recipient, a.billing) for a in first.allocations] == [
        ("a@x.example", "pending"), ("b@x.example", "pending"), ("a@x.example", "pending")]
    assert first.quota_units == 3 and first.journaled == 0
    assert stores.ledger.remaining_quota(tenant.account_id) == 7
    again = stores.ledger.record(message)
    assert (again.message_row_id, list(again.allocations), again.quota_units) == (None, [], 0)
    assert stores.ledger.remaining_quota(tenant.account_id) == 7


def test_remaining_quota_never_goes_below_zero(stores: Stores) -> None:
    tenant = stores.add_tenant(demo_quota=1)
    stores.ledger.record(accepted(tenant, ["a@x.example", "b@x.example"]))
    assert stores.ledger.remaining_quota(tenant.account_id) == 0


def test_policy_snapshot_finds_connections_domains_and_accounts(
        stores: Stores, config: Config) -> None:
    demo = stores.add_tenant()
    paid = stores.add_tenant(paid=True, rate_limit=7)
    disabled = stores.add_tenant(enabled=False)
    offboarded = stores.add_tenant(disabled=True, overage_cap=5)
    snapshot = stores.policy.snapshot_for_login(demo.username)
    assert snapshot is not None and stores.policy.refresh()
    for tenant, enabled, rate_limit, is_paid in (
            (demo, True, config.quota.demo_rate_limit, False), (paid, True, 7, True),
            (disabled, False, config.quota.demo_rate_limit, False)):
        connection = snapshot.connections[tenant.username]
        assert (connection.id, connection.name, connection.account_id, connection.enabled,
                connection.domains, connection.rate_limit) == (
            tenant.connection_id, tenant.connection_name, tenant.account_id, enabled,
            frozenset({tenant.domain}), rate_limit)
        domain = snapshot.domains[tenant.domain]
        assert (domain.domain, domain.account_id, domain.list_help, domain.selector,
                domain.algorithm) == (tenant.domain, tenant.account_id, tenant.list_help,
                                      tenant.selector, "rsa")
        assert domain.signing_key is not None
        assert snapshot.account(tenant.account_id).paid is is_paid
    account = snapshot.account(offboarded.account_id)
    assert (account.name, account.disabled, account.overage_cap) == (
        offboarded.account_name, True, 5)
    assert (snapshot.account(demo.account_id).disabled,
            snapshot.account(demo.account_id).overage_cap) == (False, None)
    unknown = stores.policy.snapshot_for_login("nobody-here")
    assert unknown is not None and "nobody-here" not in unknown.connections
    assert "shop-nobody.example" not in unknown.domains


def test_policy_snapshot_carries_return_path_and_bounces(stores: Stores) -> None:
    plain = stores.add_tenant()
    own = stores.add_tenant(own_return_path=True, bounces="keep")
    assert stores.policy.refresh()
    snapshot = stores.policy.snapshot_for_login(own.username)
    assert snapshot is not None
    assert snapshot.domains[plain.domain].return_path == ""
    assert snapshot.connections[plain.username].keep_bounces is False
    assert snapshot.domains[own.domain].return_path == f"bounces.{own.domain}"
    assert snapshot.connections[own.username].keep_bounces is True


def test_quota_balance_agrees_after_a_mixed_sequence(stores: Stores) -> None:
    """Reserve, release, record, commit, a retried record, a cold store loading the balance:
    the live balance and the ledger's remaining quota tell the same story on both."""
    tenant = stores.add_tenant(demo_quota=5)
    store, ledger = stores.reservations, stores.ledger
    for recipient in ("a@x.example", "b@x.example", "c@x.example"):
        reserve(store, tenant, recipient)
    store.release(tenant.account_id, tenant.connection_id, members("t1", "c@x.example"))
    first = accepted(tenant, ["a@x.example", "b@x.example"])
    recorded = ledger.record(first)
    store.commit(tenant.account_id, members("t1", "a@x.example", "b@x.example"),
                 recorded.quota_units)
    assert ledger.remaining_quota(tenant.account_id) == 3
    assert reserve(store, tenant, "d@x.example", txn="t2") == (RESERVED, 2)
    assert ledger.record(first).quota_units == 0  # a retry bills nothing again
    assert ledger.remaining_quota(tenant.account_id) == 3
    cold = stores.cold_reservations()
    assert reserve(cold, tenant, "e@x.example", txn="t3") == (RESERVED, 2)
    second = ledger.record(accepted(tenant, ["d@x.example", "e@x.example", "f@x.example",
                                             "g@x.example"]))
    assert ledger.remaining_quota(tenant.account_id) == 0
    store.commit(tenant.account_id, members("t2", "d@x.example"), second.quota_units)
    assert reserve(store, tenant, "h@x.example", txn="t4") == (
        ReservationStatus.QUOTA_EXHAUSTED, 0)
    assert reserve(stores.cold_reservations(), tenant, "h@x.example", txn="t4") == (
        ReservationStatus.QUOTA_EXHAUSTED, 0)


def test_suppressed_recipient_is_found_for_its_account_only_until_removed_or_expired(
        stores: Stores) -> None:
    tenant, other = stores.add_tenant(), stores.add_tenant()
    listed = stores.suppressions
    assert listed.lookup(tenant.account_id, "gone@x.example") is None
    stores.suppress(tenant, "Gone@X.example", None)
    found = listed.lookup(tenant.account_id, "gone@x.example")
    assert found is not None and (found.reason, found.dsn, found.expires_at) == (
        "hard_bounce", "5.1.1", None)
    assert listed.lookup(other.account_id, "gone@x.example") is None
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    stores.suppress(tenant, "soon@x.example", later)
    soon = listed.lookup(tenant.account_id, "soon@x.example")
    assert soon is not None and soon.expires_at == later
    stores.suppress(tenant, "past@x.example", dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    assert listed.lookup(tenant.account_id, "past@x.example") is None
    stores.remove(tenant, "gone@x.example")
    assert listed.lookup(tenant.account_id, "gone@x.example") is None
    assert listed.lookup(tenant.account_id, "soon@x.example") is not None


def test_refused_suppressed_recipients_are_counted_per_connection(stores: Stores) -> None:
    tenant, other = stores.add_tenant(), stores.add_tenant()
    for _ in range(3):
        stores.suppressions.count_refused(tenant.connection_id)
    stores.suppressions.count_refused(other.connection_id)
    assert stores.refused_count(tenant.connection_id) == 3
    assert stores.refused_count(other.connection_id) == 1


def captured_message(tenant: Tenant, txn_id: uuid.UUID, raw: bytes) -> CapturedMessage:
    return CapturedMessage(
        txn_id=txn_id, queue_id="4QSANDBOX", node="contract-node",
        message_id=f"<{uuid.uuid4().hex}@{tenant.domain}>", account_id=tenant.account_id,
        connection_id=tenant.connection_id, envelope_sender=f"orders@{tenant.domain}",
        header_from=f"orders@{tenant.domain}", recipients=["a@x.example", "b@x.example"],
        raw=raw)


def test_sandbox_keeps_the_first_capture_of_a_transaction(stores: Stores) -> None:
    tenant = stores.add_tenant()  # the store keeps what the milter hands it, whatever the kind
    txn_id = uuid.uuid4()
    assert stores.captured(txn_id) is None
    first = b"Subject: first\r\n\r\nbody\r\n"
    stores.sandbox.capture(captured_message(tenant, txn_id, first))
    stores.sandbox.capture(captured_message(tenant, txn_id, b"Subject: retry\r\n\r\nx\r\n"))
    assert stores.captured(txn_id) == (first, ["a@x.example", "b@x.example"])
    other = uuid.uuid4()
    stores.sandbox.capture(captured_message(tenant, other, b"Subject: other\r\n\r\ny\r\n"))
    assert stores.captured(other) == (b"Subject: other\r\n\r\ny\r\n",
                                      ["a@x.example", "b@x.example"])
    assert stores.captured(txn_id) == (first, ["a@x.example", "b@x.example"])


def test_refusal_budget_is_spent_at_its_count_per_connection(stores: Stores) -> None:
    tenant, other = stores.add_tenant(), stores.add_tenant()
    budget = stores.refusals(2)
    assert budget.spent(tenant.connection_id) is None
    budget.count(tenant.connection_id)
    assert budget.spent(tenant.connection_id) is None
    budget.count(tenant.connection_id)
    assert budget.spent(tenant.connection_id) == 2
    budget.count(tenant.connection_id)
    assert budget.spent(tenant.connection_id) == 3
    assert budget.spent(other.connection_id) is None
    reply = budget.refusal("Web shop", 3)
    assert (reply.smtp_code, reply.enhanced_code) == ("421", "4.7.0")
    assert 'connection "Web shop" had 3 messages refused this hour' in reply.text
    unlimited = stores.refusals(0)
    for _ in range(5):
        unlimited.count(tenant.connection_id)
    assert unlimited.spent(tenant.connection_id) is None
