"""PostgreSQL access to webhooks and their outbox: the admin's rows and the worker's claims.

The worker claims due outbox rows with FOR UPDATE SKIP LOCKED, so several nodes' workers
share the outbox without taking the same row, and moves each claimed row's next attempt
past the delivery timeout (a lease) before committing: the HTTP request runs outside any
transaction, and a worker that dies mid-delivery leaves the row to be retried when its
lease ends (at least once).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from txrelay.errors import NotFound

Conn = psycopg.Connection[Any]  # dict_row connections (txrelay.store.database)

TEST_EVENT = "test"  # `webhook test`: sent to that one webhook, whatever it subscribed to


@dataclass(frozen=True)
class Webhook:
    id: int
    account_id: int
    account: str
    url: str
    events: list[str]
    secret: str  # sealed (or clear without a KEK): open it with the KeyRing
    allow_private: bool
    created_at: dt.datetime
    removed_at: dt.datetime | None


INSERT_WEBHOOK = """
INSERT INTO webhooks (account_id, url, events, secret, allow_private, created_at)
VALUES (%(account_id)s, %(url)s, %(events)s, %(secret)s, %(allow_private)s, %(now)s)
RETURNING id"""


def insert_webhook(
    conn: Conn,
    account_id: int,
    url: str,
    events: list[str],
    sealed_secret: str,
    allow_private: bool,
    now: dt.datetime,
) -> int:
    row = conn.execute(
        INSERT_WEBHOOK,
        {
            "account_id": account_id,
            "url": url,
            "events": events,
            "secret": sealed_secret,
            "allow_private": allow_private,
            "now": now,
        },
    ).fetchone()
    assert row is not None
    return int(row["id"])


SELECT_WEBHOOKS = """
SELECT w.id, w.account_id, a.name AS account, w.url, w.events, w.secret, w.allow_private,
       w.created_at, w.removed_at
  FROM webhooks w JOIN accounts a ON a.id = w.account_id
 WHERE (%(id)s::bigint IS NULL OR w.id = %(id)s)
   AND (%(account_id)s::bigint IS NULL OR w.account_id = %(account_id)s)
   AND (%(id)s::bigint IS NOT NULL OR w.removed_at IS NULL)
 ORDER BY w.id"""


def get_webhook(conn: Conn, webhook_id: int) -> Webhook:
    """The webhook (removed or not); NotFound otherwise."""
    row = conn.execute(SELECT_WEBHOOKS, {"id": webhook_id, "account_id": None}).fetchone()
    if row is None:
        raise NotFound(f"no webhook with id {webhook_id}; see 'txrelay webhook list ACCOUNT'")
    return Webhook(**row)


def list_webhooks(conn: Conn, account_id: int) -> list[Webhook]:
    """The account's live webhooks, oldest first."""
    rows = conn.execute(SELECT_WEBHOOKS, {"id": None, "account_id": account_id}).fetchall()
    return [Webhook(**row) for row in rows]


SELECT_DELIVERY_COUNTS = """
SELECT webhook_id,
       count(*) FILTER (WHERE delivered_at IS NOT NULL) AS delivered,
       count(*) FILTER (WHERE delivered_at IS NULL AND failed_at IS NULL) AS pending,
       count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed
  FROM webhook_outbox WHERE webhook_id = ANY(%(ids)s)
 GROUP BY webhook_id"""


def delivery_counts(conn: Conn, webhook_ids: list[int]) -> dict[int, dict[str, int]]:
    """{webhook id: {delivered, pending, failed}} (absent: no events yet)."""
    rows = conn.execute(SELECT_DELIVERY_COUNTS, {"ids": webhook_ids}).fetchall()
    return {
        int(r["webhook_id"]): {k: int(r[k]) for k in ("delivered", "pending", "failed")}
        for r in rows
    }


REMOVE_WEBHOOK = """
UPDATE webhooks SET removed_at = %(now)s WHERE id = %(id)s AND removed_at IS NULL"""

# What was still to be sent to a removed webhook is given up, and says why.
FAIL_PENDING = """
UPDATE webhook_outbox SET failed_at = %(now)s, last_error = 'the webhook was removed'
 WHERE webhook_id = %(id)s AND delivered_at IS NULL AND failed_at IS NULL"""


def remove_webhook(conn: Conn, webhook_id: int, now: dt.datetime) -> int:
    """Stop sending to the webhook (inside a transaction); the number of events given up.
    The row stays for the deliveries' history."""
    if conn.execute(REMOVE_WEBHOOK, {"id": webhook_id, "now": now}).rowcount == 0:
        found = get_webhook(conn, webhook_id)  # NotFound when there is none
        raise NotFound(f"webhook {found.id} was removed at {found.removed_at:%Y-%m-%d %H:%M:%S}")
    return conn.execute(FAIL_PENDING, {"id": webhook_id, "now": now}).rowcount


INSERT_TEST_EVENT = """
INSERT INTO webhook_outbox (webhook_id, event_id, event, payload, created_at, next_attempt_at)
VALUES (%(webhook_id)s, %(event_id)s, %(event)s, %(payload)s, %(now)s, %(now)s)"""


