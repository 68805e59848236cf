"""A concurrent SMTP client for what smtp-source cannot do: STARTTLS + AUTH, several messages
per session, and the latency of every message as the client sees it."""

from __future__ import annotations

import smtplib
import ssl
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Login:
    username: str
    password: str


@dataclass
class ClientResult:
    sent: int = 0
    accepted: int = 0
    elapsed_s: float = 0.0
    failures: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # MAIL FROM to 250 after DATA
    phases_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, phase: str, started: float) -> float:
        now = time.perf_counter()
        with self._lock:
            self.phases_ms[phase].append((now - started) * 1000)
        return now


def drive(port: int, *, sessions: int, per_session: int, message: bytes, sender: str,
          recipient: str, login: Login | None = None, pause: float = 0.0,
          rounds: int = 1) -> ClientResult:
    """`sessions` concurrent clients, each opening `rounds` sessions one after the other,
    of `per_session` messages each (CRLF `message`). rounds > 1 with per_session = 1 is what
    most shop software does: a new connection, STARTTLS and AUTH for every mail."""
    result = ClientResult()
    context = _tls_context()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=sessions, thread_name_prefix="smtp") as pool:
        for future in [pool.submit(_client, port, rounds, per_session, message, sender,
                                   recipient, login, pause, result, context)
                       for _ in range(sessions)]:
            future.result()
    result.elapsed_s = time.perf_counter() - started
    return result


def _tls_context() -> ssl.SSLContext:
    """One context for every session: the bench instance's certificate is self-signed, so no
    CA store to load (create_default_context() per session loaded it each time, about as
    much client CPU as the handshake itself, on the cores the servers measured share). No
    session is resumed: each session starts with a full handshake, as a shop's does."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _client(port: int, rounds: int, count: int, message: bytes, sender: str, recipient: str,
            login: Login | None, pause: float, result: ClientResult,
            context: ssl.SSLContext) -> None:
    for _ in range(rounds):
        _session(port, count, message, sender, recipient, login, pause, result, context)


def _session(port: int, count: int, message: bytes, sender: str, recipient: str,
             login: Login | None, pause: float, result: ClientResult,
             context: ssl.SSLContext) -> None:
    mark = time.perf_counter()
    try:
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=120)
        smtp.ehlo("client.bench.test")
        mark = result.add("connect + EHLO", mark)
        if login is not None:
            smtp.starttls(context=context)
            smtp.ehlo("client.bench.test")
            mark = result.add("STARTTLS + EHLO", mark)
            smtp.login(login.username, login.password)
            mark = result.add("AUTH", mark)
    except (smtplib.SMTPException, OSError) as exc:
        with result._lock:
            result.sent += count
            result.failures.append(f"session set-up: {exc!r}")
        return
    try:
        for _ in range(count):
            _send_one(smtp, message, sender, recipient, result)
            if pause:
                time.sleep(pause)
        mark = time.perf_counter()
        smtp.quit()
        result.add("QUIT", mark)
    except (smtplib.SMTPException, OSError) as exc:
        with result._lock:
            result.failures.append(f"session: {exc!r}")


def _send_one(smtp: smtplib.SMTP, message: bytes, sender: str, recipient: str,
              result: ClientResult) -> None:
    started = time.perf_counter()
    with result._lock:
        result.sent += 1
    try:
        smtp.sendmail(sender, [recipient], message)
    except smtplib.SMTPException as exc:
        with result._lock:
            result.failures.append(repr(exc))
        smtp.rset()
        return
    elapsed = (time.perf_counter() - started) * 1000
    with result._lock:
        result.accepted += 1
        result.latencies_ms.append(elapsed)
        result.phases_ms["message (MAIL..DATA 250)"].append(elapsed)
