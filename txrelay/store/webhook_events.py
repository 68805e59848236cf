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

# One outbox row per live webhook of the event's account that subscribed to the event; the
# same event twice (the same event_id) keeps one. {source}: a query of one row, the event's
# account_id and payload (a recording statement may build both from the rows it changes).
INSERT_OUTBOX_FROM = """
INSERT INTO webhook_outbox (webhook_id, event_id, event, payload, created_at, next_attempt_at)
SELECT w.id, %(event_id)s, %(event)s, e.payload, %(now)s, %(now)s
  FROM ({source}) e JOIN webhooks w ON w.account_id = e.account_id
 WHERE w.removed_at IS NULL AND %(event)s = ANY (w.events)
ON CONFLICT (webhook_id, event_id) DO NOTHING"""

INSERT_OUTBOX = INSERT_OUTBOX_FROM.format(
    source="SELECT %(account_id)s::bigint AS account_id, %(payload)s::jsonb AS payload"
)


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
    event_id = event_id or uuid.uuid4()
    payload = envelope(event, now, event_id) | {"account_id": account_id, "data": dict(data)}
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


def envelope(event: str, now: dt.datetime, event_id: uuid.UUID) -> dict[str, Any]:
    """The payload's fields that do not come from the account or the event's data."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    return {
        "id": str(event_id),
        "event": event,
        "created_at": now.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
    }


def event_id_for(*parts: object) -> uuid.UUID:
    """A stable event id from what identifies the event (e.g. ledger row id and state), so
    that recording the same outcome twice never queues it twice."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "txrelay-event:" + ":".join(str(p) for p in parts))
