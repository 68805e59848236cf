"""An SMTP client the way a shop submits: STARTTLS, AUTH, one reply per command recorded."""

from __future__ import annotations

import smtplib
import ssl
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import format_datetime, localtime

SUBMISSION_HOST = "127.0.0.1"
SUBMISSION_PORT = 10587


@dataclass
class Reply:
    code: int
    text: str

    @property
    def enhanced(self) -> str:
        """The enhanced status code (e.g. '4.7.1'), or '' when the reply has none."""
        first = self.text.split(" ", 1)[0]
        return first if first.count(".") == 2 and first[0] in "245" else ""

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


@dataclass
class Submission:
    """What the server said to each step of one transaction."""

    mail: Reply
    rcpts: dict[str, Reply] = field(default_factory=dict)
    data: Reply | None = None

    @property
    def delivered_to(self) -> list[str]:
        """Recipients the relay took responsibility for (RCPT 2xx and DATA 2xx)."""
        if self.data is None or self.data.code >= 300:
            return []
        return [rcpt for rcpt, reply in self.rcpts.items() if reply.code < 300]

    @property
    def accepted(self) -> bool:
        return bool(self.delivered_to)

    def first_refusal(self) -> Reply | None:
        for reply in (self.mail, *self.rcpts.values(), self.data):
            if reply is not None and reply.code >= 400:
                return reply
        return None


def tls_context() -> ssl.SSLContext:
    """The test Postfix has a self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@contextmanager
def smtp_session(username: str | None, password: str | None, *, port: int = SUBMISSION_PORT,
                 starttls: bool = True, timeout: float = 60) -> Iterator[smtplib.SMTP]:
    """A connected session (after STARTTLS and AUTH when asked for)."""
    client = smtplib.SMTP(SUBMISSION_HOST, port, local_hostname="shop.client.test",
                          timeout=timeout)
    try:
        client.ehlo()
        if starttls:
            client.starttls(context=tls_context())
            client.ehlo()
        if username is not None and password is not None:
            client.login(username, password)
        yield client
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


def transact(client: smtplib.SMTP, mail_from: str, rcpt_tos: Sequence[str],
             message: bytes) -> Submission:
    """MAIL, RCPT for each recipient, DATA when one was accepted; RSET after a refusal."""
    code, text = client.mail(mail_from)
    result = Submission(mail=Reply(code, text.decode(errors="replace")))
    if code >= 300:
        client.rset()
        return result
    for rcpt in rcpt_tos:
        code, text = client.rcpt(rcpt)
        result.rcpts[rcpt] = Reply(code, text.decode(errors="replace"))
    if not any(reply.code < 300 for reply in result.rcpts.values()):
        client.rset()
        return result
    code, text = client.data(message)
    result.data = Reply(code, text.decode(errors="replace"))
    if code >= 300:
        client.rset()
    return result


def submit(username: str, password: str, mail_from: str, rcpt_tos: Sequence[str],
           message: bytes, *, port: int = SUBMISSION_PORT) -> Submission:
    """One message in its own session over STARTTLS + AUTH."""
    with smtp_session(username, password, port=port) as client:
        return transact(client, mail_from, rcpt_tos, message)


def build_message(from_header: str, to: Sequence[str], subject: str = "Your order",
                  body: str = "Thank you for your order.\r\n",
                  extra_headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A small RFC 5322 message with CRLF line ends, as shops' libraries write them."""
    domain = from_header.rsplit("@", 1)[-1].strip(">")
    headers = [("From", from_header), ("To", ", ".join(to)), ("Subject", subject),
               ("Date", format_datetime(localtime())),
               ("Message-ID", f"<{uuid.uuid4().hex}@{domain}>"),
               ("MIME-Version", "1.0"), ("Content-Type", "text/plain; charset=utf-8"),
               *extra_headers]
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (head + "\r\n" + body).encode("utf-8")
