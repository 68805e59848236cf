"""Mail that came back to the bounce domain, matched and recorded: a DSN to a message's
return path bounces its failed recipients, a complaint report to the CFBL address records a
complaint; anything else is dropped. Every mail gets one inbound_mail row (counted by
`txrelay inbound stats`), in the same transaction as what it recorded.

Nothing is attributed on the report's word alone: the return path's token or the feedback
id's MAC names the message, the report only names recipients of that message.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from txrelay.policy import inbound as parse
from txrelay.policy.return_path import read_feedback_id, read_return_path
from txrelay.policy.suppression import SuppressionRules
from txrelay.store import outcomes

log = logging.getLogger("txrelay.inbound")
Conn = psycopg.Connection[Any]

RECORDED = "recorded"
DUPLICATE = "duplicate"
DELAYED = "delayed"
DROPPED = "dropped"

SELECT_MESSAGE = """
SELECT id, account_id, connection_id FROM messages WHERE txn_id = %(txn_id)s"""

SELECT_RECIPIENTS = """
SELECT id, lower(recipient) AS recipient FROM ledger
 WHERE message_id = %(message_id)s ORDER BY id"""

INSERT_INBOUND = """
INSERT INTO inbound_mail (received_at, kind, outcome, reason, envelope_sender,
                          envelope_recipient, size, txn_id, account_id, recipients, detail)
