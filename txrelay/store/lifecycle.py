"""Quota over time: block expiry, plan renewal, the low-quota reminder's arming, reconcile.

Every function changes PostgreSQL only and returns the Redis balance deltas to apply once
the transaction has committed (store.balance.credit_balance), so a rolled-back transaction
never moves a live balance. Each step is idempotent: running the tick twice, or on two
nodes at once, changes nothing the second time.

Pending ledger rows (recorded, not yet billed to a block: store/ledger.py) are settled
before a block closes or a renewal adds one, so that each row is billed with the blocks of
its own time; the remaining quota counts the rows still pending as used.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import redis

from txrelay.errors import InvalidInput, NotFound
from txrelay.store import webhook_events
from txrelay.store.keys import AccountKeys
from txrelay.store.ledger import lock_for_settling, settle_all

Conn = psycopg.Connection[Any]  # dict_row connections (txrelay.store.database)

Credit = tuple[int, int]  # (account id, units to add to the live balance)

# Close every block whose 30 days are over: the unused remainder expires. The blocks are
# locked in id order first (migration 0014's lock order; a bare multi-row UPDATE locks them
# in scan order).
EXPIRE_BLOCKS = """
UPDATE quota_blocks SET expired_unused = amount - used
 WHERE id IN (SELECT id FROM quota_blocks
               WHERE expired_unused IS NULL AND expires_at IS NOT NULL
                 AND expires_at <= %(now)s
                 AND (%(accounts)s::bigint[] IS NULL OR account_id = ANY(%(accounts)s))
               ORDER BY id
                 FOR UPDATE)
   AND expired_unused IS NULL
RETURNING id, account_id, expired_unused"""

# Accounts the tick will settle: a plan due for renewal or a block due to close.
SELECT_DUE_ACCOUNTS = """
SELECT account_id FROM quota_plans
 WHERE next_renewal_at <= %(now)s
   AND (%(accounts)s::bigint[] IS NULL OR account_id = ANY(%(accounts)s))
