"""Read-only: one message as the ledger knows it, for `messages show` (its sections read this)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

Conn = psycopg.Connection[Any]  # dict_row connections (txrelay.store.database)

# By queue id (as in the mail log), Message-ID (with or without <>) or txrelay's txn id;
# newest first: Postfix reuses queue ids and shops reuse Message-IDs. One indexed lookup
# per form (messages_queue_id, messages_message_id, txn_id's unique index), not one OR.
FIND_MESSAGES = """
SELECT m.id, m.txn_id::text AS txn_id, m.queue_id, m.node, m.message_id, m.envelope_sender,
       m.header_from, m.size, m.recipient_count, m.accepted_at, m.queued_at, m.removed_at,
       a.name AS account, c.name AS connection, c.deleted_at IS NOT NULL AS connection_deleted
  FROM messages m
  JOIN accounts a ON a.id = m.account_id
  JOIN connections c ON c.id = m.connection_id
 WHERE m.id IN (SELECT id FROM messages WHERE queue_id = %(ref)s
                UNION SELECT id FROM messages WHERE message_id = ANY(%(message_ids)s)
                UNION SELECT id FROM messages WHERE txn_id = %(txn_id)s::uuid)
 ORDER BY m.accepted_at DESC, m.id DESC
 LIMIT %(limit)s"""

SELECT_RECIPIENTS = """
SELECT l.recipient, l.state, l.billing, l.quota_block_id, l.dsn, l.last_event, l.last_event_at
  FROM ledger l
 WHERE l.message_id = %(id)s
 ORDER BY l.id"""


def find_messages(conn: Conn, ref: str, limit: int = 10) -> list[dict[str, Any]]:
    text = ref.strip()
    bare = text.removeprefix("<").removesuffix(">")
    try:
        txn_id: str | None = str(uuid.UUID(text))
    except ValueError:
        txn_id = None
    params = {
        "ref": text,
        "message_ids": sorted({text, bare, f"<{bare}>"}),
        "txn_id": txn_id,
        "limit": limit,
    }
    return conn.execute(FIND_MESSAGES, params).fetchall()


def recipients_of(conn: Conn, message_row_id: int) -> list[dict[str, Any]]:
    return conn.execute(SELECT_RECIPIENTS, {"id": message_row_id}).fetchall()
