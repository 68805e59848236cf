"""record_acceptance as one server-side function (migrations 0007, 0009) and settle: the
same allocation rules under concurrency, the connection's last use written at most once a
minute, errors leave the connection usable."""

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
from txrelay.store.ledger import record_acceptance, settle


def last_used(db: psycopg.Connection, tenant: Tenant) -> Any:
    row: Any = db.execute("SELECT last_used_at FROM connections WHERE id = %s",
                          (tenant.connection_id,)).fetchone()
    return row["last_used_at"]


def test_last_use_is_written_once_a_minute(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=10)
    start = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
    record_acceptance(conn, message(tenant, ["a@x.example"], accepted_at=start))
    record_acceptance(conn, message(tenant, ["a@x.example"],
                                    accepted_at=start + dt.timedelta(seconds=59)))
    assert last_used(db, tenant) == start
    later = start + dt.timedelta(seconds=61)
    record_acceptance(conn, message(tenant, ["a@x.example"], accepted_at=later))
    assert last_used(db, tenant) == later


def test_blocks_are_split_per_recipient_and_never_overfilled(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=1, paid=True)
    first = add_block(db, tenant.account_id, "booked", 25000, used=24998, expires_in_days=5)
    recorded = record_acceptance(conn, message(tenant, [f"r{i}@x.example" for i in range(5)]))
    settle(conn, tenant.account_id)
    assert billed(db, recorded.message_row_id) == [
        ("r0@x.example", "quota", first), ("r1@x.example", "quota", first),
        ("r2@x.example", "quota", demo_block(db, tenant)),
        ("r3@x.example", "overage", None), ("r4@x.example", "overage", None)]
    assert (used(db, first), used(db, demo_block(db, tenant))) == (25000, 1)


def test_concurrent_messages_of_one_account_hand_out_each_unit_once(
        database_url: str, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    """Four senders record while each settles the account after every message: four
    settlers at once, each unit handed out once and used exact."""
    tenant = tenant_factory(demo_quota=30, paid=True)
    results: list[int] = []
    errors: list[BaseException] = []

    def send(worker: int) -> None:
        try:
            with psycopg.connect(database_url, row_factory=dict_row) as own:  # type: ignore[arg-type]
                for n in range(10):
                    record_acceptance(own, message(
                        tenant, [f"w{worker}m{n}a@x.example", f"w{worker}m{n}b@x.example"]))
                    results.append(settle(own, tenant.account_id))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(results) == 80 and used(db, demo_block(db, tenant)) == 30
    rows: Any = db.execute("SELECT billing, count(*) AS n FROM ledger WHERE account_id = %s "
                           "GROUP BY billing ORDER BY billing", (tenant.account_id,)).fetchall()
    assert [(r["billing"], r["n"]) for r in rows] == [("overage", 50), ("quota", 30)]


def test_connection_is_usable_after_a_failed_record(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=10)
    with pytest.raises(psycopg.errors.NotNullViolation):  # the second ledger row
        record_acceptance(conn, message(tenant, ["a@x.example", None]))  # type: ignore[list-item]
    recorded = record_acceptance(conn, message(tenant, ["b@x.example"]))
    assert recorded.message_row_id is not None and settle(conn, tenant.account_id) == 1
    assert used(db, demo_block(db, tenant)) == 1
