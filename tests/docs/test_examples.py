"""The command examples of README.md and docs/admin-guide.md, run against the real services.

Conventions for writers are in tests/docs/examples.py. Each document runs as one scenario
on a relay node of its own: a fresh database, this run's Redis DB, a temporary directory
standing in for /etc/txrelay and the other paths txrelay writes, a DNS server (NSD on
loopback, tests/harness/dns.py) the `<!-- publish: … -->` lines fill, and a clock fixed at
2026-11-27 22:48 UTC (so selectors and dates in the docs are real ones).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import psycopg
import pytest
import redis
from click.testing import CliRunner

from tests.conftest import ADMIN_DSN
from tests.docs.examples import Block, Example, matches, mismatch_report, read_blocks
from tests.harness.dns import DnsServer, Record
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
                 monkeypatch: pytest.MonkeyPatch, dns: DnsServer) -> None:
        self.root = root
        self.monkeypatch = monkeypatch
        self.dns = dns
        self.now = NOW  # what the clock says while a block runs
        self.zone: dict[str, dict[str, list[Record]]] = {}  # domain → its published records
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

    def publish(self, domain: str, block: Block) -> None:
        """DNS holds, from now on, exactly the records `domain dns DOMAIN` prints now for
        DOMAIN, besides those published for other domains."""
        status, output = run_main(["domain", "dns", domain, "--json"], self.monkeypatch)
        if status != 0:
            pytest.fail(f"{block.path}:{block.line}: publish: `txrelay domain dns {domain}` "
                        f"failed (exit status {status}):\n{output}", pytrace=False)
        records: dict[str, list[Record]] = {}
        for record in json.loads(output)["records"]:
            if record["value"] is not None:  # txrelay cannot say what it must hold
                records.setdefault(record["name"], []).append((record["type"], record["value"]))
        self.zone[domain] = records
        served: dict[str, list[Record]] = {}
        for published in self.zone.values():
            for name, values in published.items():
                served.setdefault(name, []).extend(values)
        self.dns.serve(served)

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
def node(tmp_path: Path, fresh_database_url: str, redis_url: str, dns_server: DnsServer,
         monkeypatch: pytest.MonkeyPatch) -> Node:
    client = redis.Redis.from_url(redis_url)
    stale = list(client.scan_iter(match=f"{config_module.RedisConfig().key_prefix}*"))
    if stale:  # the other document's node used the same default key prefix
        client.delete(*stale)
    client.close()
    node = Node(tmp_path, fresh_database_url, redis_url, monkeypatch, dns_server)
    monkeypatch.setattr(context, "default_clock", lambda: FixedClock(node.now))
    monkeypatch.setattr(init_command, "Config", node.sandboxed_defaults)
    monkeypatch.setattr(init_command, "DEFAULT_CONFIG_PATH", Path(node.to_test(DOC_CONFIG)))
    # The shell of the docs has no TXRELAY_* variables but those its examples export (the
    # test run's own, TXRELAY_VENV or TXRELAY_TEST_*, would be unknown settings to txrelay).
    for name in [name for name in os.environ if name.startswith("TXRELAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TXRELAY_CONFIG", node.to_test(DOC_CONFIG))
    monkeypatch.setenv("TXRELAY_DNS_RESOLVER", dns_server.address)
    return node


def shows_error(example: Example) -> bool:
    return any(line.startswith(("txrelay: error:", "Error:")) for line in example.expected)


def initialise(node: Node) -> None:
    """The node as the README's install section leaves it."""
    status, output = run_main(["init", "--database-url", node.to_test(DOC_DATABASE_URL),
                               "--redis-url", node.to_test(DOC_REDIS_URL),
                               "--smtp-host", "relay.example.net"], node.monkeypatch)
    assert status == 0, output


