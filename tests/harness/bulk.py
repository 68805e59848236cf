"""Many messages through real Postfix fast: pipelined transactions, several sessions at once.

Each message is one pipelined round trip (MAIL, RCPT, DATA together, as PIPELINING allows)
plus the content. The message bytes are sent exactly as given (only dot-stuffed and ended
with CRLF.CRLF): bare CR, bare LF and NUL bytes reach Postfix unchanged, which smtplib's
str path would have normalised.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tests.harness.smtp import Reply, smtp_session

_DOT_AT_LINE_START = re.compile(rb"(?m)^\.")


@dataclass(frozen=True)
class Envelope:
    """One message to send: sender, one recipient, the DATA content as the client writes it."""

    key: str
    mail_from: str
    rcpt_to: str
    data: bytes


@dataclass(frozen=True)
class Outcome:
    """The server's last word on one message: the first refusal, or the reply to the data."""

    key: str
    reply: Reply
    stage: str  # mail | rcpt | data | content

    @property
    def accepted(self) -> bool:
        return self.stage == "content" and self.reply.code == 250


def stuffed(data: bytes) -> bytes:
    """Dot-stuffed content with the terminating CRLF.CRLF (RFC 5321 4.5.2)."""
    body = _DOT_AT_LINE_START.sub(b"..", data)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


def _reply(client: smtplib.SMTP) -> Reply:
    code, text = client.getreply()
    return Reply(code, text.decode("utf-8", "replace"))


def send_pipelined(client: smtplib.SMTP, envelope: Envelope) -> Outcome:
    """MAIL, RCPT and DATA in one write; the content only when DATA said 354."""
    commands = (f"MAIL FROM:<{envelope.mail_from}>\r\nRCPT TO:<{envelope.rcpt_to}>\r\n"
                "DATA\r\n").encode()
    client.send(commands)
    mail, rcpt, data = _reply(client), _reply(client), _reply(client)
    for stage, reply in (("mail", mail), ("rcpt", rcpt)):
        if reply.code >= 300:
            if data.code == 354:  # cannot happen with Postfix, but never leave DATA open
                client.send(b".\r\n")
                _reply(client)
            client.rset()
            return Outcome(envelope.key, reply, stage)
    if data.code != 354:
        client.rset()
        return Outcome(envelope.key, data, "data")
    client.send(stuffed(envelope.data))
    return Outcome(envelope.key, _reply(client), "content")


def send_session(username: str, password: str, port: int,
                 envelopes: Sequence[Envelope]) -> list[Outcome]:
    """All envelopes through one authenticated session."""
    with smtp_session(username, password, port=port, timeout=120) as client:
        return [send_pipelined(client, envelope) for envelope in envelopes]


def send_parallel(username: str, password: str, port: int, envelopes: Sequence[Envelope],
                  *, sessions: int = 4) -> dict[str, Outcome]:
    """The envelopes spread over `sessions` parallel sessions; outcome by envelope key."""
    shares = [list(envelopes[i::sessions]) for i in range(sessions)]
    with ThreadPoolExecutor(max_workers=sessions) as pool:
        results = pool.map(lambda share: send_session(username, password, port, share),
                           [share for share in shares if share])
    return {outcome.key: outcome for batch in results for outcome in batch}
