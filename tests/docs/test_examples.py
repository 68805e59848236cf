"""The command examples of README.md and docs/admin-guide.md, run against the real services.

Conventions for writers are in tests/docs/examples.py. Each document runs as one scenario
on a relay node of its own: a fresh database, this run's Redis DB, a temporary directory
standing in for /etc/txrelay and the other paths txrelay writes, and a clock fixed at
2026-11-27 22:48 UTC (so selectors and dates in the docs are real ones).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from click.testing import CliRunner

from tests.conftest import ADMIN_DSN
from tests.docs.examples import Example, matches, mismatch_report, read_blocks
from txrelay import config as config_module
from txrelay.cli import context
from txrelay.cli import init as init_command
from txrelay.cli.main import main
from txrelay.clock import FixedClock

REPO = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 11, 27, 22, 48, tzinfo=dt.UTC)
DOC_DATABASE_URL = "postgresql://txrelay@127.0.0.1/txrelay"
DOC_REDIS_URL = "redis://127.0.0.1:6379/0"
DOC_CONFIG = "/etc/txrelay/txrelay.toml"
# Where txrelay writes on a real node; in the tests these live under a temporary directory.
SANDBOXED = ("/etc/txrelay", "/var/lib/txrelay", "/run/txrelay", "/var/log/txrelay",
             "/var/spool/postfix")


class Start(enum.Enum):
    """How the node looks when a document's first block runs."""

    BARE = "nothing set up: the document runs 'txrelay init' itself"
    INITIALISED = "after the README's install section: 'txrelay init' has run"


DOCUMENTS = {"README.md": Start.INITIALISED, "docs/admin-guide.md": Start.BARE}


class Node:
    """One relay node for one document: maps the docs' paths and URLs to the test's."""

    def __init__(self, root: Path, database_url: str, redis_url: str,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.monkeypatch = monkeypatch
        self.to_test_pairs = [(DOC_DATABASE_URL, database_url), (DOC_REDIS_URL, redis_url),
                              *((path, f"{root}{path}") for path in SANDBOXED)]

    def to_test(self, text: str) -> str:
        for documented, actual in self.to_test_pairs:
            text = text.replace(documented, actual)
        return text

    def to_doc(self, text: str) -> str:
        for documented, actual in self.to_test_pairs:
            text = text.replace(actual, documented)
        return text

    def run(self, example: Example) -> tuple[int, str]:
        """(exit status, output as the docs show it) of one example."""
        argv = [self.to_test(arg) for arg in example.argv]
        if argv[0] == "export":
            for assignment in argv[1:]:
                name, _, value = assignment.partition("=")
                self.monkeypatch.setenv(name, value)
            return 0, ""
        if argv[0] == "unset":
            for name in argv[1:]:
                self.monkeypatch.delenv(name, raising=False)
            return 0, ""
        if argv[0] != "txrelay":
            pytest.fail(f"{example.where}: only txrelay, export and unset commands run in a "
                        "```console block; show this one in a ```sh block, or mark the block "
                        "<!-- not run: REASON -->", pytrace=False)
        status, output = run_main(argv[1:], self.monkeypatch)
        return status, self.to_doc(output)

    def sandboxed_defaults(self) -> config_module.Config:
        """Config() with its default paths moved under the root, for 'txrelay init'."""
        defaults = config_module.Config()
        sections: dict[str, Any] = {}
        for name in config_module.SECTIONS:
            section: Any = getattr(defaults, name)
            moved = {f.name: self.to_test(value) for f in dataclasses.fields(section)
                     if isinstance(value := getattr(section, f.name), str)}
            sections[name] = dataclasses.replace(section, **moved)
        return dataclasses.replace(defaults, **sections)


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """main() as the console script runs it; stdout and stderr interleaved as on a terminal."""
    runner = CliRunner()
    with runner.isolation() as (_, _, output), monkeypatch.context() as patch:
        patch.setattr(sys, "argv", ["txrelay", *args])
        try:
            main()
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        return status, output.getvalue().decode()


@pytest.fixture()
def fresh_database_url() -> Iterator[str]:
    """An empty database (no schema) for one document, dropped afterwards."""
    name = f"txrelay_docs_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def node(tmp_path: Path, fresh_database_url: str, redis_url: str,
         monkeypatch: pytest.MonkeyPatch) -> Node:
    client = redis.Redis.from_url(redis_url)
    stale = list(client.scan_iter(match=f"{config_module.RedisConfig().key_prefix}*"))
    if stale:  # the other document's node used the same default key prefix
        client.delete(*stale)
    client.close()
    node = Node(tmp_path, fresh_database_url, redis_url, monkeypatch)
    monkeypatch.setattr(context, "default_clock", lambda: FixedClock(NOW))
    monkeypatch.setattr(init_command, "Config", node.sandboxed_defaults)
    monkeypatch.setattr(init_command, "DEFAULT_CONFIG_PATH", Path(node.to_test(DOC_CONFIG)))
    # The shell of the docs has no TXRELAY_* variables but those its examples export (the
    # test run's own, TXRELAY_VENV or TXRELAY_TEST_*, would be unknown settings to txrelay).
    for name in [name for name in os.environ if name.startswith("TXRELAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TXRELAY_CONFIG", node.to_test(DOC_CONFIG))
    return node


def shows_error(example: Example) -> bool:
    return any(line.startswith(("txrelay: error:", "Error:")) for line in example.expected)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_documented_examples_print_what_the_docs_show(document: str, node: Node) -> None:
    blocks = read_blocks(document, (REPO / document).read_text(encoding="utf-8"))
    if DOCUMENTS[document] is Start.INITIALISED:
        status, output = run_main(["init", "--database-url", node.to_test(DOC_DATABASE_URL),
                                   "--redis-url", node.to_test(DOC_REDIS_URL),
                                   "--smtp-host", "relay.example.net"], node.monkeypatch)
        assert status == 0, output
    ran = 0
    for block in blocks:
        if block.not_run:
            continue
        for example in block.examples:
            status, printed = node.run(example)
            if not matches(example.expected, printed):
                pytest.fail(mismatch_report(example, printed, status), pytrace=False)
            if status != 0 and not shows_error(example):
                pytest.fail(f"{example.where}: `$ {example.command}` failed (exit status "
                            f"{status}) where the documentation shows it succeed", pytrace=False)
            ran += 1
    assert ran, f"{document} has no console example that runs"
