"""record_acceptance and settle against the real PostgreSQL: allocation, overage, one
transaction."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.store.builders import Tenant, add_block
from txrelay.store.ledger import (
    AcceptedMessage,
    allocate,
    record_acceptance,
    remaining_quota,
    settle,
)


def message(tenant: Tenant, recipients: list[str], **changes: Any) -> AcceptedMessage:
    values: dict[str, Any] = {
        "txn_id": uuid.uuid4(), "queue_id": "4XyZ1", "node": "relay-1",
        "message_id": f"<m1@{tenant.domain}>", "account_id": tenant.account_id,
        "connection_id": tenant.connection_id, "envelope_sender": f"shop@{tenant.domain}",
        "header_from": f"shop@{tenant.domain}", "size": 1234, "recipients": recipients,
        "accepted_at": dt.datetime.now(dt.UTC),
    }
    values.update(changes)
    return AcceptedMessage(**values)


def used(db: psycopg.Connection, block_id: int) -> int:
    row: Any = db.execute("SELECT used FROM quota_blocks WHERE id = %s", (block_id,)).fetchone()
    return int(row["used"])


def billed(db: psycopg.Connection, message_row_id: int | None) -> list[tuple[str, str, Any]]:
    """The message's ledger rows as (recipient, billing, quota block), in RCPT order."""
    rows: Any = db.execute("SELECT recipient, billing, quota_block_id FROM ledger "
                           "WHERE message_id = %s ORDER BY id", (message_row_id,)).fetchall()
    return [(r["recipient"], r["billing"], r["quota_block_id"]) for r in rows]


def demo_block(db: psycopg.Connection, tenant: Tenant) -> int:
    row: Any = db.execute("SELECT id FROM quota_blocks WHERE account_id = %s AND kind = 'demo'",
                          (tenant.account_id,)).fetchone()
    return int(row["id"])


def test_allocation_takes_blocks_in_order_then_overage() -> None:
    allocations = allocate(["a", "b", "c", "d"], [(1, 1), (2, 0), (3, 2)])
    assert [(a.billing, a.quota_block_id) for a in allocations] == [
        ("quota", 1), ("quota", 3), ("quota", 3), ("overage", None)]


def test_oldest_expiring_block_is_used_first_and_demo_last(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=5)
    later = add_block(db, tenant.account_id, "booked", 25000, used=24999, expires_in_days=20)
    sooner = add_block(db, tenant.account_id, "booked", 25000, used=24999, expires_in_days=10)
    expired = add_block(db, tenant.account_id, "booked", 25000, expires_in_days=-1)
    recorded = record_acceptance(conn, message(tenant, ["a@x.example", "b@x.example",
                                                        "c@x.example"]))
    assert settle(conn, tenant.account_id) == 3
    assert billed(db, recorded.message_row_id) == [
        ("a@x.example", "quota", sooner), ("b@x.example", "quota", later),
        ("c@x.example", "quota", demo_block(db, tenant))]
    assert (used(db, sooner), used(db, later), used(db, expired)) == (25000, 25000, 0)


def test_recording_bills_nothing_until_the_account_is_settled(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=5)
    recorded = record_acceptance(conn, message(tenant, ["a@x.example", "b@x.example"]))
    assert [(a.billing, a.quota_block_id) for a in recorded.allocations] == [
        ("pending", None), ("pending", None)]
    assert recorded.quota_units == 2  # the live balance loses them at once
    assert billed(db, recorded.message_row_id) == [
        ("a@x.example", "pending", None), ("b@x.example", "pending", None)]
    assert used(db, demo_block(db, tenant)) == 0
    assert remaining_quota(conn, tenant.account_id, dt.datetime.now(dt.UTC)) == 3


def test_recipients_beyond_quota_are_recorded_as_overage(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=1, paid=True)
    recorded = record_acceptance(conn, message(tenant, ["a@x.example", "b@x.example"]))
    assert remaining_quota(db, tenant.account_id, dt.datetime.now(dt.UTC)) == 0
    settle(conn, tenant.account_id)
    assert billed(db, recorded.message_row_id) == [
        ("a@x.example", "quota", demo_block(db, tenant)), ("b@x.example", "overage", None)]


def test_message_row_and_connection_last_use_are_recorded(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    accepted = message(tenant, ["a@x.example", "b@x.example"])
    record_acceptance(conn, accepted)
    row = db.execute("SELECT * FROM messages WHERE txn_id = %s", (accepted.txn_id,)).fetchone()
    assert row is not None
    assert (row["queue_id"], row["node"], row["recipient_count"], row["size"]) == (
        "4XyZ1", "relay-1", 2, 1234)
    connection = db.execute("SELECT last_used_at FROM connections WHERE id = %s",
                            (tenant.connection_id,)).fetchone()
    assert connection is not None and connection["last_used_at"] == accepted.accepted_at


def test_failure_half_way_leaves_nothing_recorded(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=10)
    # The second ledger row violates NOT NULL, after the message row was written. (A repeated
    # recipient is no failure: it is another copy, migration 0013.)
    accepted = message(tenant, ["a@x.example", None])  # type: ignore[list-item]
    with pytest.raises(psycopg.errors.NotNullViolation):
        record_acceptance(conn, accepted)
    assert db.execute("SELECT 1 FROM messages WHERE txn_id = %s",
                      (accepted.txn_id,)).fetchone() is None
    assert used(db, demo_block(db, tenant)) == 0


def test_copies_of_one_recipient_are_rows_of_their_own(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=10)
    accepted = message(tenant, ["a@x.example", "a@x.example", "b@x.example"])
    recorded = record_acceptance(conn, accepted)
    assert [a.recipient for a in recorded.allocations] == accepted.recipients
    assert record_acceptance(conn, accepted).message_row_id is None  # a replay adds nothing
    settle(conn, tenant.account_id)
    assert used(db, demo_block(db, tenant)) == 3


def test_same_transaction_recorded_twice_counts_once(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=10)
    accepted = message(tenant, ["a@x.example"])
    record_acceptance(conn, accepted)
    again = record_acceptance(conn, accepted)
    assert again.message_row_id is None
    settle(conn, tenant.account_id)
    assert used(db, demo_block(db, tenant)) == 1


def test_remaining_quota_counts_live_blocks_only(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=1000)
    add_block(db, tenant.account_id, "booked", 25000, used=5000, expires_in_days=3)
    add_block(db, tenant.account_id, "booked", 25000, expires_in_days=-3)
    assert remaining_quota(conn, tenant.account_id, dt.datetime.now(dt.UTC)) == 21000