def queue_test_event(conn: Conn, webhook: Webhook, now: dt.datetime) -> uuid.UUID:
    """A `test` event for this webhook alone, through the outbox like any other."""
    event_id = uuid.uuid4()
    payload = {
        "id": str(event_id),
        "event": TEST_EVENT,
        "created_at": now.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "account_id": webhook.account_id,
        "data": {"webhook_id": webhook.id, "url": webhook.url},
    }
    conn.execute(
        INSERT_TEST_EVENT,
        {
            "webhook_id": webhook.id,
            "event_id": event_id,
            "event": TEST_EVENT,
            "payload": Jsonb(payload),
            "now": now,
        },
    )
    return event_id


SELECT_DELIVERIES = """
SELECT id, event_id, event, created_at, attempts, last_attempt_at, next_attempt_at,
       delivered_at, failed_at, last_status, last_error
  FROM webhook_outbox
 WHERE webhook_id = %(id)s AND (NOT %(failed)s OR failed_at IS NOT NULL)
 ORDER BY created_at DESC, id DESC
 LIMIT %(limit)s"""


def deliveries(conn: Conn, webhook_id: int, failed_only: bool, limit: int) -> list[dict[str, Any]]:
    """The webhook's events newest first, each with its state: delivered, failed or pending."""
    rows = conn.execute(
        SELECT_DELIVERIES, {"id": webhook_id, "failed": failed_only, "limit": limit}
    ).fetchall()
    for row in rows:
        row["state"] = (
            "delivered" if row["delivered_at"] else "failed" if row["failed_at"] else "pending"
        )
        if row["state"] != "pending":
            row["next_attempt_at"] = None
    return rows


# --- the worker ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """One outbox row a worker holds until its lease ends."""

    id: int
    webhook_id: int
    event_id: uuid.UUID
    event: str
    payload: dict[str, Any]
    created_at: dt.datetime
    attempts: int  # including the one under way
    url: str
    secret: str
    allow_private: bool


CLAIM_DUE = """
WITH due AS (
    SELECT o.id FROM webhook_outbox o JOIN webhooks w ON w.id = o.webhook_id
     WHERE o.delivered_at IS NULL AND o.failed_at IS NULL AND o.next_attempt_at <= %(now)s
       AND w.removed_at IS NULL
     ORDER BY o.next_attempt_at, o.id
     LIMIT %(limit)s
       FOR UPDATE OF o SKIP LOCKED)
UPDATE webhook_outbox o
   SET attempts = o.attempts + 1, last_attempt_at = %(now)s, next_attempt_at = %(lease_end)s
  FROM due, webhooks w
 WHERE o.id = due.id AND w.id = o.webhook_id
RETURNING o.id, o.webhook_id, o.event_id, o.event, o.payload, o.created_at, o.attempts,
          w.url, w.secret, w.allow_private"""


def claim_due(conn: Conn, now: dt.datetime, limit: int, lease: dt.timedelta) -> list[Claimed]:
    """Take up to `limit` due rows (call inside a transaction; commit before delivering)."""
    rows = conn.execute(
        CLAIM_DUE, {"now": now, "limit": limit, "lease_end": now + lease}
    ).fetchall()
    return [Claimed(**row) for row in rows]


MARK_DELIVERED = """
UPDATE webhook_outbox
   SET delivered_at = %(now)s, last_status = %(status)s, last_error = NULL
 WHERE id = %(id)s AND delivered_at IS NULL"""

MARK_RETRY = """
UPDATE webhook_outbox
   SET next_attempt_at = %(next)s, last_status = %(status)s, last_error = %(error)s
 WHERE id = %(id)s AND delivered_at IS NULL AND failed_at IS NULL"""

MARK_FAILED = """
UPDATE webhook_outbox
   SET failed_at = %(now)s, last_status = %(status)s, last_error = %(error)s
 WHERE id = %(id)s AND delivered_at IS NULL AND failed_at IS NULL"""


def mark_delivered(conn: Conn, outbox_id: int, status: int, now: dt.datetime) -> None:
    conn.execute(MARK_DELIVERED, {"id": outbox_id, "status": status, "now": now})


def mark_retry(
    conn: Conn, outbox_id: int, status: int | None, error: str, next_attempt: dt.datetime
) -> None:
    conn.execute(
        MARK_RETRY, {"id": outbox_id, "status": status, "error": error, "next": next_attempt}
    )


def mark_failed(
    conn: Conn, outbox_id: int, status: int | None, error: str, now: dt.datetime
) -> None:
    conn.execute(MARK_FAILED, {"id": outbox_id, "status": status, "error": error, "now": now})


SELECT_BACKLOG = """
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM %(now)s - min(created_at)), 0) AS oldest_seconds
  FROM webhook_outbox WHERE delivered_at IS NULL AND failed_at IS NULL"""


def backlog(conn: Conn, now: dt.datetime) -> tuple[int, float]:
    """Events not delivered yet (nor given up), and the age of the oldest in seconds."""
    row = conn.execute(SELECT_BACKLOG, {"now": now}).fetchone()
    assert row is not None  # an aggregate: always one row
    return int(row["pending"]), float(row["oldest_seconds"])
