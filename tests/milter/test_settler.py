"""The milter's background settler: bills pending rows off the hot path, and an error only
postpones the account to the next round (real PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.store.builders import Tenant, make_tenant
from txrelay.errors import ServiceUnavailable
from txrelay.milter.settler import Settler
from txrelay.store.ledger import AcceptedMessage, record_acceptance


def record(database_url: str, tenant: Tenant, recipients: list[str]) -> None:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:  # type: ignore[arg-type]
        record_acceptance(conn, AcceptedMessage(
            uuid.uuid4(), "4QSET", "test-node", None, tenant.account_id, tenant.connection_id,
            f"o@{tenant.domain}", f"o@{tenant.domain}", 100, recipients,
            dt.datetime.now(dt.UTC)))


def billing(db: psycopg.Connection, tenant: Tenant) -> list[str]:
    rows: Any = db.execute("SELECT billing FROM ledger WHERE account_id = %s ORDER BY id",
                           (tenant.account_id,)).fetchall()
    return [r["billing"] for r in rows]


def test_an_error_keeps_the_account_for_the_next_round(
        database_url: str, db: psycopg.Connection, unique: str) -> None:
    tenant = make_tenant(db, f"{unique}settle", demo_quota=1, paid=True)
    record(database_url, tenant, ["a@x.example", "b@x.example"])
    attempts: list[int] = []

    def connect() -> psycopg.Connection:
        attempts.append(1)
        if len(attempts) == 1:
            raise ServiceUnavailable("cannot connect to PostgreSQL (test)")
        return psycopg.connect(database_url, autocommit=True,
                               row_factory=dict_row)  # type: ignore[arg-type]

    settler = Settler(connect)
    settler.notify(tenant.account_id)
    try:
        assert settler.settle_round() == 0
        assert billing(db, tenant) == ["pending", "pending"]
        assert settler.settle_round() >= 2  # the first round settles every pending account
        assert billing(db, tenant) == ["quota", "overage"]
        assert settler.settle_round() == 0  # nothing new: no work
    finally:
        settler.stop()


def test_notified_accounts_are_settled_by_the_running_thread(
        database_url: str, db: psycopg.Connection, unique: str) -> None:
    tenant = make_tenant(db, f"{unique}thread", demo_quota=5)
    settler = Settler(lambda: psycopg.connect(database_url, autocommit=True,
                                              row_factory=dict_row),  # type: ignore[arg-type]
                      interval=0.05).start()
    try:
        record(database_url, tenant, ["a@x.example"])
        settler.notify(tenant.account_id)
    finally:
        settler.stop()  # one last round before it stops
    assert billing(db, tenant) == ["quota"]
