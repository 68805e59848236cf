"""Events for the shops' webhooks, put in the outbox in the caller's transaction.

Whatever records an event (a delivery, a bounce, a complaint, a suppression, a quota
threshold) calls `emit` inside the same PostgreSQL transaction: the event and its outbox
rows commit or roll back together, so none is lost and none is sent for something that
did not happen. The webhook worker delivers the rows; nothing here talks HTTP.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[Any]

EVENTS = (
    "delivered",
    "deferred",
    "bounced",
    "complained",
    "suppressed",
    "quota.low",
    "quota.exhausted",
    "block.expired",
)

INSERT_OUTBOX = """
INSERT INTO webhook_outbox (webhook_id, event_id, event, payload, created_at, next_attempt_at)
SELECT id, %(event_id)s, %(event)s, %(payload)s, %(now)s, %(now)s
  FROM webhooks
 WHERE account_id = %(account_id)s AND removed_at IS NULL AND %(event)s = ANY (events)
ON CONFLICT (webhook_id, event_id) DO NOTHING
"""


def emit(
    conn: Conn,
    account_id: int,
    event: str,
    data: Mapping[str, Any],
    now: dt.datetime,
    *,
    event_id: uuid.UUID | None = None,
) -> int:
    """Queue one event for every live webhook of the account that subscribed to it; the
    number of outbox rows written. Give `event_id` when the same event may be emitted twice
    (e.g. derived from a ledger row and a state): the outbox keeps one row per webhook."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    event_id = event_id or uuid.uuid4()
    payload = {
        "id": str(event_id),
        "event": event,
        "created_at": now.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "account_id": account_id,
        "data": dict(data),
    }
    cursor = conn.execute(
        INSERT_OUTBOX,
        {
            "event_id": event_id,
            "event": event,
            "payload": Jsonb(payload),
            "now": now,
            "account_id": account_id,
        },
    )
    return cursor.rowcount


def event_id_for(*parts: object) -> uuid.UUID:
    """A stable event id from what identifies the event (e.g. ledger row id and state), so
    that recording the same outcome twice never queues it twice."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "txrelay-event:" + ":".join(str(p) for p in parts))
