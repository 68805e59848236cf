"""Runs `txrelay` in-process through its real entry point (main), against the run's services."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from tests.harness.dns import DnsServer
from txrelay.cli import context
from txrelay.cli.main import main
from txrelay.clock import FixedClock


@dataclass(frozen=True)
class CliRun:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.exit_code == 0, self.stderr
        return json.loads(self.stdout)

    @property
    def error(self) -> str:
        """The one-line error main() prints, without its 'txrelay: error: ' prefix."""
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, f"expected one error line, got {self.stderr!r}"
        assert "Traceback" not in self.stderr
        return lines[0].removeprefix("txrelay: error: ")


Txrelay = Callable[..., CliRun]
# The `db` fixture's connection: rows are dicts (psycopg's dict_row).
DictConnection = psycopg.Connection[dict[str, Any]]


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch) -> CliRun:
    """main() exactly as the console script runs it: errors become one line + exit 1.

    Any exception that is not turned into a message escapes and fails the test, which
    is how "no traceback" is proven.
    """
    runner = CliRunner()
    with runner.isolation() as (out, err, _), monkeypatch.context() as patch:
        patch.setattr(sys, "argv", ["txrelay", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return CliRun(code, stdout, stderr)


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> FixedClock:
    """The CLI's clock, fixed; tests move it to check booking and expiry dates."""
    fixed = FixedClock(dt.datetime(2026, 11, 3, 9, 30, tzinfo=dt.UTC))
    monkeypatch.setattr(context, "default_clock", lambda: fixed)
    return fixed


@pytest.fixture()
def txrelay(config_file: Path, monkeypatch: pytest.MonkeyPatch, clock: FixedClock) -> Txrelay:
    """txrelay("account", "list", "--json") → CliRun, with --config set to the run's file."""

    def run(*args: str) -> CliRun:
        return run_main(["--config", str(config_file), *args], monkeypatch)

    return run


@pytest.fixture()
def account(txrelay: Txrelay, unique: str) -> str:
    name = f"Acme {unique}"
    result = txrelay("account", "create", name, "--admin-email", f"ops@{unique}.example")
    assert result.exit_code == 0, result.stderr
    return name


@pytest.fixture()
def domain(txrelay: Txrelay, account: str, unique: str) -> str:
    name = f"shop-{unique}.example"
    result = txrelay("domain", "add", account, name, "--list-help", "https://help.example/")
    assert result.exit_code == 0, result.stderr
    return name


def one_row(db: DictConnection, sql: str, params: tuple[Any, ...]) -> dict[str, Any]:
    row = db.execute(sql, params).fetchone()  # type: ignore[arg-type]
    assert row is not None, (sql, params)
    return row


def zone_strings(output: str) -> tuple[str, str]:
    """(record name, TXT value) parsed back from the BIND line the CLI printed."""
    line = next(line for line in output.splitlines() if " IN TXT " in line)
    name = line.split()[0].rstrip(".")
    value = "".join(re.findall(r'"([^"]*)"', line))
    return name, value


RELAY_INCLUDE = "_spf.relay.example"
RELAY_ADDRESSES = ("192.0.2.10", "2001:db8::10")


@pytest.fixture()
def zone(dns_server: DnsServer, monkeypatch: pytest.MonkeyPatch) -> DnsServer:
    """The loopback NSD (tests/harness/dns.py) as txrelay's only resolver, and a relay that
    sends from RELAY_ADDRESSES and publishes them under RELAY_INCLUDE."""
    monkeypatch.setenv("TXRELAY_DNS_RESOLVER", dns_server.address)
    monkeypatch.setenv("TXRELAY_DNS_SPF_INCLUDE", RELAY_INCLUDE)
    monkeypatch.setenv("TXRELAY_DNS_RELAY_ADDRESSES", ", ".join(RELAY_ADDRESSES))
    return dns_server


def printed_records(txrelay: Txrelay, domain: str) -> dict[str, list[tuple[str, str]]]:
    """What `domain dns --json` says to publish, as DnsServer.serve() takes it, plus the
    relay's own include record."""
    records: dict[str, list[tuple[str, str]]] = {
        RELAY_INCLUDE: [("TXT", "v=spf1 " + " ".join(
            f"ip{'6' if ':' in a else '4'}:{a}" for a in RELAY_ADDRESSES) + " -all")]}
    for record in txrelay("domain", "dns", domain, "--json").json()["records"]:
        if record["value"] is not None:
            records.setdefault(record["name"], []).append((record["type"], record["value"]))
    return records
