"""What became of a recipient after the milter accepted it, recorded once, whatever told us:
Postfix's delivery log (the tracker), a DSN that comes back to the return path, or an ARF
complaint. Each recording updates the ledger row, suppresses the recipient where the rules
say so and queues the webhook events, all in the caller's transaction.

The ledger row is locked first (the one lock order of the ledger: rows, then nothing
else), so a log line and a DSN about the same recipient, read on two nodes at once,
record the bounce once.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from txrelay.policy.bounces import BounceKind, classify
from txrelay.policy.suppression import SuppressionRules, after_bounce, after_complaint
from txrelay.store import suppressions, webhook_events
from txrelay.store.ledger_states import OPEN, sql_list

log = logging.getLogger("txrelay.outcomes")
Conn = psycopg.Connection[Any]

# What every webhook event about a ledger row says of it (the row as l, its message as m,
# its connection as c); the event adds its own fields.
EVENT_DATA = """
jsonb_build_object('recipient', l.recipient, 'message_id', m.message_id,
                   'queue_id', m.queue_id, 'txn_id', m.txn_id::text,
                   'connection', c.name, 'ledger_id', l.id)"""

SELECT_ROW = f"""
SELECT l.id, l.account_id, l.connection_id, l.recipient, l.state, l.dsn, l.bounce_kind,
       l.complained_at, m.id AS message_row_id, m.txn_id, m.queue_id, m.message_id,
       m.envelope_sender, m.header_from, c.name AS connection, {EVENT_DATA} AS event_data
  FROM ledger l
  JOIN messages m ON m.id = l.message_id
  JOIN connections c ON c.id = l.connection_id
 WHERE l.id = %(ledger_id)s
   FOR UPDATE OF l"""  # noqa: S608 - composed of constants

# The webhook event of a delivery line's row, from what its UPDATE returned (`recorded`).
_DELIVERY_EVENT = f"""
SELECT l.account_id,
       %(envelope)s::jsonb || jsonb_build_object(
           'account_id', l.account_id, 'data', {EVENT_DATA} || %(data)s::jsonb) AS payload
  FROM recorded l
  JOIN messages m ON m.id = l.message_id
  JOIN connections c ON c.id = l.connection_id"""  # noqa: S608 - composed of constants

# A delivery line's outcome (delivered or deferred) in one statement: the message marked
# queued unless it is already (a delivery line proves Postfix queued it; its qmgr line may
# come later), the row updated unless it is final (delivered and bounced are final, voided
# rows were never Postfix's to deliver), and for the row updated its webhook event, built
# from what the UPDATE returns instead of reading the row again. The rollup triggers see
# the same UPDATE as before. %(event)s is the new state and the event's name. Returns one
# row when the row was updated.
RECORD_DELIVERY = f"""
WITH queued AS (
    UPDATE messages SET queued_at = %(now)s
     WHERE id = %(message_row_id)s AND queued_at IS NULL AND NOT %(queued)s),
recorded AS (
    UPDATE ledger SET state = %(event)s, dsn = %(dsn)s, last_event = %(last_event)s,
                      last_event_at = %(now)s
     WHERE id = %(ledger_id)s AND state IN {sql_list(OPEN)}
    RETURNING id, account_id, connection_id, recipient, message_id),
