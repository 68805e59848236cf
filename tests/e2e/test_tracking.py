"""Delivery tracking, reminders and billing end to end: real Postfix, milter and capture sink,
the tracker run as the admin runs it (`txrelay tracker`, `--once`)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import gzip
import json
import os
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.harness.fixtures import RelayStack
from tests.harness.processes import (
    TXRELAY,
    ManagedProcess,
    run,
    wait_until,
)
from tests.harness.provision import Provisioned
from tests.harness.return_path import sent_by
from tests.harness.smtp import build_message, submit

pytestmark = pytest.mark.e2e

RCPT_DOMAIN = "rcpt.example.net"


def cli(relay: RelayStack, *args: str, env: dict[str, str] | None = None) -> Any:
    """`txrelay --config FILE --json ARGS` as a subprocess; its JSON output."""
    done = run([TXRELAY, "--config", str(relay.config_file), "--json", *args],
               env={**os.environ, **(env or {})}, timeout=120)
    return json.loads(done.stdout)


def track_once(relay: RelayStack) -> Any:
    return cli(relay, "tracker", "--once")


def states(relay: RelayStack, account_id: int) -> dict[str, str]:
    with psycopg.connect(relay.database_url, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT recipient, state FROM ledger WHERE account_id = %s",
                            (account_id,)).fetchall()
    return {row["recipient"]: row["state"] for row in rows}


def query(relay: RelayStack, sql: str, *params: object) -> list[dict[str, Any]]:
    with psycopg.connect(relay.database_url, row_factory=dict_row, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def track_until(relay: RelayStack, done: Callable[[], bool], timeout: float = 60) -> None:
    def attempt() -> bool:
        track_once(relay)
        return done()

    wait_until(attempt, timeout, "the tracker to record the outcomes",
               lambda: relay.postfix.log(30))


def send(relay: RelayStack, shop: Provisioned, recipients: list[str]) -> None:
    raw = build_message(shop.address(), recipients)
    for _ in range(10):
        result = submit(shop.username, shop.password, shop.address(), recipients, raw,
                        port=relay.port)
        refusal = result.first_refusal()
        # The milter polls the policy every [milter] policy_refresh_seconds: a connection
        # created a moment ago may not be in its snapshot yet (reported to the milter's
        # owner); that is not what these tests are about.
        if refusal is None or "belongs to no active connection" not in refusal.text:
            break
        time.sleep(0.5)
    assert result.delivered_to == recipients, result


def test_delivered_deferred_and_bounced_recipients_are_tracked(relay: RelayStack) -> None:
    shop = relay.provision()
    ok, later, gone = (f"ok@{RCPT_DOMAIN}", f"defer-t1@{RCPT_DOMAIN}",
                       f"bounce-t1@{RCPT_DOMAIN}")
    send(relay, shop, [ok, later, gone])
    track_until(relay, lambda: states(relay, shop.account_id) == {
        ok: "delivered", later: "deferred", gone: "bounced"})
    rows = {r["recipient"]: r for r in query(
        relay, "SELECT recipient, dsn, last_event FROM ledger WHERE account_id = %s",
        shop.account_id)}
    assert rows[gone]["dsn"] == "5.1.1" and "550 5.1.1" in rows[gone]["last_event"]
    assert rows[later]["dsn"] == "4.2.0" and "451 4.2.0" in rows[later]["last_event"]
    assert rows[ok]["dsn"] == "2.0.0"
    stats = cli(relay, "stats", "--account", shop.account)
    assert [(s["arrived"], s["delivered"], s["deferred"], s["bounced"], s["active"])
            for s in stats] == [(3, 1, 1, 1, True)]
    # Postfix's non-delivery notification for the bounce is no customer mail: not billed.
    billed = query(relay, "SELECT count(*) AS n FROM ledger WHERE account_id = %s",
                   shop.account_id)[0]["n"]
    assert billed == 3
    found = cli(relay, "messages", "search", "--to", gone)
    assert [(r["state"], r["dsn"]) for r in found] == [("bounced", "5.1.1")]


def test_auto_source_finds_postfixs_maillog_file_and_tracks_from_it(relay: RelayStack) -> None:
    """No log_path in the configuration: the tracker asks Postfix (postconf -c) for its
    maillog_file, says so, and records the outcome from that file."""
    shop = relay.provision()
    ok = f"auto-file@{RCPT_DOMAIN}"
    send(relay, shop, [ok])
    env = {"TXRELAY_TRACKER_SOURCE": "auto", "TXRELAY_TRACKER_LOG_PATH": "",
           "TXRELAY_TRACKER_POSTFIX_CONFIG_DIRECTORY": str(relay.postfix.config_directory)}

    def tracked() -> bool:
        summary = cli(relay, "tracker", "--once", env=env)
        assert summary["log_path"] == str(relay.postfix.maillog), summary
        assert summary["source_reason"] == f"Postfix's maillog_file is {relay.postfix.maillog}"
        return states(relay, shop.account_id) == {ok: "delivered"}

    wait_until(tracked, 60, "the tracker to find the maillog_file and record the delivery",
               lambda: relay.postfix.log(30))


def _position(relay: RelayStack) -> dict[str, Any]:
    rows = query(relay, "SELECT * FROM tracker_positions WHERE log_path = %s",
                 relay.config.tracker.log_path)
    assert len(rows) == 1
    return rows[0]


def _log_files(maillog: Path) -> list[bytes]:
    """Rotated files oldest first (decompressed), then the live file."""
    rotated = sorted(p for p in maillog.parent.glob(maillog.name + ".*") if p.is_file())
    contents = [gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
                for p in rotated]
    return [*contents, maillog.read_bytes()]


def _lines_between(files: list[bytes], start: dict[str, Any], end: dict[str, Any]) -> int:
    """Complete lines from the start position to the end position, across rotations."""
    import hashlib

    def fingerprint(data: bytes) -> str:
        return hashlib.sha256(data[:data.find(b"\n") + 1]).hexdigest()[:32]

    prints = [fingerprint(data) for data in files]
    first, last = prints.index(start["fingerprint"]), prints.index(end["fingerprint"])
    if first == last:
        return files[first][start["byte_offset"]:end["byte_offset"]].count(b"\n")
    total = files[first][start["byte_offset"]:].count(b"\n")
    total += sum(data.count(b"\n") for data in files[first + 1:last])
    return total + files[last][:end["byte_offset"]].count(b"\n")


@pytest.fixture()
def tracker_daemon(relay: RelayStack, e2e_dir: Path) -> Iterator[ManagedProcess]:
    process = ManagedProcess([TXRELAY, "--config", str(relay.config_file), "tracker"],
                             e2e_dir / "tracker.log")
    try:
        yield process
    finally:
        process.stop()


def test_tracker_killed_and_log_rotated_mid_run_counts_every_line_once(
        relay: RelayStack, tracker_daemon: ManagedProcess) -> None:
    shop = relay.provision()
    track_once(relay)
    start = _position(relay)
    tracker_daemon.start()
    recipients = [[f"k{i}a@{RCPT_DOMAIN}", f"k{i}b@{RCPT_DOMAIN}"] for i in range(6)]
    for batch in recipients[:3]:
        send(relay, shop, batch)
    time.sleep(1.0)
    tracker_daemon.kill()
    send(relay, shop, recipients[3])
    run(["postfix", "-c", str(relay.postfix.config_directory), "logrotate"])
    for batch in recipients[4:]:
        send(relay, shop, batch)
    tracker_daemon.start()
    expected = {address: "delivered" for batch in recipients for address in batch}
    wait_until(lambda: states(relay, shop.account_id) == expected, 60,
               "every recipient delivered", lambda: tracker_daemon.log(20))
    tracker_daemon.stop()
    track_once(relay)  # nothing left, but the final position is stored
    end = _position(relay)
    read = end["lines_read"] - start["lines_read"]
    assert read == _lines_between(_log_files(Path(relay.config.tracker.log_path)), start, end)
    captured = sum(len(c.rcpt_tos)
                   for c in sent_by(relay.sink.captures(), relay.config, shop.address()))
    assert captured == len(expected)


def test_demo_account_gets_exactly_one_low_quota_reminder(relay: RelayStack,
                                                          plain_smtpd: int) -> None:
    shop = relay.provision()
    cli(relay, "account", "set", shop.account, "--low-quota-threshold", "100")
    admin = f"admin@{shop.account}.example.com"
    query(relay, "UPDATE quota_blocks SET used = 893 WHERE account_id = %s AND kind = 'demo'",
          shop.account_id)
    cli(relay, "quota", "reconcile", shop.account)
    env = {"TXRELAY_NOTIFY_SMTP_PORT": str(plain_smtpd),
           "TXRELAY_NOTIFY_FROM_ADDRESS": "txrelay@relay.txrelay.test"}
    for i in range(10):  # 107 left -> 97: below 100 after the 8th mail
        send(relay, shop, [f"q{i}@{RCPT_DOMAIN}"])
        cli(relay, "quota", "tick", shop.account, env=env)
    cli(relay, "quota", "tick", shop.account, env=env)

    def reminders() -> list[Any]:
        return [c for c in relay.sink.captures() if admin in c.rcpt_tos]

    wait_until(lambda: len(reminders()) >= 1, 30, "the reminder at the sink",
               lambda: relay.postfix.log(20))
    time.sleep(2)
    assert len(reminders()) == 1
    message = email.message_from_bytes(reminders()[0].raw, policy=email.policy.default)
    assert message["From"] == "txrelay@relay.txrelay.test"
    body = message.get_content()  # type: ignore[attr-defined]
    assert "99 mails of quota left" in body  # sent at the tick after the 8th mail
    assert "last 24 hours: 8" in body and "runs out in about" in body
    assert "token=" not in body  # no [web] public_url: no dashboard link, as before
    notes = query(relay, "SELECT kind, detail FROM notifications WHERE account_id = %s",
                  shop.account_id)
    assert [n["kind"] for n in notes] == ["low_quota"]


def test_quota_expiry_plan_renewal_and_overage_billing(relay: RelayStack) -> None:
    shop = relay.provision()
    now = dt.datetime.now(dt.UTC)
    later = (now + dt.timedelta(days=30, hours=1)).isoformat()
    cli(relay, "quota", "book", shop.account, "--amount", "25000")
    for i in range(3):
        send(relay, shop, [f"b{i}@{RCPT_DOMAIN}"])
    ticked = cli(relay, "quota", "tick", shop.account, env={"TXRELAY_TEST_NOW": later})
    assert [e["expired_unused"] for e in ticked["expired"]] == [24997]
    check = cli(relay, "quota", "reconcile", shop.account, env={"TXRELAY_TEST_NOW": later})
    assert check[0]["difference"] == 0 and check[0]["postgres"] == 1000

    # Use up the demo block: the paid account goes on as overage.
    query(relay, "UPDATE quota_blocks SET used = amount WHERE account_id = %s AND "
                 "kind = 'demo'", shop.account_id)
    cli(relay, "quota", "reconcile", shop.account)
    for i in range(2):
        send(relay, shop, [f"o{i}@{RCPT_DOMAIN}"])
    planned = cli(relay, "quota", "plan", shop.account, "--block", "25000")
    assert [b["amount"] for b in planned["booked_now"]] == [25000]
    send(relay, shop, [f"p0@{RCPT_DOMAIN}"])
    renewed = cli(relay, "quota", "tick", shop.account, env={"TXRELAY_TEST_NOW": later})
    assert [r["amount"] for r in renewed["renewals"]] == [25000]
    assert [e["expired_unused"] for e in renewed["expired"]] == [24999]

    ledger = query(relay, "SELECT billing, count(*) AS n FROM ledger WHERE account_id = %s "
                          "GROUP BY billing", shop.account_id)
    by_billing = {row["billing"]: row["n"] for row in ledger}
    assert by_billing == {"quota": 4, "overage": 2}
    this_month = cli(relay, "billing", "report", shop.account, "--period", f"{now:%Y-%m}")
    assert this_month["mails_from_blocks"] == by_billing["quota"]
    assert this_month["overage_mails"] == by_billing["overage"]
    assert this_month["units_booked"] == 50000
    assert Decimal(this_month["amount_due_eur"]) == Decimal("0.00095") * 2
    next_month = (now.replace(day=1) + dt.timedelta(days=32)).strftime("%Y-%m")
    if next_month == (now + dt.timedelta(days=30, hours=1)).strftime("%Y-%m"):
        following = cli(relay, "billing", "report", shop.account, "--period", next_month)
        assert following["expired_unused"] == 24997 + 24999
        assert following["units_booked"] == 25000
