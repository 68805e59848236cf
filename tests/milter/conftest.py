"""Drives RelayMilter through pymilter's TestCtx with the run's PostgreSQL and Redis behind it."""

from __future__ import annotations

import dataclasses
import email.utils
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import Milter
import psycopg
import pytest
from Milter.testctx import TestCtx

from tests.store.builders import Tenant, make_tenant
from txrelay.clock import SystemClock
from txrelay.config import Config, DatabaseConfig
from txrelay.milter.relay import RelayMilter
from txrelay.milter.runtime import Runtime, open_runtime
from txrelay.store import database

BODY = b"Hello,\r\n\r\nyour order 42 has shipped.\r\n-- \r\nThe shop\r\n"


class RecordingCtx(TestCtx):  # type: ignore[misc]
    """TestCtx that records header changes with their indexes, as Postfix would apply them."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[tuple[str, str, int, str]] = []

    def addheader(self, field: str, value: str, idx: int) -> None:
        self.changes.append(("add", field, idx, value))

    def chgheader(self, field: str, idx: int, value: str) -> None:
        self.changes.append(("chg", field, idx, value))


@dataclass
class Outcome:
    """What the client would have seen, and what Postfix would have queued."""

    mail: int
    mail_reply: tuple[Any, ...] | None
    rcpt: list[tuple[int, tuple[Any, ...] | None]] = field(default_factory=list)
    eom: int | None = None
    eom_reply: tuple[Any, ...] | None = None
    changes: list[tuple[str, str, int, str]] = field(default_factory=list)
    queued: bytes = b""

    def added(self, name: str) -> list[str]:
        return [value for kind, field_name, _, value in self.changes
                if kind == "add" and field_name == name]


@dataclass
class Driver:
    """Sends messages through one milter connection (one TestCtx = one SMTP session)."""

    runtime: Runtime
    ctx: RecordingCtx = field(default_factory=RecordingCtx)

    def __post_init__(self) -> None:
        Milter.factory = lambda: RelayMilter(self.runtime)
        self.ctx._connect()

    @property
    def milter(self) -> RelayMilter:
        return self.ctx.getpriv()  # type: ignore[no-any-return]

    def send(self, tenant: Tenant | None, *, sender: str | None = None,
             recipients: tuple[str, ...] = ("alice@customer.example",),
             headers: list[tuple[str, bytes]] | None = None, body: bytes = BODY,
             auth: str | None = "", queue_id: str = "4QTEST1") -> Outcome:
        ctx = self.ctx
        ctx._macros.clear()
        ctx.changes = []
        ctx._reply = None
        username = tenant.username if tenant and auth == "" else auth
        if username:
            ctx._setsymval("{auth_authen}", username)
        ctx._setsymval("{i}", queue_id)
        if sender is None:
            sender = f"orders@{tenant.domain}" if tenant else "orders@nowhere.example"
        outcome = Outcome(ctx._envfrom(f"<{sender}>"), ctx._reply)
        if outcome.mail != Milter.CONTINUE:
            return outcome
        for rcpt in recipients:
            ctx._reply = None
            outcome.rcpt.append((ctx._envrcpt(f"<{rcpt}>"), ctx._reply))
        if not any(rc == Milter.CONTINUE for rc, _ in outcome.rcpt):
            ctx._priv.abort()  # Postfix aborts the transaction, not the session
            return outcome
        if headers is None:
            headers = default_headers(tenant.domain if tenant else "nowhere.example")
        ctx._reply = None
        for name, value in headers:
            assert ctx._priv.header_bytes(name, value) in (Milter.CONTINUE, Milter.NOREPLY)
        for start in range(0, len(body), 65536):
            assert ctx._priv.body(body[start:start + 65536]) in (Milter.CONTINUE,
                                                                  Milter.NOREPLY)
        outcome.eom = ctx._eom()
        outcome.eom_reply = ctx._reply
        outcome.changes = list(ctx.changes)
        outcome.queued = queue(headers, ctx.changes, body)
        return outcome


def default_headers(domain: str) -> list[tuple[str, bytes]]:
    """Headers as Postfix hands them to a milter: no space after the colon, LF folding."""
    return [
        ("From", f"Shop <orders@{domain}>".encode()),
        ("To", b"Alice <alice@customer.example>"),
        ("Subject", b"Your order 42\n\thas shipped"),
        ("Date", email.utils.formatdate().encode()),
        ("MIME-Version", b"1.0"),
        ("Content-Type", b"text/plain; charset=utf-8"),
    ]


def queue(headers: list[tuple[str, bytes]], changes: list[tuple[str, str, int, str]],
          body: bytes) -> bytes:
    """The message as Postfix queues it: its own Received: on top (hidden from the milter but
    counted by insheader indexes), chgheader '' deletes the n-th instance, then adds."""
    fields: list[tuple[str, bytes] | None] = [("Received", b"from client by relay")]
    fields += list(headers)
    for kind, name, idx, value in changes:
        if kind == "chg" and value == "":
            instances = [i for i, f in enumerate(fields) if f and f[0].lower() == name.lower()]
            fields[instances[idx - 1]] = None
    live = [f for f in fields if f is not None]
    for kind, name, idx, value in changes:
        if kind == "add" and idx < 0:
            live.append((name, value.encode()))
        elif kind == "add":
            live.insert(idx, (name, value.encode()))
    lines = [name.encode() + b": " + value.replace(b"\n", b"\r\n") + b"\r\n"
             for name, value in live]
    return b"".join(lines) + b"\r\n" + body


@pytest.fixture(scope="session")
def runtime(config: Config) -> Iterator[Runtime]:
    test_config = dataclasses.replace(
        config, milter=dataclasses.replace(config.milter, node_name="test-node"))
    rt = open_runtime(test_config, SystemClock())
    yield rt
    rt.close()


@pytest.fixture()
def tenant(db: psycopg.Connection, unique: str, runtime: Runtime) -> Tenant:
    made = make_tenant(db, unique)
    runtime.policy.refresh()
    return made


@pytest.fixture()
def tenant_factory(db: psycopg.Connection, unique: str,
                   runtime: Runtime) -> Callable[..., Tenant]:
    counter = iter(range(1000))

    def make(**options: Any) -> Tenant:
        made = make_tenant(db, f"{unique}{next(counter)}", **options)
        runtime.policy.refresh()
        return made

    return make


@pytest.fixture()
def driver(runtime: Runtime) -> Driver:
    return Driver(runtime)


# A PostgreSQL nobody answers on: port 1 refuses at once, so outage tests do not wait.
DEAD_DATABASE = DatabaseConfig(url="postgresql://postgres@127.0.0.1:1/none", timeout_ms=300)


@pytest.fixture()
def dead_pool() -> Iterator[object]:
    """A connection pool on a PostgreSQL that is down."""
    pool = database.open_pool(DEAD_DATABASE, "dead")
    pool.open(wait=False)
    yield pool
    pool.close()
