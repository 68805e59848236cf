"""Read-only reports from the ledger: per-connection statistics, message search, billing."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg

from txrelay.errors import NotFound
from txrelay.policy.billing import BillingInputs, BookedBlock, Period
from txrelay.store import rollups

Conn = psycopg.Connection[Any]  # dict_row connections (txrelay.store.database)

# By name: live accounts only (a deleted account's name may be taken again).
SELECT_ACCOUNT_ID = "SELECT id FROM accounts WHERE name = %(name)s AND deleted_at IS NULL"

# Per connection: recipients that arrived in the period and what became of them, from the
# rollups (store.rollups.connection_sums). Voided rows never reached Postfix's queue: they
# did not arrive. Complained: recipients who reported the message as spam. Suppressed:
# recipients refused at RCPT for being on the account's suppression list (never arrived;
# counted by 15-minute bucket). Sandboxed: recipients of a sandbox connection's mail,
# captured and never delivered nor billed. Live connections are listed even without mail;
# deleted ones only when they have mail (or refusals, or captures) in the period.
CONNECTION_STATS = """
SELECT a.name AS account, c.id AS connection_id, c.name AS connection, c.enabled,
       c.deleted_at,
       GREATEST(c.last_used_at, (SELECT max(l2.accepted_at) FROM ledger l2
                                  WHERE l2.connection_id = c.id)) AS last_used_at,
       s.suppressed, s.refusals,
       (SELECT COALESCE(sum(cardinality(sb.recipients)), 0) FROM sandbox_messages sb
         WHERE sb.connection_id = c.id
           AND (%(since)s::timestamptz IS NULL OR sb.captured_at >= %(since)s)
           AND sb.captured_at < %(until)s) AS sandboxed
  FROM connections c
  JOIN accounts a ON a.id = c.account_id
 CROSS JOIN LATERAL (
       SELECT COALESCE(sum(s.refused), 0) AS suppressed, count(*) AS refusals
         FROM suppressed_counts s
        WHERE s.connection_id = c.id
          AND (%(since)s::timestamptz IS NULL OR s.bucket >= %(since)s)
          AND s.bucket < %(until)s) s
 WHERE (%(account)s::text IS NULL OR (a.name = %(account)s AND a.deleted_at IS NULL))
   AND (%(connection)s::text IS NULL OR c.name = %(connection)s)
 ORDER BY a.name, c.name, c.id"""


@dataclass(frozen=True)
class ConnectionStats:
    account: str
    connection: str
    connection_id: int
    enabled: bool
    deleted: bool
    last_used_at: dt.datetime | None
    active: bool
    arrived: int
    delivered: int
    deferred: int
    bounced: int
    in_flight: int
    complained: int = 0
    suppressed: int = 0
    sandboxed: int = 0

    @property
    def bounce_rate(self) -> Decimal:
        """Bounced / arrived, as a fraction with 4 places (0 without mail)."""
        if not self.arrived:
            return Decimal("0.0000")
        return (Decimal(self.bounced) / Decimal(self.arrived)).quantize(Decimal("0.0001"))


def connection_stats(
    conn: Conn,
    *,
    now: dt.datetime,
    active_window: dt.timedelta,
    since: dt.datetime | None,
    until: dt.datetime,
    account: str | None,
    connection: str | None,
) -> list[ConnectionStats]:
    if account is not None:
        require_account(conn, account)
    listed = conn.execute(
        CONNECTION_STATS,
        {"since": since, "until": until, "account": account, "connection": connection},
    ).fetchall()
    sums = rollups.connection_sums(
        conn, [int(row["connection_id"]) for row in listed], since, until
    )
    zeros = dict.fromkeys(rollups.STATS_COLUMNS, 0)
    rows = [
        row | sums.get(int(row["connection_id"]), zeros)
        for row in listed
        if row["deleted_at"] is None
        or sums.get(int(row["connection_id"]), zeros)["arrived"] > 0
        or row["refusals"] > 0
        or row["sandboxed"] > 0
    ]
    if connection is not None and not rows:
        raise NotFound(
            f"no connection named {connection!r}"
            + (f" in account {account!r}" if account else "")
            + "; see 'txrelay connection list'"
        )
    return [_stats(row, now, active_window) for row in rows]


def _stats(row: dict[str, Any], now: dt.datetime, active_window: dt.timedelta) -> ConnectionStats:
    last_used = row["last_used_at"]
    active = (
        row["enabled"]
        and row["deleted_at"] is None
        and last_used is not None
        and last_used >= now - active_window
    )
    return ConnectionStats(
        account=row["account"],
        connection=row["connection"],
        connection_id=int(row["connection_id"]),
        enabled=bool(row["enabled"]),
        deleted=row["deleted_at"] is not None,
        last_used_at=last_used,
        active=bool(active),
        arrived=int(row["arrived"]),
        delivered=int(row["delivered"]),
        deferred=int(row["deferred"]),
        bounced=int(row["bounced"]),
        in_flight=int(row["in_flight"]),
        complained=int(row["complained"]),
        suppressed=int(row["suppressed"]),
        sandboxed=int(row["sandboxed"]),
    )


# Every connection, deleted ones too: their mail of the last day still counts.
CONNECTION_ACCOUNTS = "SELECT id AS connection_id, account_id FROM connections"


@dataclass(frozen=True)
class AccountCohort:
    """An account's recipients that arrived in a period, and those of them who complained."""

    account_id: int
    arrived: int
    complained: int


