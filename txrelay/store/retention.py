"""`txrelay db prune`: delete ledger and message rows older than the retention.

One connection at a time, each in its own transaction (the indexes ledger_connection_time
and messages_connection_time serve every statement; no long lock on the ledger). The
ledger refuses deletes outside a transaction that sets txrelay.pruning (migration 0043):
the rollups keep the figures of what is deleted here. Pending rows are never deleted (they
are not billed yet).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg

Conn = psycopg.Connection[Any]  # dict_row connections (txrelay.store.database)

# Connections with ledger or message rows before the cutoff.
CONNECTIONS_TO_PRUNE = """
SELECT c.id FROM connections c
 WHERE EXISTS (SELECT 1 FROM messages m WHERE m.connection_id = c.id
                  AND m.accepted_at < %(cutoff)s)
    OR EXISTS (SELECT 1 FROM ledger l WHERE l.connection_id = c.id
                  AND l.accepted_at < %(cutoff)s)
 ORDER BY c.id"""

COUNT_OLD = """
SELECT (SELECT count(*) FROM ledger l WHERE l.connection_id = %(connection_id)s
           AND l.accepted_at < %(cutoff)s AND l.billing <> 'pending') AS ledger_rows,
       (SELECT count(*) FROM messages m WHERE m.connection_id = %(connection_id)s
           AND m.accepted_at < %(cutoff)s
           AND NOT EXISTS (SELECT 1 FROM ledger l WHERE l.message_id = m.id
                              AND (l.accepted_at >= %(cutoff)s OR l.billing = 'pending'))
       ) AS messages"""

ALLOW_PRUNING = "SELECT set_config('txrelay.pruning', 'on', true)"

DELETE_LEDGER = """
DELETE FROM ledger WHERE connection_id = %(connection_id)s AND accepted_at < %(cutoff)s
   AND billing <> 'pending'"""

# A message goes once none of its rows is left (its rows were all deleted just before).
DELETE_MESSAGES = """
DELETE FROM messages m WHERE m.connection_id = %(connection_id)s AND m.accepted_at < %(cutoff)s
   AND NOT EXISTS (SELECT 1 FROM ledger l WHERE l.message_id = m.id)"""


@dataclass(frozen=True)
class Pruned:
    cutoff: dt.datetime
    ledger_rows: int
    messages: int
    connections: int


def prune(conn: Conn, cutoff: dt.datetime, *, dry_run: bool) -> Pruned:
    """Delete (or with dry_run only count) the rows accepted before cutoff. `conn` must not
    be in a transaction: each connection's rows are one transaction."""
    with conn.transaction():
        connection_ids = [
            int(row["id"])
            for row in conn.execute(CONNECTIONS_TO_PRUNE, {"cutoff": cutoff}).fetchall()
        ]
    ledger_rows = messages = 0
    for connection_id in connection_ids:
        params = {"connection_id": connection_id, "cutoff": cutoff}
        with conn.transaction():
            if dry_run:
                row = conn.execute(COUNT_OLD, params).fetchone()
                assert row is not None
                ledger_rows += int(row["ledger_rows"])
                messages += int(row["messages"])
                continue
            conn.execute(ALLOW_PRUNING)
            ledger_rows += conn.execute(DELETE_LEDGER, params).rowcount
            messages += conn.execute(DELETE_MESSAGES, params).rowcount
    return Pruned(cutoff, ledger_rows, messages, len(connection_ids))
