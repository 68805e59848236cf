"""`txrelay apply` at the size of a real relay and through the real mail path (issue 14
item 1, Must show): 50 accounts, 100 domains and 150 connections from an empty database, the
second apply says "no changes", an edited file changes exactly what changed (shown first by
--dry-run), `export | apply --dry-run` shows no change; and a mail sent through a
connection apply created is delivered signed."""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.conftest import ADMIN_DSN
from tests.harness.fixtures import RelayStack
from tests.harness.processes import TXRELAY
from tests.harness.provision import dkim_tags, verify_dkim
from tests.harness.smtp import build_message, submit
from txrelay.store import database

pytestmark = pytest.mark.e2e


@pytest.fixture()
def own_database(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An empty migrated database of this test alone; the environment that points the
    txrelay command at it (and at a login file of its own)."""
    name = f"txrelay_apply_e2e_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url) as conn:
            database.migrate(conn)
        yield {**os.environ, "TXRELAY_DATABASE_URL": url, "TXRELAY_DATABASE_MILTER_URL": "",
               "TXRELAY_DOVECOT_PASSDB_FILE": str(tmp_path / "logins")}
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def txrelay(config_file: Path, env: dict[str, str] | None, *args: str,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TXRELAY, "--config", str(config_file), *args], env=env,
                          input=stdin, capture_output=True, text=True, timeout=600, check=False)


def big_file() -> dict[str, Any]:
    """50 accounts with 2 domains and 3 connections each; every tenth domain signs with RSA
    and Ed25519, the others with Ed25519 (quick to generate)."""
    state: dict[str, Any] = {"accounts": [], "domains": [], "connections": []}
    for n in range(50):
        account = f"Shop {n:02d}"
        state["accounts"].append({"name": account, "admin_email": f"ops@shop{n}.example"})
        names = [f"shop{n}.example", f"mail.shop{n}.example"]
        for i, domain in enumerate(names):
            state["domains"].append({
                "account": account, "domain": domain, "list_help": f"https://{names[0]}/help",
                "algorithms": ["rsa", "ed25519"] if (2 * n + i) % 10 == 0 else ["ed25519"]})
        state["connections"] += [
            {"account": account, "name": "web", "domains": names},
            {"account": account, "name": "crm", "domains": names[:1], "rate_limit": 100},
            {"account": account, "name": "newsletter", "domains": names[1:], "bounces": "keep"},
        ]
    return state


def counts(url: str) -> tuple[int, int, int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM accounts WHERE deleted_at IS NULL),"
            " (SELECT count(*) FROM sending_domains),"
            " (SELECT count(*) FROM connections WHERE deleted_at IS NULL),"
            " (SELECT count(*) FROM credentials)").fetchone()
    assert row is not None
    return (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def test_fifty_accounts_from_an_empty_database_then_no_changes_then_exactly_the_edit(
        config_file: Path, own_database: dict[str, str], tmp_path: Path) -> None:
    env = own_database
    path = tmp_path / "relay.yaml"
    state = big_file()
    path.write_text(yaml.safe_dump(state, sort_keys=False))
    out = tmp_path / "secrets.yaml"
    done = txrelay(config_file, env, "apply", "-f", str(path), "--secrets-out", str(out))
    assert done.returncode == 0, done.stderr
    assert "Done: 300 created, 0 changed, 0 deleted." in done.stdout
    url = env["TXRELAY_DATABASE_URL"]
    assert counts(url) == (50, 100, 150, 150)
    issued = yaml.safe_load(out.read_text())
    assert len(issued["connections"]) == 150
    logins = Path(env["TXRELAY_DOVECOT_PASSDB_FILE"]).read_text()
    assert all(c["username"] in logins for c in issued["connections"])
    assert not any(c["password"] in done.stdout + done.stderr for c in issued["connections"])

    again = txrelay(config_file, env, "apply", "-f", str(path))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("No changes")

    state["accounts"][7]["low_quota_threshold"] = 250
    state["domains"][20]["list_help"] = "mailto:help@shop10.example"
    state["connections"][31]["rate_limit"] = 5  # Shop 10's crm
    del state["connections"][-1]  # Shop 49's newsletter
    state["connections"].append({"account": "Shop 00", "name": "billing",
                                 "domains": ["shop0.example"]})
    path.write_text(yaml.safe_dump(state, sort_keys=False))
    plan = txrelay(config_file, env, "apply", "-f", str(path), "--prune", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines() == [
        "~ account 'Shop 07'",
        "    low_quota_threshold: 0 -> 250",
        "~ domain 'shop10.example'",
        "    list_help: 'https://shop10.example/help' -> 'mailto:help@shop10.example'",
        "~ connection 'Shop 10' / 'crm'",
        "    rate_limit: 100 -> 5",
        "+ connection 'Shop 00' / 'billing'",
        "- connection 'Shop 49' / 'newsletter'",
        "Would create 1, change 3, delete 1.",
    ]
    assert counts(url) == (50, 100, 150, 150)
    edited = txrelay(config_file, env, "apply", "-f", str(path), "--prune", "--yes",
                     "--secrets-out", str(tmp_path / "more-secrets.yaml"))
    assert edited.returncode == 0, edited.stderr
    assert "Done: 1 created, 3 changed, 1 deleted." in edited.stdout
    assert counts(url)[:3] == (50, 100, 150)
    assert txrelay(config_file, env, "apply", "-f", str(path), "--prune"
                   ).stdout.startswith("No changes")

    piped = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$0" --config "$1" export | '
         '"$0" --config "$1" apply -f - --dry-run --prune', TXRELAY, str(config_file)],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith("No changes"), piped.stdout


def test_a_mail_through_a_connection_made_by_apply_is_delivered_signed(
        relay: RelayStack, tmp_path: Path) -> None:
    """In the run's database (the relay's), under names of this test's own; no --prune,
    so the other tests' objects are left alone."""
    tag = uuid.uuid4().hex[:10]
    domain = f"apply-{tag}.example.com"
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump({
        "accounts": [{"name": f"Apply {tag}", "admin_email": f"ops@{domain}"}],
        "domains": [{"account": f"Apply {tag}", "domain": domain,
                     "list_help": "https://help.example.com/unsubscribe"}],
        "connections": [{"account": f"Apply {tag}", "name": "shop", "domains": [domain]}],
    }))
    out = tmp_path / "secrets.yaml"
    done = txrelay(relay.config_file, None, "apply", "-f", str(path), "--secrets-out", str(out))
    assert done.returncode == 0, done.stderr
    [issued] = yaml.safe_load(out.read_text())["connections"]
    relay.settle_policy()
    recipient = f"apply-{tag}@rcpt.example.net"
    sender = f"shop@{domain}"
    sent = submit(issued["username"], issued["password"], sender, [recipient],
                  build_message(sender, [recipient]), port=relay.port)
    assert sent.delivered_to == [recipient], sent
    captured = relay.sink.wait_for_recipient(recipient)
    assert dkim_tags(captured.raw)["d"] == domain
    assert verify_dkim(captured.raw, relay.database_url)