VALUES (%(now)s, %(kind)s, %(outcome)s, %(reason)s, %(sender)s, %(recipient)s, %(size)s,
        %(txn_id)s, %(account_id)s, %(recipients)s, %(detail)s)"""

COUNT_INBOUND = """
SELECT kind, outcome, reason, count(*) AS mails, coalesce(sum(recipients), 0) AS recipients
  FROM inbound_mail
 WHERE received_at >= %(since)s
 GROUP BY kind, outcome, reason
 ORDER BY kind, outcome, reason"""


@dataclass(frozen=True)
class Inbound:
    """One piped mail: the envelope Postfix gave, and the bytes read (None: too big)."""

    sender: str
    recipient: str
    raw: bytes | None
    size: int


@dataclass
class Result:
    kind: str
    outcome: str = DROPPED
    reason: str = ""
    txn_id: uuid.UUID | None = None
    account_id: int | None = None
    recipients: int = 0
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "outcome": self.outcome,
            "reason": self.reason,
            "txn_id": str(self.txn_id) if self.txn_id else None,
            "account_id": self.account_id,
            "recipients": self.recipients,
            "detail": self.detail,
        }


def handle(
    conn: Conn,
    mail: Inbound,
    secret: bytes,
    now: dt.datetime,
    *,
    rules: SuppressionRules,
) -> Result:
    """Match and record one mail in one transaction (with its inbound_mail row)."""
    local = mail.recipient.rpartition("@")[0]
    result = Result(parse.address_kind(local))
    with conn.transaction():
        if mail.raw is None:
            result.reason = "too_big"
        elif result.kind == parse.DSN:
            _dsn(conn, mail, mail.raw, secret, now, rules, result)
        elif result.kind == parse.ARF:
            _arf(conn, mail.raw, secret, now, rules, result)
        else:
            result.reason = "not_ours"  # neither a return path nor the CFBL address
        conn.execute(
            INSERT_INBOUND,
            {
                "now": now,
                "kind": result.kind,
                "outcome": result.outcome,
                "reason": result.reason,
                "sender": mail.sender[:320],
                "recipient": mail.recipient[:320],
                "size": mail.size,
                "txn_id": result.txn_id,
                "account_id": result.account_id,
                "recipients": result.recipients,
                "detail": result.detail[:2000],
            },
        )
    log.info(
        "event=inbound kind=%s outcome=%s reason=%s txn=%s account=%s recipients=%d size=%d",
        result.kind,
        result.outcome,
        result.reason or "-",
        result.txn_id or "-",
        result.account_id if result.account_id is not None else "-",
        result.recipients,
        mail.size,
    )
    return result


def _dsn(
    conn: Conn,
    mail: Inbound,
    raw: bytes,
    secret: bytes,
    now: dt.datetime,
    rules: SuppressionRules,
    result: Result,
) -> None:
    txn_id = read_return_path(secret, mail.recipient)
    if txn_id is None:
        result.reason = "forged_token"
        return
    result.txn_id = txn_id
    message = conn.execute(SELECT_MESSAGE, {"txn_id": txn_id}).fetchone()
    if message is None:
        result.reason = "unknown_message"
        return
    result.account_id = int(message["account_id"])
    try:
        report = parse.parse_dsn(raw)
    except parse.Malformed as error:
        result.reason, result.detail = "malformed", str(error)
        return
    rows = _recipients(conn, int(message["id"]))
    outcomes_seen: set[str] = set()
    unknown = []
    for status in report.recipients:
        if status.action != parse.FAILED:
            outcomes_seen.add(DELAYED if status.action == parse.DELAYED else "other")
            continue
        ledger_id = next((rows[a] for a in status.addresses if a in rows), None)
        if ledger_id is None:
            unknown.append(status.final_recipient)
            continue
        recorded = outcomes.record_bounce(
            conn,
            ledger_id,
            status.status,
            status.diagnostic,
            now,
            source="dsn",
            rules=rules,
        )
        result.recipients += int(recorded)
        outcomes_seen.add(RECORDED if recorded else DUPLICATE)
    if unknown:
        result.detail = "not recipients of the message: " + ", ".join(unknown)[:1900]
    for outcome in (RECORDED, DUPLICATE, DELAYED):
        if outcome in outcomes_seen:
            result.outcome = outcome
            return
    result.reason = "unknown_recipient" if unknown else "nothing_failed"


def _arf(
    conn: Conn,
    raw: bytes,
    secret: bytes,
    now: dt.datetime,
    rules: SuppressionRules,
    result: Result,
) -> None:
    try:
        report = parse.parse_arf(raw)
    except parse.Malformed as error:
        result.reason, result.detail = "malformed", str(error)
        return
    if not report.feedback_id:
        result.reason = "no_feedback_id"
        return
    named = read_feedback_id(secret, report.feedback_id)
    if named is None:
        result.reason = "forged_token"
        return
    result.txn_id = named.txn_id
    message = conn.execute(SELECT_MESSAGE, {"txn_id": named.txn_id}).fetchone()
    if message is None:
        result.reason = "unknown_message"
        return
    if (int(message["account_id"]), int(message["connection_id"])) != (
        named.account_id,
        named.connection_id,
    ):
        result.reason = "wrong_account"
        return
    result.account_id = named.account_id
    rows = _recipients(conn, int(message["id"]))
    candidates = report.original_rcpt_to or report.original_to
    ledger_ids = {rows[a] for a in candidates if a in rows}
    if not ledger_ids and not candidates and len(rows) == 1:
        ledger_ids = set(rows.values())  # redacted report, one recipient: it is that one
    if not ledger_ids:
        result.reason = "unknown_recipient"
        return
    for ledger_id in sorted(ledger_ids):
        recorded = outcomes.record_complaint(
            conn, ledger_id, report.feedback_type, now, rules=rules
        )
        result.recipients += int(recorded)
    result.outcome = RECORDED if result.recipients else DUPLICATE
    result.detail = f"feedback type {report.feedback_type}"


def _recipients(conn: Conn, message_id: int) -> dict[str, int]:
    rows = conn.execute(SELECT_RECIPIENTS, {"message_id": message_id}).fetchall()
    found: dict[str, int] = {}
    for row in rows:
        found.setdefault(row["recipient"], int(row["id"]))
    return found


def counts(conn: Conn, since: dt.datetime) -> list[dict[str, Any]]:
    """inbound_mail counted by kind, outcome and reason since a moment."""
    rows = conn.execute(COUNT_INBOUND, {"since": since}).fetchall()
    return [
        {
            "kind": r["kind"],
            "outcome": r["outcome"],
            "reason": r["reason"],
            "mails": int(r["mails"]),
            "recipients": int(r["recipients"]),
        }
        for r in rows
    ]
