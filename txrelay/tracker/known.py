"""What a chunk of the log knows without a query, kept in step with what its transaction
changes: the message owning each queue id (Owners) and the ledger rows it locked
(LedgerRows). The engine applies lines with them; the delivery pipeline predicts its
statements' results from them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import psycopg

from txrelay.store import tracking


class Owners:
    """The message owning each queue id (tracking.queue_owner) as this transaction sees it,
    kept in step with what the transaction itself changes (queued, removed).

    Of a chunk, all are read in one query instead of one per line, after its lines were read.
    That finds every message the lines can name: the milter records a message before it lets
    Postfix queue it, and Postfix logs a queue id's qmgr and delivery lines only after that.
    The exception is a message the milter journaled (PostgreSQL was down), whose row comes at
    replay: until the row is read, its lines are kept as when there is no row, and they are
    applied once it is there (apply_pending, Tracker.apply_kept)."""

    def __init__(
        self, conn: psycopg.Connection, node: str, known: dict[str, tracking.Owner | None]
    ) -> None:
        """known: queue id -> its owner (None: no message owns it); others are read when
        asked for."""
        self.conn = conn
        self.node = node
        self.known = known

    @classmethod
    def of_chunk(cls, conn: psycopg.Connection, node: str, queue_ids: list[str]) -> Owners:
        known: dict[str, tracking.Owner | None] = dict.fromkeys(queue_ids)
        known.update(tracking.queue_owners(conn, node, queue_ids))
        return cls(conn, node, known)

    def cached(self, queue_id: str) -> tracking.Owner | None:
        """The owner when it is known without a query (None: no owner, or not known)."""
        return self.known.get(queue_id)

    def get(self, queue_id: str) -> tracking.Owner | None:
        if queue_id not in self.known:
            self.known[queue_id] = tracking.queue_owner(self.conn, self.node, queue_id)
        return self.known[queue_id]

    def queued(self, queue_id: str, message_id: int) -> None:
        """message_id was marked queued in this transaction."""
        if self.known.get(queue_id) == (message_id, False):
            self.known[queue_id] = (message_id, True)
        elif self.known.get(queue_id) != (message_id, True):
            self.forget(queue_id)

    def forget(self, queue_id: str) -> None:
        """Read the owner again when next asked (after a change that may move it)."""
        self.known.pop(queue_id, None)


class LedgerRows:
    """The ledger rows a chunk's delivery lines are matched against, as this transaction
    sees them: those the chunk locked (tracking.lock_queue_rows, which reads them), kept in
    step with what the transaction itself changes, so that a delivery line costs no read.
    Locked, they change only by this transaction. The rows of a message not locked at the
    start (a queue id's owner that changed during the chunk) are read line by line."""

    def __init__(self, conn: psycopg.Connection, locked: Iterable[tracking.LedgerCopy]) -> None:
        self.conn = conn
        self.by_message: dict[int, dict[int, tracking.LedgerCopy]] = {}
        for copy in locked:
            self.by_message.setdefault(copy.message_id, {})[copy.ledger_id] = copy

    def recipients(self, message_id: int, addresses: Sequence[str]) -> dict[str, int]:
        """tracking.ledger_recipients, from the locked rows when they are the message's."""
        copies = self.by_message.get(message_id)
        if copies is None:
            return tracking.ledger_recipients(self.conn, message_id, addresses)
        wanted = set(addresses)
        return tracking.open_copies_first(c for c in copies.values() if c.recipient in wanted)

    def locked(self, message_id: int) -> dict[int, tracking.LedgerCopy] | None:
        """The message's rows by ledger id when this object knows them (None: it does not)."""
        return self.by_message.get(message_id)

    def recorded(self, message_id: int, ledger_id: int, state: str | None) -> None:
        """The row's state is now `state` (None: the statement changed nothing, so the row
        was in a state this object may not know: read the message's rows again)."""
        copies = self.by_message.get(message_id)
        if copies is None or ledger_id not in copies:
            return
        if state is None:
            self.forget(message_id)
        else:
            copies[ledger_id] = dataclasses.replace(copies[ledger_id], state=state)

    def queued(self, message_id: int) -> None:
        """qmgr's line confirmed the message: its accepted rows are queued."""
        for ledger_id, copy in self.by_message.get(message_id, {}).items():
            if copy.state == "accepted":
                self.by_message[message_id][ledger_id] = dataclasses.replace(copy, state="queued")

    def forget(self, message_id: int) -> None:
        """Read the message's rows line by line from now on (after a change made elsewhere)."""
        self.by_message.pop(message_id, None)