outbox AS ({webhook_events.INSERT_OUTBOX_FROM.format(source=_DELIVERY_EVENT)})
SELECT id FROM recorded"""  # noqa: S608 - composed of constants

# A DSN may come after Postfix logged the remote server's 250: delivered becomes bounced.
# A bounce already recorded is not recorded again (the log and the DSN of one bounce).
RECORD_BOUNCE = f"""
UPDATE ledger SET state = 'bounced', dsn = %(dsn)s, last_event = %(event)s,
                  last_event_at = %(now)s, bounce_kind = %(kind)s, bounce_source = %(source)s
 WHERE id = %(ledger_id)s AND state IN {sql_list((*OPEN, "delivered"))}"""  # noqa: S608 - composed of constants

RECORD_COMPLAINT = """
UPDATE ledger SET complained_at = %(now)s, complaint_type = %(type)s
 WHERE id = %(ledger_id)s AND complained_at IS NULL"""

COUNT_SOFT_BOUNCES = """
SELECT count(*) AS n FROM ledger
 WHERE account_id = %(account_id)s AND recipient = %(recipient)s AND state = 'bounced'
   AND bounce_kind = 'soft' AND last_event_at > %(since)s"""


@dataclass(frozen=True)
class LedgerRow:
    id: int
    account_id: int
    connection_id: int
    connection: str
    recipient: str
    state: str
    message_row_id: int
    txn_id: Any
    queue_id: str
    message_id: str | None
    data: dict[str, Any]  # EVENT_DATA

    def event_data(self) -> dict[str, Any]:
        return dict(self.data)


def lock_row(conn: Conn, ledger_id: int) -> LedgerRow | None:
    row = conn.execute(SELECT_ROW, {"ledger_id": ledger_id}).fetchone()
    if row is None:
        return None
    return LedgerRow(
        int(row["id"]),
        int(row["account_id"]),
        int(row["connection_id"]),
        row["connection"],
        row["recipient"],
        row["state"],
        int(row["message_row_id"]),
        row["txn_id"],
        row["queue_id"],
        row["message_id"],
        row["event_data"],
    )


def record_delivery(
    conn: Conn,
    message_row_id: int,
    ledger_id: int,
    state: str,
    dsn: str,
    detail: str,
    now: dt.datetime,
    *,
    queued: bool,
) -> psycopg.Cursor[Any]:
    """The tracker read a delivery line: the row is delivered or deferred unless it is final
    already, with its webhook event (once per row for delivered; once per attempt text for
    deferred), in one statement. The cursor returns the row's id when the row was updated,
    no row when it was final; in pipeline mode the caller reads it later (deliveries.py).
    queued: the message is known to be marked queued already (its owner row said so in
    this transaction)."""
    once_per: tuple[object, ...] = (detail, now.isoformat()) if state == "deferred" else ()
    event_id = webhook_events.event_id_for(ledger_id, state, *once_per)
    return conn.execute(
        RECORD_DELIVERY,
        {
            "message_row_id": message_row_id,
            "queued": queued,
            "ledger_id": ledger_id,
            "event": state,
            "dsn": dsn,
            "last_event": detail,
            "now": now,
            "event_id": event_id,
            "envelope": Jsonb(webhook_events.envelope(state, now, event_id)),
            "data": Jsonb({"detail": detail}),
        },
    )


def record_bounce(
    conn: Conn,
    ledger_id: int,
    status: str,
    diagnostic: str,
    now: dt.datetime,
    *,
    source: str,
    rules: SuppressionRules,
    event: str = "",
) -> bool:
    """One recipient bounced (source 'log' or 'dsn'); False when that was known already.
    event: the ledger's last_event text (default: the source and the diagnostic)."""
    row = lock_row(conn, ledger_id)
    if row is None:
        return False
    kind = classify(status, diagnostic)
    if not event:
        event = f"bounced ({source}): {diagnostic}" if diagnostic else f"bounced ({source})"
    changed = conn.execute(
        RECORD_BOUNCE,
        {
            "dsn": status,
            "event": event[:2000],
            "now": now,
            "kind": kind.value,
            "source": source,
            "ledger_id": ledger_id,
        },
    ).rowcount
    if not changed:
        return False
    data = row.event_data() | {
        "status": status,
        "diagnostic": diagnostic,
        "kind": kind.value,
        "source": source,
    }
    webhook_events.emit(
        conn,
        row.account_id,
        "bounced",
        data,
        now,
        event_id=webhook_events.event_id_for(row.id, "bounced"),
    )
    soft = 0
    if kind is BounceKind.SOFT:
        since = now - dt.timedelta(days=rules.soft_bounce_window_days)
        counted = conn.execute(
            COUNT_SOFT_BOUNCES,
            {"account_id": row.account_id, "recipient": row.recipient, "since": since},
        ).fetchone()
        soft = int(counted["n"]) if counted else 0
    decision = after_bounce(rules, kind, soft, now)
    if decision is not None:
        _suppress(
            conn, row, decision.reason, decision.expires_at, now, dsn=status, detail=diagnostic
        )
    return True


def record_complaint(
    conn: Conn,
    ledger_id: int,
    feedback_type: str,
    now: dt.datetime,
    *,
    rules: SuppressionRules,
) -> bool:
    """A recipient complained about the message (an ARF report); False when known already."""
    row = lock_row(conn, ledger_id)
    if row is None:
        return False
    changed = conn.execute(
        RECORD_COMPLAINT, {"now": now, "type": feedback_type[:100], "ledger_id": ledger_id}
    ).rowcount
    if not changed:
        return False
    webhook_events.emit(
        conn,
        row.account_id,
        "complained",
        row.event_data() | {"feedback_type": feedback_type},
        now,
        event_id=webhook_events.event_id_for(row.id, "complained"),
    )
    decision = after_complaint(rules, now)
    _suppress(conn, row, decision.reason, decision.expires_at, now, dsn=None, detail=feedback_type)
    return True


def _suppress(
    conn: Conn,
    row: LedgerRow,
    reason: str,
    expires_at: dt.datetime | None,
    now: dt.datetime,
    *,
    dsn: str | None,
    detail: str,
) -> None:
    written = suppressions.suppress(
        conn,
        row.account_id,
        row.recipient,
        reason,
        now,
        expires_at=expires_at,
        source_ledger_id=row.id,
        dsn=dsn,
        detail=detail[:2000],
    )
    if written:
        log.info(
            "event=suppressed account=%d reason=%s ledger_id=%d", row.account_id, reason, row.id
        )
        webhook_events.emit(
            conn,
            row.account_id,
            "suppressed",
            row.event_data()
            | {
                "reason": reason,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
            now,
            event_id=webhook_events.event_id_for(row.id, "suppressed", reason),
        )
