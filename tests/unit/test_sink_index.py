"""The capture sink's log line names each stored message's Message-ID: the demo's index."""

from __future__ import annotations

import asyncio
import mailbox
import re
import shlex
import subprocess
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


def _readme_return_path_command() -> str:
    """The README's `rp=$(sed … /var/log/txrelay/sink.log …)` lines, as written."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    found = re.search(r"^rp=\$\(.*?\n(?:    .*\n)*", readme, re.M)
    assert found is not None, "README.md no longer takes the DSN's return path with rp=$(…)"
    return found[0]


def test_readme_takes_the_return_path_from_the_sink_log_not_the_maildir(tmp_path: Path) -> None:
    """The README's DSN example finds the envelope sender of the mail to gone-later@ in the
    sink's log lines (the latest one, among others), as the sink writes them."""
    command = _readme_return_path_command()
    assert "/var/log/txrelay/sink.log" in command and "maildir" not in command.lower()
    lines: list[str] = []
    handler = CaptureHandler(tmp_path / "Maildir", [], lines.append)
    session = SimpleNamespace(peer=("127.0.0.1", 40000))
    for sender, recipients in [
        ("rp-old=x@bounces.relay.localdomain", ["gone-later@example.net"]),
        ("rp-other@bounces.relay.localdomain", ["customer@example.net"]),
        ("rp-new+1@bounces.relay.localdomain", ["a@example.net", "gone-later@example.net"]),
        ("rp-lookalike@bounces.relay.localdomain", ["gone-later@example.net.evil"]),
    ]:
        envelope = SimpleNamespace(original_content=b"Subject: x\r\n\r\nbody\r\n",
                                   mail_from=sender, rcpt_tos=recipients)
        asyncio.run(handler.handle_DATA(None, session, envelope))  # type: ignore[arg-type]
    sink_log = tmp_path / "sink.log"
    sink_log.write_text("sink listening on 127.0.0.1:2525 maildir=x\n" + "\n".join(lines) + "\n")
    script = command.replace("/var/log/txrelay/sink.log", shlex.quote(str(sink_log)))
    done = subprocess.run(["bash", "-c", f'{script}\nprintf "%s" "$rp"'], capture_output=True,
                          text=True, check=True)
    assert done.stdout == "rp-new+1@bounces.relay.localdomain"
