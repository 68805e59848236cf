"""Test data for tracker and lifecycle tests: accounts, messages and ledger rows by plain SQL,
and a mail log the tests write to."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import psycopg

PREFIX = "Nov 27 22:39:01 relay1 postfix/{daemon}[4242]: "


@dataclass(frozen=True)
class Sender:
    account_id: int
    account: str
    connection_id: int
    connection: str
    block_id: int


def make_sender(db: psycopg.Connection, unique: str, *, quota: int = 1000,
                threshold: int = 0, kind: str = "demo",
                booked_at: dt.datetime | None = None) -> Sender:
    """An account with one connection and one quota block."""
    name = f"Tracking {unique} {uuid.uuid4().hex[:6]}"
    account_id = _id(db, "INSERT INTO accounts (name, admin_email, low_quota_threshold) "
                         "VALUES (%s, %s, %s) RETURNING id",
                     (name, f"owner-{unique}@example.net", threshold))
    booked = booked_at or dt.datetime.now(dt.UTC)
    expires = None if kind == "demo" else booked + dt.timedelta(days=30)
    block_id = _id(db, "INSERT INTO quota_blocks (account_id, kind, amount, booked_at, "
                       "expires_at) VALUES (%s, %s, %s, %s, %s) RETURNING id",
                   (account_id, kind, quota, booked, expires))
    connection_id = _id(db, "INSERT INTO connections (account_id, name) VALUES (%s, %s) "
                            "RETURNING id", (account_id, "Web shop"))
    return Sender(account_id, name, connection_id, "Web shop", block_id)


def add_message(db: psycopg.Connection, sender: Sender, queue_id: str,
                recipients: list[str], *, node: str = "relay1",
                accepted_at: dt.datetime | None = None, billing: str = "quota",
                message_id: str | None = None) -> int:
    """What the milter records at end of message: the message and one row per recipient,
    the quota consumed from the sender's block."""
    accepted = accepted_at or dt.datetime.now(dt.UTC)
    message_row = _id(db, """
        INSERT INTO messages (txn_id, queue_id, node, message_id, account_id, connection_id,
                              envelope_sender, header_from, size, recipient_count, accepted_at)
        VALUES (%s, %s, %s, %s, %s, %s, 'shop@acme.example', 'shop@acme.example', 1000, %s, %s)
        RETURNING id""", (uuid.uuid4(), queue_id, node, message_id, sender.account_id,
                          sender.connection_id, len(recipients), accepted))
    block = sender.block_id if billing == "quota" else None
    for recipient in recipients:
        db.execute("INSERT INTO ledger (message_id, account_id, connection_id, recipient, "
                   "billing, quota_block_id, accepted_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                   (message_row, sender.account_id, sender.connection_id, recipient, billing,
                    block, accepted))
    if billing == "quota":
        db.execute("UPDATE quota_blocks SET used = used + %s WHERE id = %s",
                   (len(recipients), sender.block_id))
    return message_row


def states(db: psycopg.Connection, message_row: int) -> dict[str, str]:
    rows = db.execute("SELECT recipient, state FROM ledger WHERE message_id = %s",
                      (message_row,)).fetchall()
    return {r["recipient"]: r["state"] for r in rows}  # type: ignore[call-overload,index]


def ledger_row(db: psycopg.Connection, message_row: int, recipient: str) -> dict:
    row = db.execute("SELECT * FROM ledger WHERE message_id = %s AND recipient = %s",
                     (message_row, recipient)).fetchone()
    assert row is not None
    return row  # type: ignore[return-value]


class MailLog:
    """A Postfix-style mail log the test appends to (bytes exactly as written)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.touch()

    def write(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(text)

    def line(self, daemon: str, text: str) -> str:
        entry = PREFIX.format(daemon=daemon) + text + "\n"
        self.write(entry)
        return entry

    def queued(self, queue_id: str, nrcpt: int) -> str:
        return self.line("qmgr", f"{queue_id}: from=<shop@acme.example>, size=1000, "
                                 f"nrcpt={nrcpt} (queue active)")

    def delivery(self, queue_id: str, recipient: str, status: str, dsn: str = "",
                 detail: str = "250 2.0.0 Ok") -> str:
        dsn = dsn or {"sent": "2.0.0", "deferred": "4.2.0", "bounced": "5.1.1"}[status]
        return self.line("smtp", f"{queue_id}: to=<{recipient}>, relay=127.0.0.1[127.0.0.1]"
                                 f":2525, delay=0.1, delays=0/0/0/0.1, dsn={dsn}, "
                                 f"status={status} ({detail})")

    def removed(self, queue_id: str) -> str:
        return self.line("qmgr", f"{queue_id}: removed")


class RecordingMailer:
    """Stands in for SMTP in store tests (the e2e test uses the real Postfix)."""

    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []

    def send(self, message: EmailMessage) -> None:
        self.sent.append(message)


def _id(db: psycopg.Connection, sql: str, params: tuple[object, ...]) -> int:
    row = db.execute(sql, params).fetchone()
    assert row is not None
    return int(next(iter(row.values())))  # type: ignore[union-attr]