UNION
SELECT account_id FROM quota_blocks
 WHERE expired_unused IS NULL AND expires_at IS NOT NULL AND expires_at <= %(now)s
   AND (%(accounts)s::bigint[] IS NULL OR account_id = ANY(%(accounts)s))"""

SELECT_DUE_BLOCK_ACCOUNTS = """
SELECT DISTINCT account_id FROM quota_blocks
 WHERE expired_unused IS NULL AND expires_at IS NOT NULL AND expires_at <= %(now)s
   AND (%(accounts)s::bigint[] IS NULL OR account_id = ANY(%(accounts)s))"""


def lock_due_accounts(conn: Conn, now: dt.datetime, accounts: Sequence[int] | None = None) -> None:
    """Inside the tick's transaction, before renew_plans and expire_blocks: the settling
    lock and pending rows of every account either will settle, taken together in migration
    0014's order. Settling them one after another would lock the first accounts' blocks
    before the last accounts' rows: voiding, which holds rows and then wants a block, would
    meet the tick in the opposite order."""
    due = conn.execute(SELECT_DUE_ACCOUNTS, {"now": now, "accounts": _ids(accounts)}).fetchall()
    if due:
        lock_for_settling(conn, [int(r["account_id"]) for r in due])


@dataclass(frozen=True)
class ExpiredBlock:
    block_id: int
    account_id: int
    expired_unused: int


def expire_blocks(
    conn: Conn, now: dt.datetime, accounts: Sequence[int] | None = None
) -> list[ExpiredBlock]:
    """Close due blocks (call inside a transaction); credit -expired_unused afterwards.
    `accounts` limits the work to those accounts (None: all). Their owners' pending rows
    are settled first: a block still serves the rows accepted before it expired."""
    due = conn.execute(
        SELECT_DUE_BLOCK_ACCOUNTS, {"now": now, "accounts": _ids(accounts)}
    ).fetchall()
    if due:
        settle_all(conn, [int(r["account_id"]) for r in due])
    rows = conn.execute(EXPIRE_BLOCKS, {"now": now, "accounts": _ids(accounts)}).fetchall()
    expired = [
        ExpiredBlock(int(r["id"]), int(r["account_id"]), int(r["expired_unused"])) for r in rows
    ]
    for block in expired:
        webhook_events.emit(
            conn,
            block.account_id,
            "block.expired",
            {"block_id": block.block_id, "expired_unused": block.expired_unused},
            now,
            event_id=webhook_events.event_id_for("block.expired", block.block_id),
        )
    return expired


# --- plans --------------------------------------------------------------------------------

LOCK_DUE_PLANS = """
SELECT account_id, block_amount, next_renewal_at FROM quota_plans
 WHERE next_renewal_at <= %(now)s
   AND (%(accounts)s::bigint[] IS NULL OR account_id = ANY(%(accounts)s))
 ORDER BY account_id
   FOR UPDATE SKIP LOCKED"""

# The scheduled date is the idempotency key (unique index quota_blocks_plan_renewal).
BOOK_PLAN_BLOCK = """
INSERT INTO quota_blocks (account_id, kind, amount, booked_at, expires_at)
VALUES (%(account_id)s, 'plan', %(amount)s, %(booked_at)s, %(expires_at)s)
ON CONFLICT (account_id, booked_at) WHERE kind = 'plan' DO NOTHING
RETURNING id"""

ADVANCE_PLAN = """
UPDATE quota_plans SET next_renewal_at = %(next)s WHERE account_id = %(account_id)s"""

UPSERT_PLAN = """
INSERT INTO quota_plans (account_id, block_amount, next_renewal_at)
VALUES (%(account_id)s, %(amount)s, %(now)s)
ON CONFLICT (account_id) DO UPDATE SET block_amount = EXCLUDED.block_amount
RETURNING next_renewal_at"""

DELETE_PLAN = "DELETE FROM quota_plans WHERE account_id = %(account_id)s RETURNING block_amount"

SELECT_PLAN = """
SELECT block_amount, next_renewal_at FROM quota_plans WHERE account_id = %(account_id)s"""


@dataclass(frozen=True)
class Renewal:
    account_id: int
    block_id: int
    amount: int
    booked_at: dt.datetime
    expires_at: dt.datetime


def renew_plans(
    conn: Conn, now: dt.datetime, validity: dt.timedelta, accounts: Sequence[int] | None = None
) -> list[Renewal]:
    """Book each due plan block, dated its scheduled day (call inside a transaction).

    Periods missed entirely (the tick did not run for a whole validity period) are not
    booked: their block would be expired on arrival, billed for nothing.
    """
    renewals = []
    plans = conn.execute(LOCK_DUE_PLANS, {"now": now, "accounts": _ids(accounts)}).fetchall()
    if plans:  # rows accepted before the renewal are billed without its block
        settle_all(conn, [int(plan["account_id"]) for plan in plans])
    for plan in plans:
        account, amount = int(plan["account_id"]), int(plan["block_amount"])
        due: dt.datetime = plan["next_renewal_at"]
        while due <= now:
            expires = due + validity
            if expires > now:
                row = conn.execute(
                    BOOK_PLAN_BLOCK,
                    {
                        "account_id": account,
                        "amount": amount,
                        "booked_at": due,
                        "expires_at": expires,
                    },
                ).fetchone()
                if row is not None:
                    renewals.append(Renewal(account, int(row["id"]), amount, due, expires))
            due = expires
        conn.execute(ADVANCE_PLAN, {"next": due, "account_id": account})
    return renewals


def set_plan(
    conn: Conn, account_id: int, amount: int, minimum: int, now: dt.datetime
) -> dt.datetime:
    """Create or change the plan; a new plan is due at once. Returns the next renewal."""
    if amount < minimum:
        raise InvalidInput(
            f"a plan block must be at least {minimum} mails ([quota] min_block); got {amount}"
        )
    row = conn.execute(
        UPSERT_PLAN, {"account_id": account_id, "amount": amount, "now": now}
    ).fetchone()
    assert row is not None  # INSERT … ON CONFLICT DO UPDATE returns the row either way
    return row["next_renewal_at"]  # type: ignore[no-any-return]


def clear_plan(conn: Conn, account_id: int) -> int | None:
    """Stop renewals (booked blocks stay until they expire); the old block size or None."""
    row = conn.execute(DELETE_PLAN, {"account_id": account_id}).fetchone()
    return None if row is None else int(row["block_amount"])


def get_plan(conn: Conn, account_id: int) -> dict[str, Any] | None:
    return conn.execute(SELECT_PLAN, {"account_id": account_id}).fetchone()


# --- remaining quota and reconcile ---------------------------------------------------------

# Remaining quota is migration 0012's rule (txrelay_remaining_quota), as for the milter.
SELECT_REMAINING = """
SELECT a.id, a.name, txrelay_remaining_quota(a.id, %(now)s) AS remaining
  FROM accounts a
 WHERE %(name)s::text IS NULL OR (a.name = %(name)s AND a.deleted_at IS NULL)
 ORDER BY a.name"""


@dataclass(frozen=True)
class BalanceCheck:
    account_id: int
    account: str
    postgres: int
    redis_before: int | None  # None: Redis held no balance (the milter loads it on use)

    @property
    def difference(self) -> int:
        return 0 if self.redis_before is None else self.redis_before - self.postgres


def remaining_by_account(
    conn: Conn, now: dt.datetime, name: str | None = None
) -> list[tuple[int, str, int]]:
    rows = conn.execute(SELECT_REMAINING, {"now": now, "name": name}).fetchall()
    if name is not None and not rows:
        raise NotFound(f"no account named {name!r}; see 'txrelay account list'")
    return [(int(r["id"]), r["name"], int(r["remaining"])) for r in rows]


def reconcile(
    conn: Conn, client: redis.Redis, prefix: str, now: dt.datetime, name: str | None = None
) -> list[BalanceCheck]:
    """Rewrite each cached balance to PostgreSQL's remaining quota; report what differed.

    Balances Redis does not hold stay absent: the milter loads them from PostgreSQL.
    """
    checks = []
    for account_id, account, remaining in remaining_by_account(conn, now, name):
        key = AccountKeys(prefix, account_id).balance
        before = client.get(key)
        check = BalanceCheck(
            account_id, account, remaining, None if before is None else int(before)
        )
        if check.redis_before is not None and check.difference != 0:
            client.set(key, remaining, xx=True)
            # The overage cap's count was moved against the wrong balance: reload it too.
            client.delete(AccountKeys(prefix, account_id).overage)
        checks.append(check)
    conn.commit()
    return checks


def _ids(accounts: Sequence[int] | None) -> list[int] | None:
    return None if accounts is None else list(accounts)


def apply_credits(client: redis.Redis, prefix: str, credits: Sequence[Credit]) -> None:
    """After commit: move the live balances by the committed deltas."""
    from txrelay.store.balance import credit_balance

    merged: dict[int, int] = {}
    for account_id, units in credits:
        merged[account_id] = merged.get(account_id, 0) + units
    for account_id, units in sorted(merged.items()):
        if units:
            credit_balance(client, prefix, account_id, units)


# --- low-quota reminder ---------------------------------------------------------------------

ARM_NEW_REMINDERS = """
INSERT INTO quota_reminders (account_id, armed, changed_at)
SELECT id, true, %(now)s FROM accounts WHERE low_quota_threshold > 0
   AND (%(accounts)s::bigint[] IS NULL OR id = ANY(%(accounts)s))