def account_cohorts(conn: Conn, since: dt.datetime, until: dt.datetime) -> list[AccountCohort]:
    """Per account with mail in [since, until), ordered by id: the cohort `txrelay stats` and
    the dashboard's complaint rate count (recipients by arrival, with what became of them
    since), from the rollups."""
    owner = {
        int(row["connection_id"]): int(row["account_id"])
        for row in conn.execute(CONNECTION_ACCOUNTS).fetchall()
    }
    totals: dict[int, tuple[int, int]] = {}
    for connection_id, counts in rollups.connection_sums(conn, list(owner), since, until).items():
        arrived, complained = totals.get(owner[connection_id], (0, 0))
        totals[owner[connection_id]] = (
            arrived + counts["arrived"],
            complained + counts["complained"],
        )
    return [
        AccountCohort(account_id, arrived, complained)
        for account_id, (arrived, complained) in sorted(totals.items())
        if arrived
    ]


def require_account(conn: Conn, name: str) -> int:
    row = conn.execute(SELECT_ACCOUNT_ID, {"name": name}).fetchone()
    if row is None:
        raise NotFound(f"no account named {name!r}; see 'txrelay account list'")
    return int(row["id"])


# Message-ID is matched with or without its angle brackets (message_id_forms: the forms
# are made here, so that messages_message_id serves the match); the recipient through
# ledger_recipient_lower (0043), the queue id through messages_queue_id (each only in a
# plan made for the given values: search_recipients never prepares it). The sender is the
# envelope sender or the From: address, or "@domain" for either one's domain. The
# recipients of sandbox connections' captured messages (sandbox_messages) come with state
# 'sandboxed' and no billing: they were never queued nor billed.
SEARCH_RECIPIENTS = """
SELECT accepted_at, queue_id, node, message_id, envelope_sender, header_from, account,
       connection, recipient, state, billing, dsn, last_event, last_event_at, bounce_kind,
       bounce_source, complained_at, complaint_type
  FROM (SELECT l.accepted_at, m.queue_id, m.node, m.message_id, m.envelope_sender,
               m.header_from, a.name AS account, a.deleted_at AS account_deleted_at,
               c.name AS connection, l.recipient, l.state, l.billing, l.dsn, l.last_event,
               l.last_event_at, l.bounce_kind, l.bounce_source, l.complained_at,
               l.complaint_type, l.id AS row_id
          FROM ledger l
          JOIN messages m ON m.id = l.message_id
          JOIN accounts a ON a.id = l.account_id
          JOIN connections c ON c.id = l.connection_id
        UNION ALL
        SELECT s.captured_at, s.queue_id, s.node, s.message_id, s.envelope_sender,
               s.header_from, a.name, a.deleted_at, c.name, r.recipient, 'sandboxed', NULL,
               NULL, NULL, NULL, NULL, NULL, NULL, NULL, s.id
          FROM sandbox_messages s
          CROSS JOIN unnest(s.recipients) AS r (recipient)
          JOIN accounts a ON a.id = s.account_id
          JOIN connections c ON c.id = s.connection_id) found
 WHERE (%(to)s::text IS NULL OR lower(recipient) = lower(%(to)s))
   AND (%(message_ids)s::text[] IS NULL OR message_id = ANY(%(message_ids)s))
   AND (%(connection)s::text IS NULL OR connection = %(connection)s)
   AND (%(account)s::text IS NULL OR (account = %(account)s AND account_deleted_at IS NULL))
   AND (%(queue_id)s::text IS NULL OR queue_id = %(queue_id)s)
   AND (%(sender)s::text IS NULL
        OR (left(%(sender)s, 1) = '@'
            AND (lower(envelope_sender) LIKE '%%' || lower(%(sender)s)
                 OR lower(header_from) LIKE '%%' || lower(%(sender)s)))
        OR lower(envelope_sender) = lower(%(sender)s)
        OR lower(header_from) = lower(%(sender)s))
   AND (%(state)s::text IS NULL OR state = %(state)s)
   AND (%(since)s::timestamptz IS NULL OR accepted_at >= %(since)s)
   AND (%(until)s::timestamptz IS NULL OR accepted_at < %(until)s)
 ORDER BY accepted_at DESC, row_id DESC
 LIMIT %(limit)s"""


