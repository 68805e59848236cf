"""`txrelay billing report --html FILE`: the account owner's monthly page, against the ledger
and the --json report (one set of figures), self-contained, and an empty month that says so."""

from __future__ import annotations

import datetime as dt
import html
import re
from pathlib import Path

import psycopg

from tests.cli.conftest import Txrelay
from tests.store.tracking_fixtures import Sender, add_message, make_sender

DAY = dt.timedelta(days=1)
START = dt.datetime(2026, 10, 5, 10, 0, tzinfo=dt.UTC)


def figures(page: str) -> dict[str, str]:
    """Every data-figure=KEY value on the page."""
    return {key: html.unescape(value) for key, value in
            re.findall(r'data-figure="([a-z_]+)">([^<]*)<', page)}


def totals(page: str) -> dict[str, int]:
    return {key: int(value) for key, value in re.findall(r'data-total="([a-z_]+)">(\d+)<', page)}


def day_row(page: str, day: str) -> list[int]:
    row = re.search(rf'<tr><th scope="row">{day}</th>(.*?)</tr>', page, re.S)
    assert row, f"no row for {day}"
    return [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', row.group(1))]


def assert_self_contained(page: str) -> None:
    """Nothing loaded from elsewhere, no script: it reads the same offline."""
    assert page.startswith("<!doctype html>")
    for needle in ("<script", "<link", " src=", "@import", "url(http", "<iframe", "<img"):
        assert needle not in page.lower(), needle
    assert not re.search(r'href="(?!#)', page), "a link to somewhere else"


def october(db: psycopg.Connection, unique: str) -> Sender:
    """A paid account's October: a block of 25,000 booked on the 5th, 3 recipients from it
    on the 6th (one bounced, still billed), 7 overage on the 7th, 1 never queued (voided),
    and mail in November that October must not count."""
    sender = make_sender(db, unique, quota=25000, kind="booked", booked_at=START)
    first = add_message(db, sender, f"H1{unique}", ["a@x.test", "b@x.test", "c@x.test"],
                        accepted_at=START + DAY)
    db.execute("UPDATE ledger SET state = 'delivered' WHERE message_id = %s AND recipient "
               "<> 'c@x.test'", (first,))
    db.execute("UPDATE ledger SET state = 'bounced' WHERE message_id = %s AND recipient = "
               "'c@x.test'", (first,))
    add_message(db, sender, f"H2{unique}", [f"o{i}@x.test" for i in range(7)],
                accepted_at=START + 2 * DAY, billing="overage")
    voided = add_message(db, sender, f"H3{unique}", ["v@x.test"], accepted_at=START + 3 * DAY)
    db.execute("UPDATE ledger SET state = 'voided', billing = 'void', quota_block_id = NULL "
               "WHERE message_id = %s", (voided,))
    db.execute("UPDATE quota_blocks SET used = used - 1 WHERE id = %s", (sender.block_id,))
    add_message(db, sender, f"H4{unique}", ["nov@x.test"], accepted_at=START + 30 * DAY)
    return sender


def test_html_report_shows_the_json_reports_figures_and_the_ledgers_days(
        txrelay: Txrelay, db: psycopg.Connection, unique: str, tmp_path: Path) -> None:
    sender = october(db, unique)
    target = tmp_path / "report.html"
    target.write_text("an older report")  # replaced, as --help says
    done = txrelay("billing", "report", sender.account, "--period", "2026-10",
                   "--html", str(target), "--json")
    report = done.json()  # the JSON report still goes to standard output
    page = target.read_text()
    assert target.stat().st_mode & 0o777 == 0o600  # a customer's figures
    assert_self_contained(page)
    shown = figures(page)
    for key in ("units_booked", "mails_from_blocks", "expired_unused", "overage_mails",
                "overage_price_eur", "amount_due_eur", "amount_due_rounded_eur",
                "voided_not_billed"):
        assert shown[key] == str(report[key]), key
    assert shown["blocks_booked"] == str(len(report["blocks_booked"])) == "1"
    assert (report["mails_from_blocks"], report["overage_mails"]) == (3, 7)
    assert report["amount_due_eur"] == "0.00665"
    assert f"Usage report: {html.escape(sender.account)}, 2026-10" in page

    ledger = db.execute("""
        SELECT count(*) AS arrived, count(*) FILTER (WHERE state = 'delivered') AS delivered,
               count(*) FILTER (WHERE state = 'bounced') AS bounced
          FROM ledger WHERE account_id = %s AND state <> 'voided'
           AND accepted_at >= '2026-10-01' AND accepted_at < '2026-11-01'""",
                        (sender.account_id,)).fetchone()
    assert ledger == {"arrived": 10, "delivered": 2, "bounced": 1}
    total = totals(page)
    assert {key: total[key] for key in ledger} == ledger
    # arrived, delivered, deferred, bounced, complained, in flight
    assert day_row(page, "2026-10-06") == [3, 2, 0, 1, 0, 0]
    assert day_row(page, "2026-10-07") == [7, 0, 0, 0, 0, 7]
    assert day_row(page, "2026-10-08") == [0, 0, 0, 0, 0, 0]  # the voided one: not arrived
    assert page.count('<tr><th scope="row">2026-10-') == 31
    assert 'class="pygal-chart"' in page and "No mail in this range" not in page

    block = re.search(rf'<tr data-block="{sender.block_id}">(.*?)</tr>', page, re.S)
    assert block, "the booked block is missing"
    cells = re.findall(r"<td[^>]*>([^<]*)", block.group(1))
    assert cells[:6] == ["booked", "25000", "4", "24996", "2026-10-05", "2026-11-04"]


def test_html_report_of_a_month_without_mail_says_no_mail_in_this_range(
        txrelay: Txrelay, db: psycopg.Connection, unique: str, tmp_path: Path) -> None:
    sender = make_sender(db, unique)
    done = txrelay("billing", "report", sender.account, "--period", "2024-02", "--html", "-")
    assert done.exit_code == 0, done.stderr
    page = done.stdout
    assert_self_contained(page)
    assert '<p class="empty" id="no-mail">No mail in this range (2024-02).</p>' in page
    assert "pygal-chart" not in page
    assert 'id="nothing-billed"' in page
    assert page.count('<tr><th scope="row">2024-02-') == 29  # a leap year's February
    assert set(totals(page).values()) == {0}
    assert figures(page)["amount_due_eur"] == report_json(txrelay, sender, "2024-02")
    # The demo block was booked now: it could not be used in February 2024.
    assert 'id="no-blocks"' in page


def report_json(txrelay: Txrelay, sender: Sender, period: str) -> str:
    report = txrelay("billing", "report", sender.account, "--period", period, "--json").json()
    return str(report["amount_due_eur"])


def test_html_to_standard_output_refuses_json_and_a_bad_path_is_one_line(
        txrelay: Txrelay, db: psycopg.Connection, unique: str, tmp_path: Path) -> None:
    sender = make_sender(db, unique)
    done = txrelay("billing", "report", sender.account, "--period", "2026-10", "--html", "-",
                   "--json")
    assert done.exit_code == 4 and "--html - and --json" in done.error
    done = txrelay("billing", "report", sender.account, "--period", "2026-10", "--html",
                   str(tmp_path / "missing-dir" / "r.html"))
    assert done.exit_code == 4 and "cannot write --html" in done.error
    assert list(tmp_path.iterdir()) == []
