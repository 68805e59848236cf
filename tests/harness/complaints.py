"""A complaint as a mailbox provider sends one: an ARF report (RFC 5965) about a message the
relay sent, carrying its CFBL-Feedback-ID, piped to `txrelay inbound deliver` as Postfix's
pipe service runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from tests.harness.processes import TXRELAY
from tests.harness.reports import arf, original_message
from txrelay.bounce_secret import read_bounce_secret
from txrelay.config import Config
from txrelay.policy.return_path import feedback_id


def report_complaint(config: Config, config_file: Path, database_url: str, account_id: int,
                     recipient: str, sender: str) -> None:
    """RECIPIENT of ACCOUNT_ID's message complains; fails unless it was recorded."""
    with psycopg.connect(database_url, row_factory=dict_row, autocommit=True) as conn:
        row = conn.execute(
            "SELECT m.txn_id, m.connection_id FROM ledger l JOIN messages m "
            "ON m.id = l.message_id WHERE l.account_id = %s AND l.recipient = %s",
            (account_id, recipient)).fetchone()
    assert row is not None, f"no ledger row for {recipient}"
    secret = read_bounce_secret(Path(config.bounce.secret_file))
    fid = feedback_id(secret, account_id, int(row["connection_id"]), row["txn_id"])
    report = arf(original_message(recipient, feedback_id=fid, sender=sender),
                 rcpt_to=recipient)
    done = subprocess.run(
        [TXRELAY, "--config", str(config_file), "inbound", "deliver", "--sender",
         "feedback@isp.example", "--", f"fbl@{config.bounce.domain}"],
        input=report, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0 and b"outcome=recorded" in done.stderr, done.stderr
