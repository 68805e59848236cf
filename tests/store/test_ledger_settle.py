"""Deferred block allocation (migration 0009): recording never waits for the account's block
lock, settling is idempotent and exact with several settlers, a block serves the rows
accepted while it was live, voiding a pending row credits nothing."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.store.builders import Tenant, add_block
from tests.store.test_ledger import billed, demo_block, message, used
from txrelay.store.ledger import record_acceptance, settle, settle_all
from txrelay.store.lifecycle import expire_blocks
from txrelay.store.tracking import void_unconfirmed


def billing_counts(db: psycopg.Connection, tenant: Tenant) -> dict[str, int]:
    rows: Any = db.execute("SELECT billing, count(*) AS n FROM ledger WHERE account_id = %s "
                           "GROUP BY billing", (tenant.account_id,)).fetchall()
    return {r["billing"]: int(r["n"]) for r in rows}


def test_recording_does_not_wait_for_a_transaction_holding_the_blocks(
        database_url: str, conn: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    """Another transaction holds every block of the account FOR UPDATE (a settler, the
    tick); with lock_timeout set, recording would fail if it waited for them."""
    tenant = tenant_factory(demo_quota=10, paid=True)
    with psycopg.connect(database_url, row_factory=dict_row) as holder:  # type: ignore[arg-type]
        locked = holder.execute("SELECT id FROM quota_blocks WHERE account_id = %s FOR UPDATE",
                                (tenant.account_id,)).fetchall()
        assert len(locked) == 2
        conn.execute("SET lock_timeout = '200ms'")
        conn.commit()
        recorded = record_acceptance(conn, message(tenant, ["a@x.example", "b@x.example"]))
        assert recorded.message_row_id is not None
        # The lock is real: settling, which needs the blocks, cannot get them.
        with pytest.raises(psycopg.errors.LockNotAvailable):
            settle(conn, tenant.account_id)
        holder.rollback()
    assert settle(conn, tenant.account_id) == 2


def test_settling_twice_settles_nothing_the_second_time(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=3, paid=True)
    for n in range(2):
        record_acceptance(conn, message(tenant, [f"a{n}@x.example", f"b{n}@x.example"]))
    assert settle(conn, tenant.account_id) == 4
    assert settle(conn, tenant.account_id) == 0
    assert settle_all(conn, [tenant.account_id]) == 0
    assert used(db, demo_block(db, tenant)) == 3
    assert billing_counts(db, tenant) == {"quota": 3, "overage": 1}


def test_settlers_at_once_hand_out_each_unit_once(
        database_url: str, conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=30, paid=True)
    add_block(db, tenant.account_id, "booked", 25000, used=24990, expires_in_days=5)
    for n in range(40):
        record_acceptance(conn, message(tenant, [f"m{n}a@x.example", f"m{n}b@x.example"]))
    settled: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def settler() -> None:
        try:
            with psycopg.connect(database_url, row_factory=dict_row) as own:  # type: ignore[arg-type]
                start.wait()
                settled.append(settle(own, tenant.account_id))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=settler) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and sorted(settled) == [0, 0, 0, 80]
    assert used(db, demo_block(db, tenant)) == 30
    assert billing_counts(db, tenant) == {"quota": 40, "overage": 40}


def test_a_block_that_expired_before_settling_serves_the_rows_accepted_before(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=1, paid=True)
    block = add_block(db, tenant.account_id, "booked", 25000, expires_in_days=-1)
    now = dt.datetime.now(dt.UTC)
    before = record_acceptance(conn, message(tenant, ["a@x.example", "b@x.example"],
                                             accepted_at=now - dt.timedelta(days=2)))
    after = record_acceptance(conn, message(tenant, ["c@x.example", "d@x.example"],
                                            accepted_at=now))
    assert settle(conn, tenant.account_id) == 4
    assert billed(db, before.message_row_id) == [
        ("a@x.example", "quota", block), ("b@x.example", "quota", block)]
    assert billed(db, after.message_row_id) == [
        ("c@x.example", "quota", demo_block(db, tenant)), ("d@x.example", "overage", None)]
    assert used(db, block) == 2


def test_expiry_settles_first_so_the_block_closes_with_its_last_rows(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=1, paid=True)
    block = add_block(db, tenant.account_id, "booked", 25000, expires_in_days=-1)
    record_acceptance(conn, message(tenant, ["a@x.example"],
                                    accepted_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2)))
    with conn.transaction():
        expired = expire_blocks(conn, dt.datetime.now(dt.UTC), [tenant.account_id])
    assert [(e.block_id, e.expired_unused) for e in expired] == [(block, 24999)]
    assert billing_counts(db, tenant) == {"quota": 1}


def test_voiding_a_pending_row_credits_no_block_and_it_is_never_billed(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=5)
    accepted = message(tenant, ["a@x.example", "b@x.example"], node="relay-void",
                       accepted_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    recorded = record_acceptance(conn, accepted)
    now = dt.datetime.now(dt.UTC)
    with conn.transaction():
        voided = void_unconfirmed(conn, "relay-void", now - dt.timedelta(minutes=10), now)
    assert (voided.rows, list(voided.credits)) == (2, [])
    assert settle(conn, tenant.account_id) == 0
    assert billed(db, recorded.message_row_id) == [
        ("a@x.example", "void", None), ("b@x.example", "void", None)]
    assert used(db, demo_block(db, tenant)) == 0