ON CONFLICT (account_id) DO NOTHING"""

# Accounts whose reminder must change: armed and below the threshold (send), or disarmed
# and back at or above it (re-arm).
SELECT_REMINDER_CHANGES = """
SELECT a.id, a.name, a.admin_email, a.low_quota_threshold, r.armed,
       txrelay_remaining_quota(a.id, %(now)s) AS remaining
  FROM accounts a JOIN quota_reminders r ON r.account_id = a.id
 WHERE a.low_quota_threshold > 0
   AND (%(accounts)s::bigint[] IS NULL OR a.id = ANY(%(accounts)s))"""

# Serialises two nodes' ticks: the second sees armed = false and sends nothing.
LOCK_ARMED_REMINDER = """
SELECT armed FROM quota_reminders WHERE account_id = %(account_id)s AND armed FOR UPDATE"""

SET_ARMED = """
UPDATE quota_reminders SET armed = %(armed)s, changed_at = %(now)s
 WHERE account_id = %(account_id)s"""

INSERT_NOTIFICATION = """
INSERT INTO notifications (account_id, kind, sent_at, detail)
VALUES (%(account_id)s, %(kind)s, %(now)s, %(detail)s)"""

SELECT_USAGE = """
SELECT count(*) FILTER (WHERE accepted_at > %(now)s - interval '24 hours') AS last_day,
       count(*) FILTER (WHERE accepted_at > %(now)s - interval '7 days') AS last_week
  FROM ledger
 WHERE account_id = %(account_id)s AND billing <> 'void'
   AND accepted_at > %(now)s - interval '7 days' AND accepted_at <= %(now)s"""


@dataclass(frozen=True)
class ReminderCandidate:
    account_id: int
    account: str
    admin_email: str
    threshold: int
    remaining: int
    armed: bool

    @property
    def due(self) -> bool:
        return self.armed and self.remaining < self.threshold

    @property
    def rearm(self) -> bool:
        return not self.armed and self.remaining >= self.threshold


def reminder_candidates(
    conn: Conn, now: dt.datetime, accounts: Sequence[int] | None = None
) -> list[ReminderCandidate]:
    params = {"now": now, "accounts": _ids(accounts)}
    conn.execute(ARM_NEW_REMINDERS, params)
    rows = conn.execute(SELECT_REMINDER_CHANGES, params).fetchall()
    found = [
        ReminderCandidate(
            int(r["id"]),
            r["name"],
            r["admin_email"],
            int(r["low_quota_threshold"]),
            int(r["remaining"]),
            bool(r["armed"]),
        )
        for r in rows
    ]
    return [c for c in found if c.due or c.rearm]


def lock_armed(conn: Conn, account_id: int) -> bool:
    """Inside a transaction: True (and the row locked) while the reminder is still armed."""
    return conn.execute(LOCK_ARMED_REMINDER, {"account_id": account_id}).fetchone() is not None


def set_armed(conn: Conn, account_id: int, armed: bool, now: dt.datetime) -> None:
    conn.execute(SET_ARMED, {"account_id": account_id, "armed": armed, "now": now})


def record_notification(
    conn: Conn, account_id: int, kind: str, detail: dict[str, Any], now: dt.datetime
) -> None:
    from psycopg.types.json import Jsonb

    conn.execute(
        INSERT_NOTIFICATION,
        {"account_id": account_id, "kind": kind, "now": now, "detail": Jsonb(detail)},
    )


def usage(conn: Conn, account_id: int, now: dt.datetime) -> tuple[int, int]:
    """Billed recipients of the last 24 hours and of the last 7 days."""
    row = conn.execute(SELECT_USAGE, {"account_id": account_id, "now": now}).fetchone()
    assert row is not None  # an aggregate: always one row
    return int(row["last_day"]), int(row["last_week"])


# --- quota.exhausted --------------------------------------------------------------------------

# Accounts whose exhaustion state may change: subscribed to quota.exhausted, or told already.
SELECT_EXHAUSTION_CANDIDATES = """
SELECT a.id, a.name, txrelay_remaining_quota(a.id, %(now)s) AS remaining,
       r.exhausted_since IS NOT NULL AS told
  FROM accounts a LEFT JOIN quota_reminders r ON r.account_id = a.id
 WHERE (%(accounts)s::bigint[] IS NULL OR a.id = ANY(%(accounts)s))
   AND (r.exhausted_since IS NOT NULL
        OR EXISTS (SELECT 1 FROM webhooks w
                    WHERE w.account_id = a.id AND w.removed_at IS NULL
                      AND 'quota.exhausted' = ANY (w.events)))"""

# Serialises two nodes' ticks: only the one whose write lands queues the event. A new row is
# armed as ARM_NEW_REMINDERS would make it.
MARK_EXHAUSTED = """
INSERT INTO quota_reminders (account_id, armed, changed_at, exhausted_since)
VALUES (%(account_id)s, true, %(now)s, %(now)s)
ON CONFLICT (account_id) DO UPDATE SET exhausted_since = EXCLUDED.exhausted_since
 WHERE quota_reminders.exhausted_since IS NULL"""

CLEAR_EXHAUSTED = """
UPDATE quota_reminders SET exhausted_since = NULL
 WHERE account_id = %(account_id)s AND exhausted_since IS NOT NULL"""


def check_exhaustion(
    conn: Conn, now: dt.datetime, accounts: Sequence[int] | None = None
) -> list[int]:
    """Queue quota.exhausted once each time an account's remaining quota reaches 0 (call
    inside a transaction); forget it once quota is back above 0. The ids of the accounts
    told now."""
    rows = conn.execute(
        SELECT_EXHAUSTION_CANDIDATES, {"now": now, "accounts": _ids(accounts)}
    ).fetchall()
    told = []
    for row in rows:
        account_id, remaining = int(row["id"]), int(row["remaining"])
        if remaining > 0:
            if row["told"]:
                conn.execute(CLEAR_EXHAUSTED, {"account_id": account_id})
            continue
        if row["told"]:
            continue
        if conn.execute(MARK_EXHAUSTED, {"account_id": account_id, "now": now}).rowcount:
            webhook_events.emit(
                conn,
                account_id,
                "quota.exhausted",
                {"account": row["name"], "remaining": remaining},
                now,
                event_id=webhook_events.event_id_for("quota.exhausted", account_id, now),
            )
            told.append(account_id)
    return told
