"""The 15-minute rollups (migration 0043) agree exactly with the ledger after every kind of
change the daemons make (record, settle, log outcomes, DSN bounce, complaint, void, a
rolled-back change), folded or not; the reports read from them give the ledger's figures;
the searches each have an index to use."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.store.builders import Tenant
from tests.store.test_ledger import message
from tests.store.tracking_fixtures import MailLog
from txrelay.clock import FixedClock
from txrelay.config import Config
from txrelay.policy.billing import Period
from txrelay.policy.suppression import SuppressionRules
from txrelay.store import database, outcomes, reporting, rollups
from txrelay.store.ledger import record_acceptance, settle
from txrelay.store.tracking import void_unconfirmed
from txrelay.tracker.engine import Tracker
from txrelay.tracker.follower import LogFollower

RULES = SuppressionRules()
# Accepted 3 h 07 min before now, then every 11 minutes: rows in several buckets, some
# sharing one.
FIRST = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=3, minutes=7)

FROM_LEDGER = """
SELECT connection_id, txrelay_rollup_bucket(accepted_at) AS bucket,
       count(*) FILTER (WHERE state <> 'voided') AS arrived,
       count(*) FILTER (WHERE state = 'delivered') AS delivered,
       count(*) FILTER (WHERE state = 'deferred') AS deferred,
       count(*) FILTER (WHERE state = 'bounced') AS bounced,
       count(*) FILTER (WHERE state <> 'voided' AND complained_at IS NOT NULL) AS complained,
       count(*) FILTER (WHERE state IN ('accepted', 'queued')) AS in_flight,
       count(*) FILTER (WHERE billing = 'quota') AS billed_quota,
       count(*) FILTER (WHERE billing = 'overage') AS billed_overage,
       count(*) FILTER (WHERE billing = 'void') AS billed_void,
       count(*) FILTER (WHERE billing = 'pending') AS billed_pending
  FROM ledger WHERE account_id = %s GROUP BY 1, 2"""

FROM_ROLLUPS = """
SELECT connection_id, bucket, sum(arrived) AS arrived, sum(delivered) AS delivered,
       sum(deferred) AS deferred, sum(bounced) AS bounced, sum(complained) AS complained,
       sum(in_flight) AS in_flight, sum(billed_quota) AS billed_quota,
       sum(billed_overage) AS billed_overage, sum(billed_void) AS billed_void,
       sum(billed_pending) AS billed_pending
  FROM (SELECT * FROM ledger_rollups WHERE account_id = %(a)s
        UNION ALL SELECT * FROM ledger_rollup_deltas WHERE account_id = %(a)s) x
 GROUP BY 1, 2"""

FIGURES = ("arrived", "delivered", "deferred", "bounced", "complained", "in_flight",
           "billed_quota", "billed_overage", "billed_void", "billed_pending")


def _table(rows: list[Any]) -> dict[tuple[int, dt.datetime], dict[str, int]]:
    table = {(int(r["connection_id"]), r["bucket"]): {f: int(r[f]) for f in FIGURES}
             for r in rows}
    # A bucket whose rows all changed away sums to zeros in the rollups: the same as absent.
    return {key: figures for key, figures in table.items() if any(figures.values())}


def assert_agree(db: psycopg.Connection, tenant: Tenant) -> dict[str, int]:
    ledger = _table(db.execute(FROM_LEDGER, (tenant.account_id,)).fetchall())
    rolled = _table(db.execute(FROM_ROLLUPS, {"a": tenant.account_id}).fetchall())
    assert rolled == ledger
    return {f: sum(v[f] for v in ledger.values()) for f in FIGURES}


def ledger_id(db: psycopg.Connection, message_row: int | None, recipient: str) -> int:
    row: Any = db.execute("SELECT id FROM ledger WHERE message_id = %s AND recipient = %s",
                          (message_row, recipient)).fetchone()
    return int(row["id"])


def test_after_a_mixed_history_the_rollups_agree_exactly_with_the_ledger(
        conn: psycopg.Connection, db: psycopg.Connection, tmp_path: Path, unique: str,
        config: Config, tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=6, paid=True)
    node, other = f"roll-{unique}", f"roll-void-{unique}"
    recorded = []
    for n in range(5):  # pending rows, 11 minutes apart
        accepted = message(tenant, [f"r{n}a@x.example", f"r{n}b@x.example"], node=node,
                           queue_id=f"QR{unique.upper()}{n}",
                           accepted_at=FIRST + dt.timedelta(minutes=11 * n))
        recorded.append(record_acceptance(conn, accepted).message_row_id)
    never_queued = record_acceptance(conn, message(
        tenant, ["lost@x.example"], node=other, queue_id="QLOST",
        accepted_at=FIRST + dt.timedelta(minutes=3))).message_row_id
    figures = assert_agree(db, tenant)
    assert (figures["arrived"], figures["billed_pending"]) == (11, 11)

    assert settle(conn, tenant.account_id) == 11  # 6 from the demo block, 5 overage
    conn.commit()
    assert rollups.fold(conn) > 0  # the tracker's tick; the rest stays in deltas
    conn.commit()
    figures = assert_agree(db, tenant)
    assert (figures["billed_quota"], figures["billed_overage"]) == (6, 5)

    log = MailLog(tmp_path / "mail.log")
    for n in range(4):
        log.queued(f"QR{unique.upper()}{n}", 2)
    log.delivery(f"QR{unique.upper()}0", "r0a@x.example", "sent")
    log.delivery(f"QR{unique.upper()}0", "r0b@x.example", "sent")
    log.delivery(f"QR{unique.upper()}1", "r1a@x.example", "deferred", detail="451 try later")
    log.delivery(f"QR{unique.upper()}1", "r1b@x.example", "bounced", detail="550 5.1.1 no")
    log.delivery(f"QR{unique.upper()}2", "r2a@x.example", "sent")
    log.delivery(f"QR{unique.upper()}2", "r2b@x.example", "deferred", detail="451 later")
    log.delivery(f"QR{unique.upper()}2", "r2b@x.example", "sent")  # deferred, then delivered
    log.delivery(f"QR{unique.upper()}3", "r3a@x.example", "sent")
    with database.connect(config.database, autocommit=True) as tracker_conn:
        Tracker(tracker_conn, node, LogFollower(log.path, rotation_grace=0.0),
                FixedClock(dt.datetime.now(dt.UTC)), RULES).run_pass()
    assert_agree(db, tenant)

    now = dt.datetime.now(dt.UTC)
    with conn.transaction():  # a DSN turns a delivered recipient into a bounce
        assert outcomes.record_bounce(conn, ledger_id(db, recorded[0], "r0a@x.example"),
                                      "5.2.1", "mailbox disabled", now, source="dsn",
                                      rules=RULES)
    with conn.transaction():  # and an ARF report: a complaint
        assert outcomes.record_complaint(conn, ledger_id(db, recorded[2], "r2a@x.example"),
                                         "abuse", now, rules=RULES)
    with conn.transaction():  # never confirmed by qmgr: voided
        assert void_unconfirmed(conn, other, now - dt.timedelta(minutes=10), now).rows == 1
    with pytest.raises(RuntimeError), conn.transaction():  # undone: leaves no trace
        conn.execute("UPDATE ledger SET state = 'delivered' WHERE message_id = %s",
                     (recorded[4],))
        raise RuntimeError("rolled back")
    conn.commit()
    figures = assert_agree(db, tenant)
    assert figures == {"arrived": 10, "delivered": 4, "deferred": 1, "bounced": 2,
                       "complained": 1, "in_flight": 3, "billed_quota": 6,
                       "billed_overage": 4, "billed_void": 1, "billed_pending": 0}
    assert never_queued is not None
    rollups.fold(conn)
    conn.commit()
    assert_agree(db, tenant)
    assert db.execute("SELECT count(*) AS n FROM ledger_rollup_deltas WHERE account_id = %s",
                      (tenant.account_id,)).fetchone() == {"n": 0}


def test_stats_and_billing_from_the_rollups_equal_the_ledger_for_any_range(
        conn: psycopg.Connection, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory(demo_quota=4, paid=True)
    for n in range(9):
        record_acceptance(conn, message(tenant, [f"s{n}@x.example"],
                                        accepted_at=FIRST + dt.timedelta(minutes=7 * n)))
    settle(conn, tenant.account_id)
    conn.execute("UPDATE ledger SET state = 'delivered' WHERE account_id = %s AND "
                 "recipient IN ('s1@x.example', 's4@x.example', 's8@x.example')",
                 (tenant.account_id,))
    conn.commit()
    rollups.fold(conn)
    conn.commit()
    now = dt.datetime.now(dt.UTC)
    # Ranges on the grid, off it at either end, inside one bucket, and all time.
    for since, until in ((FIRST, now), (FIRST + dt.timedelta(minutes=4), FIRST +
                                        dt.timedelta(minutes=50)),
                         (rollups.grid_floor(FIRST), rollups.grid_floor(FIRST) +
                          dt.timedelta(hours=1)),
                         (FIRST + dt.timedelta(minutes=1), FIRST + dt.timedelta(minutes=2)),
                         (None, now)):
        expected: Any = db.execute(
            "SELECT count(*) FILTER (WHERE state <> 'voided') AS arrived, "
            "count(*) FILTER (WHERE state = 'delivered') AS delivered FROM ledger "
            "WHERE account_id = %s AND accepted_at >= COALESCE(%s::timestamptz, '-infinity') "
            "AND accepted_at < %s", (tenant.account_id, since, until)).fetchone()
        stats = reporting.connection_stats(conn, now=now, active_window=dt.timedelta(days=30),
                                           since=since, until=until,
                                           account=tenant.account_name, connection=None)
        assert [(s.arrived, s.delivered) for s in stats] == [
            (expected["arrived"], expected["delivered"])], (since, until)
    period = Period("test", FIRST + dt.timedelta(minutes=10), now)
    inputs = reporting.billing_inputs(conn, tenant.account_id, period)
    expected = db.execute(
        "SELECT count(*) FILTER (WHERE billing = 'quota') AS quota, "
        "count(*) FILTER (WHERE billing = 'overage') AS overage FROM ledger "
        "WHERE account_id = %s AND accepted_at >= %s AND accepted_at < %s",
        (tenant.account_id, period.start, period.end)).fetchone()
    assert (inputs.mails_from_blocks, inputs.overage_mails) == (expected["quota"],
                                                                 expected["overage"])


def test_a_ledger_row_is_deleted_only_by_pruning(
        conn: psycopg.Connection, tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    record_acceptance(conn, message(tenant, ["keep@x.example"]))
    with pytest.raises(psycopg.errors.RaiseException, match="txrelay db prune"):
        conn.execute("DELETE FROM ledger WHERE account_id = %s", (tenant.account_id,))
    conn.rollback()


def _plan(conn: psycopg.Connection, **search: Any) -> str:
    params = {"queue_id": None, "sender": None, "state": None, "to": None,
              "message_ids": None, "connection": None, "account": None, "since": None,
              "until": None, "limit": 50} | search
    conn.execute("SET LOCAL enable_seqscan = off")  # an index the predicate can use, or none
    row: Any = conn.execute("EXPLAIN (FORMAT JSON) " + reporting.SEARCH_RECIPIENTS,
                            params).fetchone()
    conn.rollback()
    return json.dumps(row["QUERY PLAN"])


@pytest.mark.parametrize(("search", "index"), [
    ({"to": "Someone@Example.ORG"}, "ledger_recipient_lower"),
    ({"message_ids": reporting.message_id_forms("<a.b@shop.example>")}, "messages_message_id"),
    ({"queue_id": "4XYZ1"}, "messages_queue_id"),
])
def test_each_search_uses_an_index(conn: psycopg.Connection, search: dict[str, Any],
                                   index: str) -> None:
    plan = _plan(conn, **search)
    assert index in plan
    assert '"Seq Scan"' not in plan


def test_a_message_id_is_searched_with_and_without_its_brackets() -> None:
    assert reporting.message_id_forms("<a@b>") == ["<a@b>", "a@b"]
    assert reporting.message_id_forms("a@b") == ["<a@b>", "a@b"]
