"""The shop's envelope sender of what the capture sink received.

The e2e stacks give every message the relay's return path (tests/harness/stackconfig.py
turns [bounce] domain on), so the sink sees MAIL FROM b-TOKEN@bounce domain; the shop's own
sender is in the ledger (messages.envelope_sender), found through the token's txn id."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path

import psycopg

from txrelay.bounce_secret import read_bounce_secret
from txrelay.config import Config
from txrelay.policy.return_path import read_return_path
from txrelay.sink import Capture

SELECT_SENDERS = "SELECT txn_id, envelope_sender FROM messages WHERE txn_id = ANY(%s)"


def shop_senders(captures: Iterable[Capture], config: Config) -> list[str]:
    """Each capture's envelope sender as the shop gave it (the sink's MAIL FROM when it is
    no return path of the relay's), in the order given."""
    captured = list(captures)
    secret = read_bounce_secret(Path(config.bounce.secret_file))
    txn_ids = [read_return_path(secret, c.mail_from) for c in captured]
    wanted = [t for t in txn_ids if t is not None]
    known: dict[uuid.UUID, str] = {}
    if wanted:
        with psycopg.connect(config.database.url, autocommit=True) as conn:
            for txn_id, sender in conn.execute(SELECT_SENDERS, (wanted,)).fetchall():
                known[txn_id] = sender
    pairs = zip(captured, txn_ids, strict=True)
    return [c.mail_from if t is None else known.get(t, "?") for c, t in pairs]


def sent_by(captures: Iterable[Capture], config: Config, address: str) -> list[Capture]:
    """The captures whose shop's envelope sender was `address`."""
    captured = list(captures)
    senders = shop_senders(captured, config)
    return [c for c, s in zip(captured, senders, strict=True) if s == address]
