"""`txrelay inbound deliver` as Postfix's pipe runs it (stdin, exit 0 or 75) and `txrelay
inbound stats`."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import psycopg

from tests.cli.conftest import Txrelay
from tests.harness.processes import TXRELAY
from tests.harness.reports import dsn
from tests.store.tracking_fixtures import add_message, make_sender
from txrelay.bounce_secret import read_bounce_secret, write_bounce_secret
from txrelay.policy.return_path import return_path

DOMAIN = "bounces.cli.test"


def deliver(config_file: Path, secret_file: Path, raw: bytes, *recipients: str,
            **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [TXRELAY, "--config", str(config_file), "inbound", "deliver", "--sender",
         "MAILER-DAEMON", "--", *recipients], input=raw, capture_output=True, timeout=60,
        check=False, env={**os.environ, "TXRELAY_BOUNCE_SECRET_FILE": str(secret_file),
                          "TXRELAY_BOUNCE_DOMAIN": DOMAIN, **env})


def test_deliver_records_a_dsn_and_stats_count_it(
        config_file: Path, tmp_path: Path, db: psycopg.Connection, unique: str,
        txrelay: Txrelay) -> None:
    secret_file = tmp_path / "bounce.key"
    write_bounce_secret(secret_file)
    sender = make_sender(db, unique)
    message = add_message(db, sender, f"Q{unique}", ["gone@example.net"])
    row = db.execute("SELECT txn_id FROM messages WHERE id = %s", (message,)).fetchone()
    assert row is not None
    address = return_path(read_bounce_secret(secret_file), row["txn_id"], DOMAIN)
    done = deliver(config_file, secret_file,
                   dsn([("gone@example.net", "failed", "5.1.1", "550 5.1.1 unknown")]),
                   address, f"b-{unique}@{DOMAIN}")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.decode().splitlines()
    assert "kind=dsn outcome=recorded reason=-" in lines[0] and "recipients=1" in lines[0]
    assert "outcome=dropped reason=forged_token" in lines[1]
    state = db.execute("SELECT state FROM ledger WHERE message_id = %s", (message,)).fetchone()
    assert state is not None and state["state"] == "bounced"
    counts = {(c["kind"], c["outcome"], c["reason"]): c["mails"]
              for c in txrelay("inbound", "stats", "--since", "2000-01-01", "--json")
              .json()["counts"]}
    assert counts[("dsn", "recorded", "")] >= 1 and counts[("dsn", "dropped", "forged_token")] >= 1
    human = txrelay("inbound", "stats", "--since", "2000-01-01")
    assert human.exit_code == 0 and human.stdout.splitlines()[0].split() == [
        "KIND", "OUTCOME", "REASON", "MAILS", "RECIPIENTS"]


def test_deliver_tempfails_without_the_bounce_secret_or_postgresql(
        config_file: Path, tmp_path: Path) -> None:
    missing = deliver(config_file, tmp_path / "missing.key", b"x", f"fbl@{DOMAIN}")
    assert missing.returncode == 75
    assert b"event=inbound_tempfail" in missing.stderr and b"missing.key" in missing.stderr
    secret_file = tmp_path / "bounce.key"
    write_bounce_secret(secret_file)
    away = f"postgresql://txrelay@127.0.0.1:1/{uuid.uuid4().hex}"
    down = deliver(config_file, secret_file, b"x", f"fbl@{DOMAIN}",
                   TXRELAY_DATABASE_URL=away, TXRELAY_DATABASE_MILTER_URL=away)
    assert down.returncode == 75 and b"event=inbound_tempfail" in down.stderr


def test_deliver_and_stats_refuse_bad_usage(txrelay: Txrelay) -> None:
    assert txrelay("inbound", "deliver").exit_code == 2
    bad = txrelay("inbound", "stats", "--since", "lots")
    assert bad.exit_code == 2 and "is not a date" in bad.stderr