def run_document(node: Node, path: str, text: str) -> int:
    """Run every console block of a document in order; fail at the first example that
    prints something else than documented. Returns the number of examples run."""
    ran = 0
    for block in read_blocks(path, text):
        if block.not_run:
            continue
        for domain in block.publish:
            node.publish(domain, block)
        node.now = block.clock or NOW
        for example in block.examples:
            status, printed = node.run(example)
            if not matches(example.expected, printed):
                pytest.fail(mismatch_report(example, printed, status), pytrace=False)
            if status != 0 and not shows_error(example):
                pytest.fail(f"{example.where}: `$ {example.command}` failed (exit status "
                            f"{status}) where the documentation shows it succeed", pytrace=False)
            ran += 1
    return ran


@pytest.mark.parametrize("document", DOCUMENTS)
def test_documented_examples_print_what_the_docs_show(document: str, node: Node) -> None:
    if DOCUMENTS[document] is Start.INITIALISED:
        initialise(node)
    ran = run_document(node, document, (REPO / document).read_text(encoding="utf-8"))
    assert ran, f"{document} has no console example that runs"


PUBLISHING = """
```console
$ export TXRELAY_DNS_RELAY_ADDRESSES=192.0.2.10
$ txrelay account create "Acme GmbH" --admin-email it@acme.example
...
$ txrelay domain add "Acme GmbH" acme.example --list-help https://acme.example/help
...
$ txrelay domain check acme.example
DKIM missing: no TXT record at txr202611._domainkey.acme.example; …
  fix: publish: txr202611._domainkey.acme.example. IN TXT …
SPF missing: …
  fix: …
DMARC missing: …
  fix: …
acme.example is pending: …
txrelay: error: acme.example is not ready: …
```

<!-- publish: the records `txrelay domain dns acme.example` prints -->
```console
$ txrelay domain check acme.example
DKIM ok: txr202611._domainkey.acme.example publishes the stored rsa key
SPF ok: …
DMARC ok: …
acme.example is published now: its live mail is signed and sent.
$ txrelay domain rotate-key acme.example
...
```

<!-- publish: the records `txrelay domain dns acme.example` prints -->
```console
$ txrelay domain switch-key acme.example
acme.example now signs with selector txr202611-2. …
```

<!-- clock: 2026-12-05 09:00 UTC -->
```console
$ txrelay domain retire-key acme.example txr202611
Retired the retiring key of acme.example (selector txr202611); …
```

<!-- publish: the records `txrelay domain dns acme.example` prints -->
```console
$ txrelay domain check acme.example
DKIM ok: txr202611-2._domainkey.acme.example publishes the stored rsa key
SPF ok: …
DMARC ok: …
```
"""


def _txt(node: Node, name: str) -> list[str]:
    query = dns.message.make_query(name, dns.rdatatype.TXT)
    answer = dns.query.udp(query, "127.0.0.1", port=node.dns.port, timeout=2)
    return [b"".join(rdata.strings).decode() for rrset in answer.answer for rdata in rrset]


def test_a_publish_line_puts_what_domain_dns_prints_into_the_documents_dns(node: Node) -> None:
    initialise(node)
    assert run_document(node, "publishing.md", PUBLISHING) == 9
    # The last publish replaced the domain's records: the retired key's record is gone.
    assert _txt(node, "txr202611._domainkey.acme.example.") == []
    assert _txt(node, "txr202611-2._domainkey.acme.example.")[0].startswith("v=DKIM1; k=rsa;")
    assert _txt(node, "acme.example.") == ["v=spf1 ip4:192.0.2.10 ~all"]


def test_a_check_shown_passing_without_a_publish_line_fails_the_document(node: Node) -> None:
    initialise(node)
    unpublished = PUBLISHING.replace(
        "<!-- publish: the records `txrelay domain dns acme.example` prints -->\n", "", 1)
    with pytest.raises(pytest.fail.Exception, match=r"publishing.md:\d+: `\$ txrelay domain "
                                                    r"check acme.example` printed something"):
        run_document(node, "publishing.md", unpublished)


def test_publishing_a_domain_the_node_does_not_have_fails_naming_the_line(node: Node) -> None:
    initialise(node)
    document = ("<!-- publish: the records `txrelay domain dns acme.example` prints -->\n"
                "```console\n$ txrelay domain list\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"guide.md:2: publish: `txrelay domain "
                                                    r"dns acme.example` failed"):
        run_document(node, "guide.md", document)
