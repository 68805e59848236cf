"""The real runtime (PostgreSQL through the daemons' role): a suppression written in the
database reaches the milter with its loop's next run, is refused at RCPT, and the refusal
is counted in PostgreSQL; its removal lets the recipient through again."""

from __future__ import annotations

import datetime as dt
from typing import Any

import Milter
import psycopg

from tests.milter.conftest import Driver
from tests.store.builders import Tenant
from txrelay.milter.runtime import Runtime
from txrelay.store import suppressions
from txrelay.store.suppression_cache import SuppressionCache


def test_a_suppression_in_postgresql_is_refused_counted_and_lifted(
        driver: Driver, tenant: Tenant, runtime: Runtime,
        db: psycopg.Connection[Any]) -> None:
    cache = runtime.suppressions
    assert isinstance(cache, SuppressionCache)
    now = dt.datetime.now(dt.UTC)
    suppressions.suppress(db, tenant.account_id, "gone@customer.example", "hard_bounce", now,
                          dsn="5.1.1", detail="550 5.1.1 user unknown")
    cache.poll()
    outcome = driver.send(tenant, recipients=("gone@customer.example", "ok@customer.example"),
                          queue_id="4QSUPP1")
    code, reply = outcome.rcpt[0]
    assert code == Milter.REJECT and reply is not None and reply[:2] == ("550", "5.1.1")
    assert "is suppressed for this account since" in reply[2]
    assert outcome.eom == Milter.ACCEPT
    cache.poll()  # adds the count through the daemons' role
    row = db.execute("SELECT COALESCE(sum(s.refused), 0) AS n FROM suppressed_counts s "
                     "JOIN connections c ON c.id = s.connection_id WHERE c.account_id = %s",
                     (tenant.account_id,)).fetchone()
    assert row is not None and row["n"] == 1
    suppressions.remove(db, tenant.account_id, "gone@customer.example", now)
    cache.poll()
    again = driver.send(tenant, recipients=("gone@customer.example",), queue_id="4QSUPP2")
    assert again.rcpt[0][0] == Milter.CONTINUE and again.eom == Milter.ACCEPT
