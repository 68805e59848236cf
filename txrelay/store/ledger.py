"""Records accepted messages and their recipients in the ledger, billed against quota blocks.

Two steps (migration 0009): record_acceptance, on the end-of-message hot path, writes the
recipients as billing 'pending' and locks no per-account row; settle allocates an account's
pending rows to its quota blocks later (the milter's settler, the quota tick, a booking).
Until then a pending row counts as a unit used; reports project it read-only (migration 0012).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[Any]  # dict_row connections (txrelay.store.database)

# One round trip: migration 0009's function records the message, its pending ledger rows,
# the end of its degraded-mode holds and the connection's last use; it locks no quota block.
RECORD_ACCEPTANCE = """
SELECT message_row_id, recipient, billing, quota_block_id
  FROM txrelay_record_acceptance(
       %(txn_id)s, %(queue_id)s, %(node)s, %(message_id)s, %(account_id)s,
       %(connection_id)s, %(envelope_sender)s, %(header_from)s, %(size)s, %(recipients)s,
       %(accepted_at)s, %(release_holds)s)"""

# Allocates the account's pending rows (migration 0009): blocks locked, used moved, rows
# billed 'quota' or 'overage'. Safe with any number of settlers at once.
SETTLE_ACCOUNT = "SELECT txrelay_settle_account(%(account_id)s) AS settled"

PENDING_ACCOUNTS = """
SELECT DISTINCT account_id FROM ledger
 WHERE billing = 'pending'
   AND (%(accounts)s::bigint[] IS NULL OR account_id = ANY(%(accounts)s))
 ORDER BY account_id"""

# Order 1 and 2 of migration 0014's lock order, for a caller's transaction that settles
# several accounts: every account's settling lock, then every pending row, before
# txrelay_settle_account locks the first block. Settling one account after another without
# this would lock account 1's blocks before account 2's rows, the order voiding crosses.
LOCK_ACCOUNT_FOR_SETTLING = "SELECT txrelay_settle_lock(%(account_id)s)"

LOCK_PENDING_ROWS = """
SELECT id FROM ledger
 WHERE billing = 'pending' AND account_id = ANY(%(accounts)s)
 ORDER BY id
   FOR UPDATE"""

# The rule lives in migration 0012 (txrelay_remaining_quota): unused units of the live
# blocks minus the pending rows, which take them first when they are settled, never below 0.
REMAINING_QUOTA = "SELECT txrelay_remaining_quota(%(account_id)s, %(now)s) AS remaining"


@dataclass(frozen=True)
class AcceptedMessage:
    txn_id: uuid.UUID
    queue_id: str
    node: str
    message_id: str | None
    account_id: int
    connection_id: int
    envelope_sender: str
    header_from: str
    size: int
    recipients: Sequence[str]  # one per copy Postfix queues (an address may repeat), in RCPT order
    accepted_at: dt.datetime

    def fields(self) -> dict[str, Any]:
        """The message as the ledger's statements take it (recipients as a list)."""
        return {
            "txn_id": self.txn_id,
            "queue_id": self.queue_id,
            "node": self.node,
            "message_id": self.message_id,
            "account_id": self.account_id,
            "connection_id": self.connection_id,
            "envelope_sender": self.envelope_sender,
            "header_from": self.header_from,
            "size": self.size,
            "recipients": list(self.recipients),
            "accepted_at": self.accepted_at,
        }

    def json_fields(self) -> dict[str, Any]:
        """fields() in JSON's types: the journal's line, the group commit's batch."""
        return self.fields() | {
            "txn_id": str(self.txn_id),
            "accepted_at": self.accepted_at.isoformat(),
        }


@dataclass(frozen=True)
class Allocation:
    recipient: str
    billing: str  # 'pending' until settled, then 'quota' or 'overage'
    quota_block_id: int | None


