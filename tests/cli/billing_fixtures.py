"""Ledger data for the reporting commands, written by SQL as the milter and tracker would."""

from __future__ import annotations

import datetime as dt

import psycopg

from tests.store.tracking_fixtures import Sender, add_message, make_sender


def sender_with_outcomes(db: psycopg.Connection, unique: str,
                         at: dt.datetime) -> tuple[Sender, int]:
    """An account whose one message went to four recipients: delivered, deferred, bounced,
    and one still queued."""
    sender = make_sender(db, unique, quota=1000)
    message = add_message(db, sender, f"C{unique}", ["ok@x.test", "later@x.test",
                                                     "gone@x.test", "wait@x.test"],
                          accepted_at=at, message_id=f"<order-{unique}@shop.example>")
    for recipient, state, dsn, event in [
            ("ok@x.test", "delivered", "2.0.0", "sent via mx: 250 ok"),
            ("later@x.test", "deferred", "4.2.0", "deferred via mx: 450 later"),
            ("gone@x.test", "bounced", "5.1.1", "bounced via mx: 550 no such user"),
            ("wait@x.test", "queued", None, "queued")]:
        db.execute("UPDATE ledger SET state = %s, dsn = %s, last_event = %s, "
                   "last_event_at = %s WHERE message_id = %s AND recipient = %s",
                   (state, dsn, event, at, message, recipient))
    return sender, message
