"""Sandbox mail: what a sandbox connection sent, captured by the milter instead of delivered.

One row per message in sandbox_messages (migration 0041) with the bytes the receiver would
have got; read back by `txrelay messages show ID --raw` and `messages search`, counted apart
by `stats`, deleted after [sandbox] retention_days by the tracker's tick. Nothing here
touches the ledger or the quota: sandbox mail is never billed.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import psycopg_pool

from txrelay.errors import ServiceUnavailable

log = logging.getLogger("txrelay.milter")

Conn = psycopg.Connection[Any]  # dict_row connections (txrelay.store.database)


@dataclass(frozen=True)
class CapturedMessage:
    txn_id: uuid.UUID
    queue_id: str
    node: str
    message_id: str | None
    account_id: int
    connection_id: int
    envelope_sender: str
    header_from: str
    recipients: list[str]
    raw: bytes  # as the receiver would have got it: CRLF line ends


class SandboxUnavailable(ServiceUnavailable):
    """PostgreSQL did not take the captured message: the client gets a 451 and retries."""


class Sandbox(Protocol):
    """Where the milter keeps a sandbox connection's message (PostgreSQL; memory in tests).
    Capturing the same txn_id twice keeps the first. Failures are SandboxUnavailable."""

    def capture(self, message: CapturedMessage) -> None: ...


INSERT_SANDBOX_MESSAGE = """
INSERT INTO sandbox_messages (txn_id, queue_id, node, message_id, account_id, connection_id,
                              envelope_sender, header_from, recipients, size, raw)
VALUES (%(txn_id)s, %(queue_id)s, %(node)s, %(message_id)s, %(account_id)s,
        %(connection_id)s, %(envelope_sender)s, %(header_from)s, %(recipients)s, %(size)s,
        %(raw)s)
ON CONFLICT (txn_id) DO NOTHING"""

# As for live mail (migration 0007): when the connection was last used, at most once a minute.
UPDATE_LAST_USED = """
UPDATE connections SET last_used_at = now()
 WHERE id = %(connection_id)s
   AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')"""


def capture(conn: Conn, message: CapturedMessage) -> None:
    with conn.transaction():
        conn.execute(
            INSERT_SANDBOX_MESSAGE,
            {
                "txn_id": message.txn_id,
                "queue_id": message.queue_id,
                "node": message.node,
                "message_id": message.message_id,
                "account_id": message.account_id,
                "connection_id": message.connection_id,
                "envelope_sender": message.envelope_sender,
                "header_from": message.header_from,
                "recipients": message.recipients,
                "size": len(message.raw),
                "raw": message.raw,
            },
        )
        conn.execute(UPDATE_LAST_USED, {"connection_id": message.connection_id})


class PostgresSandbox:
    """The milter's Sandbox: one short transaction per captured message from the pool."""

    def __init__(self, pool: psycopg_pool.ConnectionPool) -> None:
        self.pool = pool

    def capture(self, message: CapturedMessage) -> None:
        try:
            with self.pool.connection() as conn:
                capture(conn, message)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise SandboxUnavailable(
                f"PostgreSQL did not take the sandbox message ({exc.__class__.__name__})"
            ) from exc


PURGE_SANDBOX_MESSAGES = """
DELETE FROM sandbox_messages
 WHERE captured_at < %(now)s - make_interval(days => %(days)s)"""


def purge_sandbox_messages(conn: Conn, now: dt.datetime, retention_days: int) -> int:
    """Delete captured messages older than the retention at `now`; returns how many."""
    with conn.transaction():
        cursor = conn.execute(PURGE_SANDBOX_MESSAGES, {"now": now, "days": retention_days})
        return cursor.rowcount


# By transaction id (the milter's txn=) or by Message-ID, with or without its brackets.
SELECT_SANDBOX_MESSAGE = """
SELECT s.txn_id::text AS txn_id, s.queue_id, s.message_id, a.name AS account,
       c.name AS connection, s.envelope_sender, s.header_from, s.recipients, s.size,
       s.captured_at, s.raw
  FROM sandbox_messages s
  JOIN accounts a ON a.id = s.account_id
  JOIN connections c ON c.id = s.connection_id
 WHERE s.txn_id::text = %(ident)s
    OR s.message_id = %(ident)s OR s.message_id = '<' || %(ident)s || '>'
 ORDER BY s.captured_at DESC
 LIMIT 1"""


@dataclass(frozen=True)
class SandboxRecord:
    txn_id: str
    queue_id: str
    message_id: str | None
    account: str
    connection: str
    envelope_sender: str
    header_from: str
    recipients: list[str]
    size: int
    captured_at: dt.datetime
    raw: bytes


def find_sandbox_message(conn: Conn, ident: str) -> SandboxRecord | None:
    """The captured message with this transaction id or Message-ID, or None."""
    row = conn.execute(SELECT_SANDBOX_MESSAGE, {"ident": ident.strip()}).fetchone()
    if row is None:
        return None
    return SandboxRecord(**{**row, "raw": bytes(row["raw"]), "recipients": list(row["recipients"])})
