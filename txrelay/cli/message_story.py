"""The story of one message for `messages show`, told in sections.

Each section is a function (connection, message row) -> Section: a title, its JSON form and
its lines of text. SECTIONS is the order they are told in; a later change (bounces,
webhook deliveries) adds its own function there and changes no other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from txrelay.provisioning.views import short_time, timestamp
from txrelay.store import message_story


@dataclass(frozen=True)
class Section:
    key: str  # its name in the JSON form
    title: str
    data: Any
    lines: list[str]


SectionBuilder = Callable[[psycopg.Connection, dict[str, Any]], Section]


def message_section(conn: psycopg.Connection, message: dict[str, Any]) -> Section:
    data = {
        "queue_id": message["queue_id"],
        "node": message["node"],
        "txn_id": message["txn_id"],
        "message_id": message["message_id"],
        "account": message["account"],
        "connection": message["connection"],
        "envelope_sender": message["envelope_sender"],
        "header_from": message["header_from"],
        "size": message["size"],
    }
    deleted = " (deleted since)" if message["connection_deleted"] else ""
    return Section(
        "message",
        "Message",
        data,
        [
            f"queue id {message['queue_id']} on {message['node'] or '-'}, txn {message['txn_id']}",
            f"Message-ID {message['message_id'] or '-'}",
            f"account {message['account']!r}, connection {message['connection']!r}{deleted}",
            f"from {message['envelope_sender']} (From: {message['header_from']}), "
            f"{message['size']:,} bytes",
        ],
    )


def decision_section(conn: psycopg.Connection, message: dict[str, Any]) -> Section:
    """What the milter decided, and what Postfix did with the queue file since."""
    data = {
        "verdict": "accepted",
        "accepted_at": timestamp(message["accepted_at"]),
        "recipients": message["recipient_count"],
        "queued_at": timestamp(message["queued_at"]),
        "removed_at": timestamp(message["removed_at"]),
    }
    lines = [
        f"{short_time(message['accepted_at'])} accepted by the milter: sender allowed, "
        f"List-Help added, DKIM-signed, {message['recipient_count']} recipient(s) recorded"
    ]
    if message["queued_at"] is not None:
        lines.append(f"{short_time(message['queued_at'])} queued by Postfix")
    else:
        lines.append("not seen in Postfix's queue (yet): voided if it never gets there")
    if message["removed_at"] is not None:
        lines.append(f"{short_time(message['removed_at'])} queue file removed (done)")
    return Section("decision", "Milter decision", data, lines)


def recipients_section(conn: psycopg.Connection, message: dict[str, Any]) -> Section:
    rows = message_story.recipients_of(conn, int(message["id"]))
    data = [
        {
            "recipient": r["recipient"],
            "state": r["state"],
            "billing": r["billing"],
            "dsn": r["dsn"],
            "last_event": r["last_event"],
            "last_event_at": timestamp(r["last_event_at"]),
        }
        for r in rows
    ]
    lines = []
    for r in rows:
        dsn = f" dsn={r['dsn']}" if r["dsn"] else ""
        lines.append(f"{r['recipient']}: {r['state']}{dsn}, billed {r['billing']}")
        if r["last_event"]:
            lines.append(f"    {short_time(r['last_event_at'])} {r['last_event']}")
    return Section("recipients", "Recipients", data, lines)


SECTIONS: tuple[SectionBuilder, ...] = (message_section, decision_section, recipients_section)


def tell(conn: psycopg.Connection, message: dict[str, Any]) -> list[Section]:
    return [build(conn, message) for build in SECTIONS]
