"""A capture SMTP sink for the demo and the tests: stores each message in a Maildir.

The envelope goes into X-Sink-* header lines prepended to the message; the bytes below
them are exactly the bytes received (so a DKIM signature verifies on them). Each stored
message is logged with its Maildir key and Message-ID, the index the demo searches. Recipients
matching a reply rule get that reply at RCPT instead of being accepted, so a test can make
Postfix see a deferral (4xx) or a bounce (5xx).
"""

from __future__ import annotations

import asyncio
import fnmatch
import mailbox
import re
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from txrelay.errors import InvalidInput

SINK_HEADER_PREFIX = b"X-Sink-"
DATA_SIZE_LIMIT = 128 * 1024 * 1024
_MESSAGE_ID = re.compile(rb"^message-id:((?:[^\r\n]|\r?\n[ \t])*)", re.I | re.M)
_REPLY = re.compile(r"^([45][0-9][0-9])(?: ([45]\.[0-9]{1,3}\.[0-9]{1,3}))?(?: (.*))?$")


@dataclass(frozen=True)
class ReplyRule:
    """Recipients matching `pattern` (a glob on the lower-cased address) get `reply`."""

    pattern: str
    reply: str

    def matches(self, address: str) -> bool:
        return fnmatch.fnmatchcase(address.lower(), self.pattern.lower())


# Local parts starting with bounce- or defer- produce a bounce or a deferral on loopback
# (the demo and the tests of bounces, suppression and expiry).
DEFAULT_RULES = (
    ReplyRule("defer-*@*", "451 4.2.0 Mailbox busy, deferred by the capture sink (rule defer-*)"),
    ReplyRule("bounce-*@*", "550 5.1.1 No such user, bounced by the capture sink (rule bounce-*)"),
)


@dataclass(frozen=True)
class Capture:
    """One stored message: its envelope and the bytes as received."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes


def parse_reply_rule(text: str) -> ReplyRule:
    """PATTERN=CODE where CODE is '451' or a full reply such as '550 5.1.1 no such user'."""
    pattern, sep, reply = text.partition("=")
    match = _REPLY.match(reply.strip())
    if not sep or not pattern or not match:
        raise InvalidInput(
            f"reply rule {text!r} is not PATTERN=CODE, e.g. 'defer*@*=451' or "
            "'nobody@*=550 5.1.1 no such user'"
        )
    code, enhanced, words = match.groups()
    enhanced = enhanced or f"{code[0]}.0.0"
    return ReplyRule(pattern, f"{code} {enhanced} {words or f'Capture sink rule {pattern}'}")


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidInput(f"--listen {text!r} is not HOST:PORT, e.g. 127.0.0.1:2525")
    return host.strip("[]"), int(port)


def store_capture(
    maildir: mailbox.Maildir, mail_from: str, rcpt_tos: Sequence[str], peer: str, raw: bytes
) -> str:
    """Add the message with its envelope headers on top; returns the Maildir key."""
    received = datetime.now(UTC).isoformat(timespec="milliseconds")
    lines = [
        f"X-Sink-Mail-From: <{mail_from}>",
        f"X-Sink-Peer: {peer}",
        f"X-Sink-Received: {received}",
    ]
    lines.extend(f"X-Sink-Rcpt-To: <{rcpt}>" for rcpt in rcpt_tos)
    envelope = "".join(line + "\r\n" for line in lines).encode("utf-8")
    return maildir.add(envelope + raw)


def read_capture(data: bytes) -> Capture:
    """Split a stored message into its envelope and the bytes as received."""
    mail_from = ""
    rcpt_tos: list[str] = []
    rest = data
    while rest.startswith(SINK_HEADER_PREFIX):
        line, _, rest = rest.partition(b"\n")
        name, _, value = line.decode("utf-8").rstrip("\r").partition(": ")
        if name == "X-Sink-Mail-From":
            mail_from = value.strip("<>")
        elif name == "X-Sink-Rcpt-To":
            rcpt_tos.append(value.strip("<>"))
    return Capture(mail_from, tuple(rcpt_tos), rest)


def message_id(raw: bytes) -> str:
    """The Message-ID header's value (`<...>`, unfolded), or "" when there is none: the log
    line carries it, so a message is found by reading the log, not every stored file."""
    headers = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]
    match = _MESSAGE_ID.search(headers)
    return "" if match is None else b"".join(match.group(1).split()).decode("ascii", "replace")


class CaptureHandler:
    """aiosmtpd handler: refuse recipients by rule, store everything else."""

    def __init__(
        self, maildir: Path, rules: Sequence[ReplyRule], log: Callable[[str], None]
    ) -> None:
        self.maildir = mailbox.Maildir(str(maildir), create=True)
        self.rules = tuple(rules)
        self.log = log

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        for rule in self.rules:
            if rule.matches(address):
                self.log(f"sink refused rcpt=<{address}> reply={rule.reply!r}")
                return rule.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        key = store_capture(self.maildir, envelope.mail_from or "", envelope.rcpt_tos, peer, raw)
        self.log(
            f"sink stored={key} from=<{envelope.mail_from}> "
            f"to={','.join(f'<{r}>' for r in envelope.rcpt_tos)} size={len(raw)} "
            f"message_id={message_id(raw) or '-'}"
        )
        return f"250 2.0.0 Ok: stored as {key}"


def run_sink(
    host: str,
    port: int,
    maildir: Path,
    rules: Sequence[ReplyRule],
    log: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT."""
    asyncio.run(_serve(host, port, CaptureHandler(maildir, rules, log or _log)))


async def _serve(host: str, port: int, handler: CaptureHandler) -> None:
    loop = asyncio.get_running_loop()

    def protocol() -> Any:
        return SMTP(
            handler,
            hostname="capture-sink",
            data_size_limit=DATA_SIZE_LIMIT,
            enable_SMTPUTF8=True,
            decode_data=False,
        )

    server = await loop.create_server(protocol, host, port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound = server.sockets[0].getsockname()
    handler.log(f"sink listening on {bound[0]}:{bound[1]} maildir={handler.maildir._path}")
    await stop.wait()
    server.close()
    await server.wait_closed()
    handler.log("sink stopped")


def _log(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
