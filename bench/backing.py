"""The benchmark's own PostgreSQL database, Redis key space, txrelay configuration and account."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.procs import BenchFailure, free_port, run
from txrelay.config import Config, MetricsConfig, load_config, render_toml
from txrelay.kek import generate_kek, write_kek_file
from txrelay.store import database

# The venv whose txrelay (and py-spy) the bench runs: the one running it, unless named.
VENV_BIN = Path(os.environ.get("BENCH_VENV_BIN", Path(sys.executable).parent))
TXRELAY = str(VENV_BIN / "txrelay")
ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# Never DB 0 (production-like data) nor 9 (the test suite); keys carry a per-run prefix and
# are deleted one by one at the end, the DB is never flushed.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
BENCH_DOMAIN = "bench.txrelay.example"
LIST_HELP = "https://bench.txrelay.example/help"
SELECTOR = "txbench"
QUOTA_BLOCK = 10_000_000  # booked: the account is paid, so no demo rate limit applies


class BenchDatabase:
    """A database created for this run on the shared PostgreSQL, migrated, dropped at the end."""

    def __init__(self) -> None:
        self.name = f"txrelay_bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.url = ADMIN_DSN.rsplit("/", 1)[0] + "/" + self.name

    def create(self) -> None:
        try:
            with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
                admin.execute(f'CREATE DATABASE "{self.name}"')
        except psycopg.OperationalError as exc:
            raise BenchFailure(f"PostgreSQL is not reachable at {ADMIN_DSN} ({exc}); "
                               "bench/run.sh starts it") from exc
        with psycopg.connect(self.url) as conn:
            database.migrate(conn)

    def drop(self) -> None:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def public_key(self, domain: str, selector: str) -> str:
        with psycopg.connect(self.url) as conn:
            row = conn.execute(
                "SELECT k.public_key_b64 FROM sending_domains d JOIN dkim_keys k"
                " ON k.id = d.dkim_key_id WHERE d.domain = %s AND k.selector = %s",
                (domain, selector)).fetchone()
        if row is None:
            raise BenchFailure(f"no DKIM key for {selector}._domainkey.{domain}")
        return str(row[0])

    def ledger_rows(self) -> int:
        with psycopg.connect(self.url) as conn:
            row = conn.execute("SELECT count(*) FROM ledger").fetchone()
        return int(row[0]) if row else 0


def shared_service_pids() -> dict[str, tuple[int, ...]]:
    """The PostgreSQL postmaster (the parent of a backend) and the Redis server the bench
    uses: their CPU counts the other databases' and clients' work too, which on an idle
    machine is none."""
    with psycopg.connect(ADMIN_DSN) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    backend = int(row[0]) if row else 0
    stat = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        redis_pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return {"postgresql": (int(stat[1]),), "redis": (redis_pid,)}


def clean_redis(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    for key in client.scan_iter(match=f"{prefix}:*", count=500):
        client.delete(key)
    client.close()


def write_config(root: Path, database_url: str) -> tuple[Path, Config]:
    """txrelay.toml for the bench: own socket directory, own Dovecot, metrics on a free port."""
    base = load_config(None, environ={})
    milter = dataclasses.replace(base.milter, socket=f"unix:{root}/milter/txrelay.sock",
                                 policy_refresh_seconds=2.0)
    dovecot = dataclasses.replace(
        base.dovecot, config_dir=str(root / "dovecot"), base_dir=str(root / "dovecot-run"),
        auth_socket=str(root / "dovecot-run" / "auth-postfix"),
        log_path=str(root / "dovecot.log"),
        passdb_file=str(root / "dovecot-passdb" / "passwd"))
    # The run's own key-encryption key: the machine may have none in /etc/txrelay (the
    # bench's DKIM key is sealed with it and dropped with the database).
    kek_file = root / "kek"
    if not kek_file.exists():
        write_kek_file(kek_file, generate_kek())
    config = dataclasses.replace(
        base, milter=milter, dovecot=dovecot,
        database=dataclasses.replace(base.database, url=database_url, pool_max=20,
                                     kek_file=str(kek_file)),
        redis=dataclasses.replace(base.redis, url=REDIS_URL,
                                  key_prefix=f"txbench{secrets.token_hex(3)}"),
        smtp=dataclasses.replace(base.smtp, host="127.0.0.1", port=free_port()),
        tracker=dataclasses.replace(base.tracker, log_path=str(root / "postfix" / "maillog")),
        metrics=MetricsConfig(milter_listen="", tracker_listen=""),
        # The bench runs no DNS server its domain could publish a DKIM record in.
        dkim=dataclasses.replace(base.dkim, require_published=False))
    (root / "milter").mkdir(mode=0o755, exist_ok=True)
    path = root / "txrelay.toml"
    path.write_text(render_toml(config))
    return path, load_config(path, required=True, environ={})


@dataclass(frozen=True)
class Sender:
    """The account, domain and connection the bench sends as."""

    username: str
    password: str
    domain: str
    selector: str

    @property
    def address(self) -> str:
        return f"shop@{self.domain}"


def provision(config_file: Path) -> Sender:
    """Through the CLI, as an operator would: account, signing domain, connection, quota."""

    def cli(*args: str) -> Any:
        return json.loads(run([TXRELAY, "--config", str(config_file), "--json", *args]).stdout)

    cli("account", "create", "bench", "--admin-email", "admin@bench.txrelay.example")
    cli("domain", "add", "bench", BENCH_DOMAIN, "--list-help", LIST_HELP, "--selector", SELECTOR)
    connection = cli("connection", "create", "bench", "shop", "--domain", BENCH_DOMAIN)
    cli("quota", "book", "bench", "--amount", str(QUOTA_BLOCK))
    return Sender(connection["username"], connection["password"], BENCH_DOMAIN, SELECTOR)


def probe_latency(database_url: str, samples: int = 50) -> dict[str, float]:
    """Median round trips of the backing services right now: one PostgreSQL INSERT + COMMIT
    (an fsync), and one Redis PING. The milter's end of message waits on both."""
    commits, pings = [], []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_probe (n int)")
        for n in range(samples):
            started = time.perf_counter()
            with conn.transaction():
                conn.execute("INSERT INTO bench_probe VALUES (%s)", (n,))
            commits.append((time.perf_counter() - started) * 1000)
        conn.execute("DROP TABLE bench_probe")
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    for _ in range(samples):
        started = time.perf_counter()
        client.ping()
        pings.append((time.perf_counter() - started) * 1000)
    client.close()
    return {"postgresql_commit_ms_p50": round(statistics.median(commits), 2),
            "postgresql_commit_ms_max": round(max(commits), 2),
            "redis_ping_ms_p50": round(statistics.median(pings), 3)}