@dataclass(frozen=True)
class Recorded:
    message_row_id: int | None  # None: recorded before (a retry), or journaled
    allocations: Sequence[Allocation]
    journaled: int = 0  # recipients written to the local journal, not yet to PostgreSQL

    @property
    def quota_units(self) -> int:
        """What the live Redis balance loses. A pending recipient (recorded, not yet settled)
        or a journaled one (not yet recorded) is allocated later; until then the balance
        loses every such recipient, down to 0 at most (commit.lua), which is what settling
        will bill to quota: the units left, the rest as overage."""
        if self.journaled:
            return self.journaled
        return sum(1 for a in self.allocations if a.billing in ("quota", "pending"))


def allocate(recipients: Sequence[str], blocks: Sequence[tuple[int, int]]) -> list[Allocation]:
    """Each recipient to the first block with units left (blocks in consumption order),
    overage once every block is used up."""
    unused = [[block_id, left] for block_id, left in blocks]
    result = []
    for recipient in recipients:
        block = next((b for b in unused if b[1] > 0), None)
        if block is None:
            result.append(Allocation(recipient, "overage", None))
        else:
            block[1] -= 1
            result.append(Allocation(recipient, "quota", block[0]))
    return result


def record_acceptance(
    conn: Conn, message: AcceptedMessage, release_holds: Sequence[str] = ()
) -> Recorded:
    """The message, one pending ledger row per recipient and the connection's last use, in
    ONE transaction: all of it is recorded or none of it. release_holds: the message's
    reservations held in PostgreSQL (degraded mode), which end in the same transaction so
    that "pending" and "held" never count a recipient twice.

    Idempotent by txn_id: recording a transaction again (a journal replayed twice, a retry
    after a timeout that did commit) changes nothing.

    One statement in its own implicit transaction: one network round trip, and no lock on
    any row another message of the account needs, so messages of one account never wait
    for each other's COMMIT. settle() bills the rows to blocks afterwards."""
    params = message.fields() | {"release_holds": list(release_holds)}
    return _recorded(_one_statement(conn, RECORD_ACCEPTANCE, params))


# Several messages in ONE statement (the ledger writer's group commit): one round trip and
# one implicit transaction, each message through the same function as record_acceptance, in
# the order given; each result row says which message (n, from 1) it belongs to.
RECORD_ACCEPTANCES = """
SELECT b.n, r.message_row_id, r.recipient, r.billing, r.quota_block_id
  FROM jsonb_array_elements(%(batch)s::jsonb) WITH ORDINALITY AS b (m, n)
 CROSS JOIN LATERAL txrelay_record_acceptance(
       (b.m->>'txn_id')::uuid, b.m->>'queue_id', b.m->>'node', b.m->>'message_id',
       (b.m->>'account_id')::bigint, (b.m->>'connection_id')::bigint,
       b.m->>'envelope_sender', b.m->>'header_from', (b.m->>'size')::bigint,
       ARRAY(SELECT jsonb_array_elements_text(b.m->'recipients')),
       (b.m->>'accepted_at')::timestamptz,
       ARRAY(SELECT jsonb_array_elements_text(b.m->'release_holds')))
       WITH ORDINALITY AS r (message_row_id, recipient, billing, quota_block_id, k)
 ORDER BY b.n, r.k"""


def record_acceptances(
    conn: Conn, messages: Sequence[tuple[AcceptedMessage, Sequence[str]]]
) -> list[Recorded]:
    """record_acceptance for several messages (each with its release_holds) in ONE
    statement, so ONE transaction: all of them are recorded or none. Idempotent by txn_id
    per message. Results in the order given."""
    batch = [message.json_fields() | {"release_holds": list(holds)} for message, holds in messages]
    rows = _one_statement(conn, RECORD_ACCEPTANCES, {"batch": Jsonb(batch)})
    by_message: dict[int, list[Any]] = {}
    for row in rows:
        by_message.setdefault(_column(row, "n"), []).append(row)
    return [_recorded(by_message.get(n, [])) for n in range(1, len(messages) + 1)]


