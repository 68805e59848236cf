"""Private Redis and PostgreSQL for fault tests: stopped and started at will, never the
machine's shared instances."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg

from tests.harness.processes import (
    HarnessError,
    ManagedProcess,
    free_port,
    port_open,
    run,
    tail,
    wait_until,
)
from txrelay.config import DatabaseConfig
from txrelay.store import database

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"


class PrivateRedis:
    """redis-server on a free port, no persistence: a restart comes back empty."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        directory.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(directory)],
            directory / "redis.log")

    def start(self) -> None:
        self.process.start()
        wait_until(lambda: port_open(self.port), 10, "private redis", self.process.log)

    def stop(self) -> None:
        self.process.stop()
        wait_until(lambda: not port_open(self.port), 10, "private redis stop")


class PrivatePostgres:
    """A throw-away cluster (initdb + pg_ctl as user postgres) on a free port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.log_path = directory / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/txrelay"

    def create(self) -> None:
        self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.chown(self.directory, PG_USER, PG_USER)
        run([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", PG_USER,
             "--no-sync", "-E", "UTF8"], user=PG_USER, timeout=120)
        self.start()
        with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE txrelay")
        with database.connect(DatabaseConfig(url=self.url)) as conn:
            database.migrate(conn)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        done = run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                    str(self.log_path), "-w", "-t", "60", "start"], user=PG_USER, check=False)
        if done.returncode != 0:
            raise HarnessError(f"private PostgreSQL did not start\n{tail(self.log_path)}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                user=PG_USER, check=False)

    @property
    def running(self) -> bool:
        return port_open(self.port)
