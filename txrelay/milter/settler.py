"""Settles the accounts this milter recorded mail for, off the end-of-message hot path.

The ledger write at end of message records recipients as 'pending' (store/ledger.py) so
that messages of one account never wait for each other's COMMIT. One daemon thread per
milter process allocates them to quota blocks: it collects account ids (a set, so a busy
account costs one settle per round, not one per message) and settles them every
SETTLE_INTERVAL seconds on its own PostgreSQL connection, never one of the pool's that the
SMTP connections wait for. An error is logged and the accounts are kept for the next
round; it never reaches an SMTP reply. Its first round settles every account with pending
rows, so rows left by a milter that was killed are picked up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from txrelay.errors import ServiceUnavailable
from txrelay.store.ledger import settle, settle_all
from txrelay.supervised import SupervisedLoop

log = logging.getLogger("txrelay.milter.settler")

SETTLE_INTERVAL = 0.2  # seconds between rounds: how long a recipient stays 'pending'


class Settler:
    """Thread-safe: notify() is called from any SMTP connection's thread."""

    def __init__(
        self, connect: Callable[[], psycopg.Connection], interval: float = SETTLE_INTERVAL
    ) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._accounts: set[int] = set()
        self._everything = True  # the first round settles every pending account
        self._conn: psycopg.Connection | None = None
        self.loop = SupervisedLoop("ledger-settler", interval, self.settle_round, last_run=True)

    def notify(self, account_id: int) -> None:
        """The account has new pending rows: settle it in the next round."""
        with self._lock:
            self._accounts.add(account_id)

    def start(self) -> Settler:
        self.loop.start()
        return self

    def stop(self) -> None:
        """Stop after one last round, so that a clean shutdown leaves nothing pending."""
        self.loop.stop()
        if self._conn is not None:
            self._conn.close()

    def settle_round(self) -> int:
        """Settle the accounts collected so far; rows settled (errors: logged, kept)."""
        with self._lock:
            accounts, self._accounts = self._accounts, set()
            everything, self._everything = self._everything, False
        if not accounts and not everything:
            return 0
        try:
            conn = self._connection()
            settled = (
                settle_all(conn)
                if everything
                else sum(settle(conn, account_id) for account_id in sorted(accounts))
            )
        except (psycopg.Error, ServiceUnavailable) as exc:
            self._keep(accounts, everything)
            log.warning(
                "event=settle_failed accounts=%d error=%r (retried in the next round)",
                len(accounts),
                exc.__class__.__name__,
            )
            self._drop_connection()
            return 0
        return settled

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _keep(self, accounts: set[int], everything: bool) -> None:
        with self._lock:
            self._accounts |= accounts
            self._everything = self._everything or everything
