"""Reports never write: show, list, stats, report and search commands leave every table of
the database as they found it, also with ledger rows still pending (not yet settled), and
still count those rows as settling would."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.cli.conftest import Txrelay
from tests.store.tracking_fixtures import Sender, add_message, make_sender

BOOKED = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)  # the CLI clock reads 2026-11-03


def database_fingerprint(db: psycopg.Connection) -> dict[str, str]:
    """Every table's rows, as one digest per table."""
    tables = [row["tablename"] for row in db.execute(  # type: ignore[call-overload]
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
    digests = {}
    for table in tables:
        query = sql.SQL("SELECT md5(COALESCE(string_agg(t::text, '|' ORDER BY t::text), '')) "
                        "AS digest FROM {} t").format(sql.Identifier(table))
        digests[table] = db.execute(query).fetchone()["digest"]  # type: ignore[index]
    return digests


@pytest.fixture()
def sender_with_pending_rows(db: psycopg.Connection, unique: str) -> Sender:
    """A paid account with a block of 10 and 12 recipients recorded, none settled yet: 10
    will be billed to the block, 2 as overage."""
    sender = make_sender(db, unique, quota=10, kind="booked", booked_at=BOOKED)
    add_message(db, sender, f"P1{unique}", [f"a{i}@x.test" for i in range(5)],
                accepted_at=BOOKED + dt.timedelta(days=1), billing="pending")
    add_message(db, sender, f"P2{unique}", [f"b{i}@x.test" for i in range(7)],
                accepted_at=BOOKED + dt.timedelta(days=1, hours=1), billing="pending",
                message_id=f"<pending-{unique}@shop.example>")
    return sender


def read_only(txrelay: Txrelay, db: psycopg.Connection, *args: str) -> Any:
    """The command's --json output, asserting that every table is as it was before."""
    before = database_fingerprint(db)
    output = txrelay(*args, "--json").json()
    assert database_fingerprint(db) == before
    return output


def pending_rows(db: psycopg.Connection, sender: Sender) -> int:
    row = db.execute("SELECT count(*) AS n FROM ledger WHERE account_id = %s "
                     "AND billing = 'pending'", (sender.account_id,)).fetchone()
    return int(row["n"])  # type: ignore[index]


def test_quota_show_counts_pending_rows_without_settling_them(
        txrelay: Txrelay, db: psycopg.Connection, sender_with_pending_rows: Sender) -> None:
    sender = sender_with_pending_rows
    shown = read_only(txrelay, db, "quota", "show", sender.account)
    assert pending_rows(db, sender) == 12
    assert [(b["amount"], b["used"], b["remaining"]) for b in shown["blocks"]] == [(10, 10, 0)]
    assert (shown["quota_remaining"], shown["paid"]) == (0, True)


def test_billing_report_bills_pending_rows_without_settling_them(
        txrelay: Txrelay, db: psycopg.Connection, sender_with_pending_rows: Sender) -> None:
    sender = sender_with_pending_rows
    report = read_only(txrelay, db, "billing", "report", sender.account, "--period", "2026-11")
    assert pending_rows(db, sender) == 12
    assert (report["mails_from_blocks"], report["overage_mails"]) == (10, 2)
    assert report["amount_due_eur"] == "0.00190"


def test_stats_leave_the_database_unchanged(
        txrelay: Txrelay, db: psycopg.Connection, sender_with_pending_rows: Sender) -> None:
    rows = read_only(txrelay, db, "stats", "--account", sender_with_pending_rows.account)
    assert [(r["connection"], r["arrived"]) for r in rows] == [("Web shop", 12)]


@pytest.mark.parametrize("command", [
    ("account", "list"), ("account", "show", "{account}"), ("connection", "list"),
    ("domain", "list"), ("db", "status"),
    ("messages", "search", "--account", "{account}"), ("quota", "show", "{account}"),
    ("billing", "report", "{account}", "--period", "2026-11"),
    ("stats", "--since", "30d"), ("stats", "--by", "1h", "--account", "{account}")])
def test_show_list_report_and_search_commands_leave_the_database_unchanged(
        txrelay: Txrelay, db: psycopg.Connection, sender_with_pending_rows: Sender,
        command: tuple[str, ...]) -> None:
    args = [part.format(account=sender_with_pending_rows.account) for part in command]
    read_only(txrelay, db, *args)


def test_billing_export_and_messages_show_count_pending_rows_without_settling_them(
        txrelay: Txrelay, db: psycopg.Connection, sender_with_pending_rows: Sender,
        unique: str) -> None:
    exported = read_only(txrelay, db, "billing", "export", "--period", "2026-11")
    line = next(x for x in exported if x["account"] == sender_with_pending_rows.account)
    assert (line["mails_from_blocks"], line["overage_mails"]) == (10, 2)
    [story] = read_only(txrelay, db, "messages", "show", f"P2{unique}")
    assert [r["billing"] for r in story["recipients"]] == ["pending"] * 7
    searched = read_only(txrelay, db, "messages", "search", "--queue-id", f"P1{unique}")
    assert len(searched) == 5
    assert pending_rows(db, sender_with_pending_rows) == 12


def test_billing_report_html_leaves_the_database_unchanged(
        txrelay: Txrelay, db: psycopg.Connection, sender_with_pending_rows: Sender,
        tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    report = read_only(txrelay, db, "billing", "report", sender_with_pending_rows.account,
                       "--period", "2026-11", "--html", str(page))
    assert pending_rows(db, sender_with_pending_rows) == 12
    assert report["overage_mails"] == 2
    assert 'data-figure="overage_mails">2<' in page.read_text()