def _recorded(rows: Sequence[Any]) -> Recorded:
    """record_acceptance's result rows as a Recorded (none: recorded before)."""
    if not rows:
        return Recorded(None, [])
    allocations = [
        Allocation(
            str(_field(r, "recipient")),
            str(_field(r, "billing")),
            _optional_int(_field(r, "quota_block_id")),
        )
        for r in rows
    ]
    return Recorded(_column(rows[0], "message_row_id"), allocations)


def settle(conn: Conn, account_id: int) -> int:
    """Bill the account's pending rows to its quota blocks (or as overage); returns how many
    it settled. One statement: its own transaction, or a savepoint in the caller's (whose
    transaction then keeps the account's blocks locked until it ends)."""
    rows = _one_statement(conn, SETTLE_ACCOUNT, {"account_id": account_id})
    return int(_column(rows[0], "settled"))


def settle_all(conn: Conn, accounts: Sequence[int] | None = None) -> int:
    """Settle every account with pending rows (only `accounts`, when given), one account per
    transaction outside a caller's transaction; returns the rows settled. Inside a caller's
    transaction (which keeps every lock until it ends) the accounts' settling locks and
    pending rows are all taken first, in migration 0014's order."""
    found = _one_statement(
        conn, PENDING_ACCOUNTS, {"accounts": None if accounts is None else list(accounts)}
    )
    ids = [_column(row, "account_id") for row in found]
    if ids and _in_transaction(conn):
        lock_for_settling(conn, ids)
    return sum(settle(conn, account_id) for account_id in ids)


def lock_for_settling(conn: Conn, accounts: Sequence[int]) -> None:
    """Inside a transaction: the settling lock of each account (in id order), then their
    pending ledger rows (in id order), held until the transaction ends."""
    ids = sorted(set(accounts))
    for account_id in ids:
        conn.execute(LOCK_ACCOUNT_FOR_SETTLING, {"account_id": account_id})
    conn.execute(LOCK_PENDING_ROWS, {"accounts": ids})


# Migration 0033's rule: the period's overage recipients, settled or as settling would bill.
OVERAGE_USED = "SELECT txrelay_overage_used(%(account_id)s, %(start)s, %(end)s) AS used"


def overage_used(conn: Conn, account_id: int, start: dt.datetime, end: dt.datetime) -> int:
    """Overage recipients the account sent in [start, end): what its overage cap counts."""
    row = conn.execute(OVERAGE_USED, {"account_id": account_id, "start": start, "end": end})
    found = row.fetchone()
    assert found is not None  # a SELECT without FROM: always one row
    return int(found["used"])


def remaining_quota(conn: Conn, account_id: int, now: dt.datetime) -> int:
    """Units left in the account's live blocks once its pending rows are settled: what
    Redis's balance starts from."""
    row = conn.execute(REMAINING_QUOTA, {"account_id": account_id, "now": now}).fetchone()
    return int(_column(row, "remaining")) if row is not None else 0


def _one_statement(conn: Conn, query: str, params: dict[str, object]) -> list[Any]:
    """Run one statement as its own transaction (autocommit: atomic, no BEGIN/COMMIT round
    trips), or inside the caller's transaction when there is one."""
    if conn.autocommit:
        return conn.execute(query, params).fetchall()
    if _in_transaction(conn):
        with conn.transaction():  # a savepoint in the caller's transaction
            return conn.execute(query, params).fetchall()
    conn.autocommit = True
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.autocommit = False


def _in_transaction(conn: Conn) -> bool:
    return conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


def _field(row: object, name: str) -> object:
    if isinstance(row, dict):
        return row[name]
    raise TypeError("ledger queries expect dict rows (txrelay.store.database connections)")


def _optional_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _column(row: object, name: str) -> int:
    """A column from a dict_row (the pool's rows) or a tuple row."""
    if isinstance(row, dict):
        return int(row[name])
    raise TypeError("ledger queries expect dict rows (txrelay.store.database connections)")
