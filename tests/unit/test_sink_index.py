"""The capture sink's log line names each stored message's Message-ID: the demo's index."""

from __future__ import annotations

import asyncio
import mailbox
from pathlib import Path
from types import SimpleNamespace

import pytest

from txrelay.sink import CaptureHandler, message_id


@pytest.mark.parametrize(("raw", "expected"), [
    (b"From: a@example.com\r\nMessage-Id: <demo-1@shop.example>\r\n\r\nbody\r\n",
     "<demo-1@shop.example>"),
    (b"Subject: x\r\nMESSAGE-ID:\r\n <folded@shop.example>\r\nTo: b@example.net\r\n\r\n",
     "<folded@shop.example>"),
    (b"Subject: no id\n\nMessage-ID: <in-the-body@shop.example>\n", ""),
])
def test_message_id_is_read_from_the_header_only(raw: bytes, expected: str) -> None:
    assert message_id(raw) == expected


def test_log_line_names_the_maildir_key_and_message_id(tmp_path: Path) -> None:
    lines: list[str] = []
    handler = CaptureHandler(tmp_path / "Maildir", [], lines.append)
    raw = b"Message-ID: <order-42@shop.example>\r\nSubject: hi\r\n\r\nThanks\r\n"
    envelope = SimpleNamespace(original_content=raw, mail_from="orders@shop.example",
                               rcpt_tos=["customer@example.net"])
    session = SimpleNamespace(peer=("127.0.0.1", 40000))
    reply = asyncio.run(handler.handle_DATA(None, session, envelope))  # type: ignore[arg-type]
    key = reply.rsplit(" ", 1)[1]
    assert lines == [f"sink stored={key} from=<orders@shop.example> "
                     f"to=<customer@example.net> size={len(raw)} "
                     "message_id=<order-42@shop.example>"]
    assert mailbox.Maildir(str(tmp_path / "Maildir"))[key].get_payload() == "Thanks\n"
