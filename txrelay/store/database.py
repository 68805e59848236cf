"""Opens PostgreSQL connections and applies the numbered SQL migrations."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from txrelay.config import DatabaseConfig
from txrelay.errors import ServiceUnavailable

log = logging.getLogger("txrelay.database")

MIGRATION_LOCK_KEY = 0x7478_7265_6C61_79  # "txrelay": one migrator at a time across nodes

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
SELECT_APPLIED = "SELECT version FROM schema_migrations ORDER BY version"
INSERT_APPLIED = "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """The migrations shipped with the package, in order (files NNNN_name.sql)."""
    folder = resources.files("txrelay.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def daemon_role(config: DatabaseConfig) -> str | None:
    """The role of [database] milter_url when it is another role than url's, else None."""
    if not config.milter_url:
        return None
    role = unquote(urlsplit(config.milter_url).username or "")
    return role if role and role != unquote(urlsplit(config.url).username or "") else None


def grant_daemon_role(conn: psycopg.Connection, config: DatabaseConfig) -> str | None:
    """Give the daemons' role what it needs on every table there is now (migration 0015's
    txrelay_grant_daemon_role); run after migrating, as the owner. The role granted, or None
    when milter_url names no other role or the role does not exist (a DBA's to make)."""
    role = daemon_role(config)
    if role is None:
        return None
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if exists is None:
        return None
    conn.execute("SELECT txrelay_grant_daemon_role(%s)", (role,))
    return role


SELECT_SUPERUSER = (
    "SELECT current_user AS role, rolsuper FROM pg_roles WHERE rolname = current_user"
)


class SuperuserWarning:
    """Logs one WARNING per daemon process when its database role is a superuser (it could
    then change or read anything: accounts, keys, logins), naming the fix. A warning, not a
    refusal: an old installation keeps relaying. Checked on the first connection that
    answers, so a start while PostgreSQL is away waits for nothing."""

    def __init__(self, daemon: str) -> None:
        self.daemon = daemon
        self._checked = False
        self._lock = threading.Lock()

    def __call__(self, conn: psycopg.Connection) -> None:
        with self._lock:
            if self._checked:
                return
            try:
                row = conn.execute(SELECT_SUPERUSER).fetchone()
                if not conn.autocommit:
                    conn.rollback()  # a pool's connection must be handed back idle
            except psycopg.Error:
                return  # checked with the next connection
            self._checked = True
        if row is None:
            return
        role, superuser = (row["role"], row["rolsuper"]) if isinstance(row, dict) else row
        if superuser:
            log.warning(
                "event=database_superuser daemon=%s role=%s: the %s connects to PostgreSQL as "
                "a superuser, which may read and change everything (accounts, keys, logins); "
                "give it the role txrelay init makes (txrelay_milter, in [database] milter_url; "
                "'txrelay init' or docs/deployment.md), or ALTER ROLE %s NOSUPERUSER",
                self.daemon,
                role,
                self.daemon,
                role,
            )


def connect(config: DatabaseConfig, *, autocommit: bool = False) -> psycopg.Connection:
    """One connection, failing fast with an admin-readable message when PostgreSQL is away."""
    try:
        return psycopg.connect(
            config.url,
            autocommit=autocommit,
            row_factory=dict_row,  # type: ignore[arg-type]
            connect_timeout=max(1, config.timeout_ms // 1000),
            options=f"-c statement_timeout={config.timeout_ms * 4}",
        )
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
        raise ServiceUnavailable(
            f"cannot connect to PostgreSQL at {_redacted(config.url)}: {reason}; check that "
            "it runs and that [database] url (or TXRELAY_DATABASE_URL) is right"
        ) from exc


def open_pool(
    config: DatabaseConfig, name: str, superuser_warning: SuperuserWarning | None = None
) -> ConnectionPool:
    """A thread-safe pool for the milter and the tracker; opened without waiting for PG.
    `superuser_warning` sees each new connection (it checks only the first that answers)."""
    return ConnectionPool(
        config.url,
        configure=superuser_warning,
        min_size=config.pool_min,
        max_size=config.pool_max,
        timeout=config.timeout_ms / 1000,
        name=name,
        kwargs={
            "row_factory": dict_row,
            "connect_timeout": max(1, config.timeout_ms // 1000),
            "options": f"-c statement_timeout={config.timeout_ms}",
        },
        open=False,
    )


def _redacted(url: str) -> str:
    """The URL without a password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}@{host}"


def applied_versions(conn: psycopg.Connection) -> list[int]:
    conn.execute(CREATE_MIGRATIONS_TABLE)
    return [row["version"] for row in conn.execute(SELECT_APPLIED)]  # type: ignore[call-overload]


def migrate(conn: psycopg.Connection) -> list[Migration]:
    """Apply every migration not yet applied, each in its own transaction; idempotent."""
    done: list[Migration] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        applied = set(applied_versions(conn))
        for migration in available_migrations():
            if migration.version in applied:
                continue
            conn.execute(migration.sql.encode())
            conn.execute(INSERT_APPLIED, (migration.version, migration.name))
            done.append(migration)
    return done


@contextlib.contextmanager
def transaction(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """One command, one transaction: nothing half-written when something fails."""
    with conn.transaction():
        yield conn