def search_recipients(
    conn: Conn,
    *,
    to: str | None,
    message_id: str | None,
    connection: str | None,
    account: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int,
    queue_id: str | None = None,
    sender: str | None = None,
    state: str | None = None,
) -> list[dict[str, Any]]:
    # Never a prepared statement: a generic plan cannot drop the filters not given (their
    # "IS NULL OR" stays) and falls back to reading every row.
    return conn.execute(
        SEARCH_RECIPIENTS,
        {
            "queue_id": queue_id,
            "sender": sender,
            "state": state,
            "to": to,
            "message_ids": None if message_id is None else message_id_forms(message_id),
            "connection": connection,
            "account": account,
            "since": since,
            "until": until,
            "limit": limit,
        },
        prepare=False,
    ).fetchall()


def message_id_forms(message_id: str) -> list[str]:
    """The stored forms a searched Message-ID matches: as given, without its angle brackets
    and with them (a message's Message-ID is stored as its header wrote it)."""
    bare = message_id.strip()
    if bare.startswith("<") and bare.endswith(">"):
        bare = bare[1:-1]
    return sorted({message_id, bare, f"<{bare}>"})


# --- billing --------------------------------------------------------------------------------

BLOCKS_BOOKED = """
SELECT id, kind, amount, booked_at FROM quota_blocks
 WHERE account_id = %(account_id)s AND kind IN ('booked', 'plan')
   AND booked_at >= %(start)s AND booked_at < %(end)s
 ORDER BY booked_at, id"""

# Bounced recipients are billed like delivered ones: billing, not state, decides. Settled
# rows are counted from the rollups (store.rollups.account_billing). A row still pending
# counts as what settling would make it (migration 0012's txrelay_pending_allocation: a
# block, or overage), without settling it: a report never writes; pending rows are few
# (ledger_pending). Overage is txrelay_overage_used (0033, from the rollups since 0043),
# the figure the overage cap counts.
PENDING_BILLING = """
SELECT count(*) FILTER (WHERE p.block_id IS NOT NULL) AS pending_to_blocks,
       txrelay_overage_used(%(account_id)s, %(start)s, %(end)s) AS overage
  FROM txrelay_pending_allocation(%(account_id)s) p
  JOIN ledger l ON l.id = p.row_id
 WHERE l.accepted_at >= %(start)s AND l.accepted_at < %(end)s"""

EXPIRED_UNUSED = """
SELECT COALESCE(sum(expired_unused), 0)::bigint AS expired
  FROM quota_blocks
 WHERE account_id = %(account_id)s AND expired_unused IS NOT NULL
   AND expires_at >= %(start)s AND expires_at < %(end)s"""


def billing_inputs(conn: Conn, account_id: int, period: Period) -> BillingInputs:
    params = {"account_id": account_id, "start": period.start, "end": period.end}
    blocks = tuple(
        BookedBlock(int(r["id"]), r["kind"], int(r["amount"]), r["booked_at"])
        for r in conn.execute(BLOCKS_BOOKED, params).fetchall()
    )
    quota, voided = rollups.account_billing(conn, account_id, period.start, period.end)
    pending = conn.execute(PENDING_BILLING, params).fetchone()
    expired = conn.execute(EXPIRED_UNUSED, params).fetchone()
    assert pending is not None and expired is not None  # aggregates: always one row
    return BillingInputs(
        blocks,
        quota + int(pending["pending_to_blocks"]),
        int(pending["overage"]),
        int(expired["expired"]),
        voided,
    )


SELECT_OVERAGE_CAP = "SELECT overage_cap FROM accounts WHERE id = %(id)s"


def overage_cap(conn: Conn, account_id: int) -> int | None:
    """The account's overage cap (recipients per period beyond quota); None: unlimited."""
    row = conn.execute(SELECT_OVERAGE_CAP, {"id": account_id}).fetchone()
    return None if row is None or row["overage_cap"] is None else int(row["overage_cap"])


@dataclass(frozen=True)
class BilledAccount:
    id: int
    name: str
    status: str  # active | disabled | deleted
    overage_cap: int | None


# Every live account (an invoice of 0 is still an invoice line) and every deleted one with
# ledger rows or blocks in the period (kept for billing retention).
BILLED_ACCOUNTS = """
SELECT a.id, a.name, a.overage_cap,
       CASE WHEN a.deleted_at IS NOT NULL THEN 'deleted'
            WHEN a.disabled_at IS NOT NULL THEN 'disabled' ELSE 'active' END AS status
  FROM accounts a
 WHERE (a.created_at < %(end)s AND (a.deleted_at IS NULL OR a.deleted_at >= %(start)s))
    OR EXISTS (SELECT 1 FROM ledger l WHERE l.account_id = a.id
                  AND l.accepted_at >= %(start)s AND l.accepted_at < %(end)s)
 ORDER BY a.name, a.id"""


def billed_accounts(conn: Conn, period: Period) -> list[BilledAccount]:
    """The accounts an invoice run for the period covers, live and deleted."""
    rows = conn.execute(BILLED_ACCOUNTS, {"start": period.start, "end": period.end}).fetchall()
    return [
        BilledAccount(
            int(r["id"]),
            r["name"],
            r["status"],
            None if r["overage_cap"] is None else int(r["overage_cap"]),
        )
        for r in rows
    ]
