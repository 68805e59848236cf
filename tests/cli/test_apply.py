"""`txrelay apply -f FILE` and `txrelay export` against a database of each test's own (prune
and export see every object of the database): idempotency, the dry-run diff, prune, bad
input refused with file, line and field before anything is written, all or nothing, the
secrets file, and the export round trip."""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from psycopg.rows import dict_row

from tests.cli.conftest import DictConnection, Txrelay
from tests.conftest import ADMIN_DSN
from tests.harness.dns import DnsServer
from txrelay.store import database

BASE = """\
accounts:
  - name: Acme GmbH
    admin_email: ops@acme.example
    low_quota_threshold: 500
  - name: Beta AG
    admin_email: ops@beta.example
    overage_cap: 1000
domains:
  - account: Acme GmbH
    domain: acme.example
    list_help: https://acme.example/help
    algorithms: [ed25519]
  - account: Acme GmbH
    domain: shop.acme.example
    list_help: mailto:help@acme.example
    return_path: bounces.shop.acme.example
    algorithms: [rsa, ed25519]
  - account: Beta AG
    domain: beta.example
    list_help: https://beta.example/help
    algorithms: [ed25519]
connections:
  - account: Acme GmbH
    name: Web shop
    domains: [acme.example, shop.acme.example]
    rate_limit: 500
  - account: Beta AG
    name: CRM
    domains: [beta.example]
    bounces: keep
    enabled: false
webhooks:
  - account: Acme GmbH
    url: http://127.0.0.1:9/hook
    events: [bounced, complained]
    allow_private: true
suppressions:
  - account: Beta AG
    address: Nobody@Example.org
    note: asked by phone
"""


@pytest.fixture()
def own_db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[DictConnection]:
    """A migrated database of this test alone (and a login file of its own), dropped after."""
    name = f"txrelay_apply_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url) as conn:
            database.migrate(conn)
        monkeypatch.setenv("TXRELAY_DATABASE_URL", url)
        monkeypatch.setenv("TXRELAY_DATABASE_MILTER_URL", "")
        monkeypatch.setenv("TXRELAY_DOVECOT_PASSDB_FILE", str(tmp_path / "logins"))
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:  # type: ignore[arg-type]
            yield conn
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write(tmp_path: Path, text: str, name: str = "relay.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def counts(db: DictConnection) -> dict[str, int]:
    queries = {
        "accounts": "SELECT count(*) AS n FROM accounts WHERE deleted_at IS NULL",
        "domains": "SELECT count(*) AS n FROM sending_domains",
        "connections": "SELECT count(*) AS n FROM connections WHERE deleted_at IS NULL",
        "webhooks": "SELECT count(*) AS n FROM webhooks WHERE removed_at IS NULL",
        "suppressions": "SELECT count(*) AS n FROM suppressions s JOIN accounts a ON "
                        "a.id = s.account_id WHERE s.removed_at IS NULL AND a.deleted_at IS NULL",
    }
    return {k: db.execute(q).fetchone()["n"] for k, q in queries.items()}  # type: ignore[index]


def test_apply_creates_everything_and_the_second_apply_changes_nothing(
    txrelay: Txrelay, own_db: DictConnection, tmp_path: Path
) -> None:
    path = write(tmp_path, BASE)
    out = tmp_path / "secrets.yaml"
    done = txrelay("apply", "-f", str(path), "--secrets-out", str(out), "--json").json()
    assert done["applied"] is True
    assert done["summary"] == {"create": 9, "change": 0, "delete": 0}
    assert counts(own_db) == {"accounts": 2, "domains": 3, "connections": 2, "webhooks": 1,
                              "suppressions": 1}
    acme = txrelay("account", "show", "Acme GmbH", "--json").json()
    assert acme["low_quota_threshold"] == 500
    shop = txrelay("domain", "show", "shop.acme.example", "--json").json()
    assert shop["return_path"] == "bounces.shop.acme.example"
    assert sorted(shop["algorithms"]) == ["ed25519", "rsa"]
    crm = txrelay("connection", "show", "CRM", "--account", "Beta AG", "--json").json()
    assert (crm["enabled"], crm["bounces"]) == (False, "keep")
    row = own_db.execute("SELECT reason, detail FROM suppressions").fetchone()
    assert row == {"reason": "manual", "detail": "asked by phone"}

    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    kept = yaml.safe_load(out.read_text())
    web, crm_secret = kept["connections"]
    assert crm_secret["connection"] == "CRM"
    assert web["connection"] == "Web shop" and web["username"] == txrelay(
        "connection", "show", "Web shop", "--account", "Acme GmbH", "--json").json()["username"]
    assert [w["secret"][:6] for w in kept["webhooks"]] == ["whsec_"]
    logins = (tmp_path / "logins").read_text()
    assert web["username"] in logins and web["password"] not in logins

    again = txrelay("apply", "-f", str(path))
    assert again.exit_code == 0, again.stderr
    assert "No changes" in again.stdout
    assert txrelay("apply", "-f", str(path), "--json").json()["changes"] == []


def test_secrets_never_reach_stdout_unless_asked(
    txrelay: Txrelay, own_db: DictConnection, tmp_path: Path
) -> None:
    path = write(tmp_path, BASE)
    refused = txrelay("apply", "-f", str(path))
    assert refused.exit_code == 4
    assert "--secrets-out" in refused.error
    assert counts(own_db)["accounts"] == 0
    existing = write(tmp_path, "keep me\n", "old-secrets.yaml")
    taken = txrelay("apply", "-f", str(path), "--secrets-out", str(existing))
    assert taken.exit_code == 1 and "exists already" in taken.error
    assert existing.read_text() == "keep me\n" and counts(own_db)["accounts"] == 0
    shown = txrelay("apply", "-f", str(path), "--show-secrets")
    assert shown.exit_code == 0, shown.stderr
    password = own_db.execute("SELECT count(*) AS n FROM credentials").fetchone()
    assert password == {"n": 2}
    assert "password:" in shown.stdout and "whsec_" in shown.stdout


def test_dry_run_prints_the_diff_and_changes_nothing(
    txrelay: Txrelay, own_db: DictConnection, tmp_path: Path
) -> None:
    path = write(tmp_path, BASE)
    plan = txrelay("apply", "-f", str(path), "--dry-run")
    assert plan.exit_code == 0, plan.stderr
    assert "+ account 'Acme GmbH'" in plan.stdout
    assert "+ connection 'Beta AG' / 'CRM'" in plan.stdout
    assert "Would create 9, change 0, delete 0." in plan.stdout
    assert counts(own_db)["accounts"] == 0
    txrelay("apply", "-f", str(path), "--secrets-out", str(tmp_path / "s1"))
    edited = (BASE.replace("low_quota_threshold: 500", "low_quota_threshold: 700")
              .replace("rate_limit: 500", "rate_limit: 50")
              .replace("    enabled: false\n", ""))
    path.write_text(edited)
    before = own_db.execute("SELECT low_quota_threshold FROM accounts WHERE name = 'Acme GmbH'"
                            ).fetchone()
    plan = txrelay("apply", "-f", str(path), "--dry-run", "--json").json()
    assert [(c["action"], c["kind"], c["key"], c["changes"]) for c in plan["changes"]] == [
        ("change", "account", ["Acme GmbH"], {"low_quota_threshold": {"from": 500, "to": 700}}),
        ("change", "connection", ["Acme GmbH", "Web shop"],
         {"rate_limit": {"from": 500, "to": 50}}),
        ("change", "connection", ["Beta AG", "CRM"], {"enabled": {"from": False, "to": True}}),
    ]
    human = txrelay("apply", "-f", str(path), "--dry-run")
    assert "~ account 'Acme GmbH'\n    low_quota_threshold: 500 -> 700" in human.stdout
    assert own_db.execute("SELECT low_quota_threshold FROM accounts WHERE name = 'Acme GmbH'"
                          ).fetchone() == before
    done = txrelay("apply", "-f", str(path), "--json").json()
    assert done["summary"] == {"create": 0, "change": 3, "delete": 0}
    crm = txrelay("connection", "show", "CRM", "--account", "Beta AG", "--json").json()
    assert crm["enabled"] is True
    assert "No changes" in txrelay("apply", "-f", str(path)).stdout


def test_prune_deletes_what_the_file_no_longer_names_only_with_yes(
    txrelay: Txrelay, own_db: DictConnection, tmp_path: Path
) -> None:
    path = write(tmp_path, BASE)
    txrelay("apply", "-f", str(path), "--secrets-out", str(tmp_path / "s1"))
    smaller = yaml.safe_load(BASE)
    smaller["accounts"] = [a for a in smaller["accounts"] if a["name"] != "Beta AG"]
    for kind in ("domains", "connections", "suppressions"):
        smaller[kind] = [o for o in smaller[kind] if o["account"] != "Beta AG"]
    smaller["webhooks"] = []
    path.write_text(yaml.safe_dump(smaller))
    without = txrelay("apply", "-f", str(path))
    assert "No changes" in without.stdout  # without --prune nothing is deleted
    plan = txrelay("apply", "-f", str(path), "--prune", "--dry-run")
    assert "- webhook 'Acme GmbH' / 'http://127.0.0.1:9/hook'" in plan.stdout
    assert "- account 'Beta AG'" in plan.stdout
    assert "- connection 'Beta AG'" not in plan.stdout  # deleting the account takes it
    refused = txrelay("apply", "-f", str(path), "--prune")
    assert refused.exit_code == 4 and "--yes" in refused.error
    assert counts(own_db)["accounts"] == 2
    done = txrelay("apply", "-f", str(path), "--prune", "--yes", "--json").json()
    assert done["summary"] == {"create": 0, "change": 0, "delete": 2}
    assert counts(own_db) == {"accounts": 1, "domains": 2, "connections": 1, "webhooks": 0,
                              "suppressions": 0}
    assert "No changes" in txrelay("apply", "-f", str(path), "--prune").stdout


def test_export_round_trip_shows_no_change(
    txrelay: Txrelay, own_db: DictConnection, tmp_path: Path
) -> None:
    txrelay("apply", "-f", str(write(tmp_path, BASE)), "--secrets-out", str(tmp_path / "s"))
    exported = txrelay("export")
    assert exported.exit_code == 0, exported.stderr
    assert "password" not in exported.stdout and "whsec_" not in exported.stdout
    state = yaml.safe_load(exported.stdout)
    assert [a["name"] for a in state["accounts"]] == ["Acme GmbH", "Beta AG"]
    again = txrelay("apply", "-f", str(write(tmp_path, exported.stdout, "export.yaml")),
                    "--dry-run", "--prune")
    assert again.exit_code == 0, again.stderr
    assert "No changes" in again.stdout
    as_json = txrelay("export", "--json").json()
    assert as_json == state
    from_json = txrelay("apply", "-f", str(write(tmp_path, json.dumps(as_json), "e.json")),
                        "--dry-run", "--prune")
    assert "No changes" in from_json.stdout, from_json.stderr
    to_file = txrelay("export", "-o", str(tmp_path / "out.yaml"))
    assert to_file.exit_code == 0 and (tmp_path / "out.yaml").read_text() == exported.stdout


BAD = [
    ("unknown key", BASE.replace("    low_quota_threshold: 500\n",
                                 "    low_quota_threshold: 500\n    colour: blue\n"),
     5, "accounts[0].colour: unknown key"),
    ("wrong type", BASE.replace("rate_limit: 500", "rate_limit: lots"),
     26, "connections[0].rate_limit: must be integer or null, not string 'lots'"),
    ("duplicate name", BASE.replace("name: Beta AG", "name: Acme GmbH"),
     5, "accounts[1].name: duplicate account (first at line 2)"),
    ("domain of another account", BASE.replace("domains: [beta.example]",
                                               "domains: [beta.example, acme.example]"),
     29, "connections[1].domains[1]: domain acme.example belongs to account 'Acme GmbH' "
         "(line 9), not 'Beta AG'"),
    ("key given twice", BASE.replace("    overage_cap: 1000\n",
                                     "    overage_cap: 1000\n    overage_cap: 5\n"),
     8, "accounts[1].overage_cap: given twice"),
    ("unknown account", BASE.replace("  - account: Beta AG\n    domain: beta.example",
                                     "  - account: Gamma\n    domain: beta.example"),
     18, "domains[2].account: account 'Gamma' is not among the file's accounts"),
    ("bad address", BASE.replace("Nobody@Example.org", "nobody"),
     39, "suppressions[0].address: 'nobody' is not an e-mail address"),
]


@pytest.mark.parametrize(("what", "text", "line", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_file_line_and_field_before_anything_is_written(
    txrelay: Txrelay, own_db: DictConnection, tmp_path: Path, what: str, text: str, line: int,
    message: str
) -> None:
    path = write(tmp_path, text)
    refused = txrelay("apply", "-f", str(path), "--secrets-out", str(tmp_path / "s"))
    assert refused.exit_code == 4, refused.stderr
    assert "Traceback" not in refused.stderr
    assert f"{path}:{line}: {message}" in refused.stderr, refused.stderr
    assert counts(own_db)["accounts"] == 0
    assert not (tmp_path / "s").exists()


def test_a_key_file_that_is_not_a_key_is_refused_and_a_pem_key_is_used(
    txrelay: Txrelay, own_db: DictConnection, tmp_path: Path
) -> None:
    (tmp_path / "notakey.pem").write_text("hello\n")
    text = BASE.replace("    algorithms: [ed25519]\n  - account: Acme GmbH",
                        "    key_file: notakey.pem\n  - account: Acme GmbH")
    refused = txrelay("apply", "-f", str(write(tmp_path, text)), "--show-secrets")
    assert refused.exit_code == 4
    assert f"{tmp_path / 'relay.yaml'}:12: domains[0].key_file: " in refused.stderr
    assert "is not a PEM private key" in refused.stderr
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pem").write_bytes(ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    refused = txrelay("apply", "-f", str(write(tmp_path, text.replace("notakey", "ec"))),
                      "--show-secrets")
    assert refused.exit_code == 4 and "DKIM needs RSA or Ed25519" in refused.stderr
    assert counts(own_db)["accounts"] == 0
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "mine.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    done = txrelay("apply", "-f", str(write(tmp_path, text.replace("notakey", "mine"))),
                   "--show-secrets")
    assert done.exit_code == 0, done.stderr
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    shown = txrelay("domain", "show", "acme.example", "--json").json()
    assert "p=" + base64.b64encode(public).decode() in shown["dns"]["value"]


def test_an_apply_failing_half_way_changes_nothing(
    txrelay: Txrelay, own_db: DictConnection, tmp_path: Path
) -> None:
    """The connection, late in the plan, names a domain the file does not declare and that
    belongs to another account in the database: the database refuses it, and the accounts
    and domains created before it in the same apply are gone too."""
    assert txrelay("account", "create", "Other", "--admin-email", "o@other.example"
                   ).exit_code == 0
    assert txrelay("domain", "add", "Other", "other.example", "--list-help",
                   "https://other.example/", "--algorithm", "ed25519").exit_code == 0
    before = counts(own_db)
    # other.example is not declared in the file: only the database knows whose it is.
    state = yaml.safe_load(BASE.replace("domains: [acme.example, shop.acme.example]",
                                        "domains: [acme.example, other.example]"))
    refused = txrelay("apply", "-f", str(write(tmp_path, yaml.safe_dump(state))),
                      "--secrets-out", str(tmp_path / "s"))
    assert refused.exit_code == 4, refused.stderr
    assert "other.example belongs to account 'Other'" in refused.error
    assert counts(own_db) == before
    assert not (tmp_path / "s").exists()


def test_the_help_says_what_apply_does(txrelay: Txrelay) -> None:
    shown = txrelay("apply", "--help")
    assert shown.exit_code == 0 and "--prune" in shown.stdout and "FILE:LINE" in shown.stdout
    assert "no change" in txrelay("export", "--help").stdout


DOC = Path(__file__).resolve().parents[2] / "docs" / "provisioning-as-code.md"


def test_the_documented_example_applies_and_exports_back(
    txrelay: Txrelay, own_db: DictConnection, tmp_path: Path, dns_server: DnsServer,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first ```yaml block of docs/provisioning-as-code.md, as an admin would apply it
    (its webhook's host answered by the loopback NSD with a public address)."""
    example = DOC.read_text().split("```yaml\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("TXRELAY_DNS_RESOLVER", dns_server.address)
    dns_server.serve({"shop.acme.example": [("A", "93.184.215.14")]})
    path = write(tmp_path, example)
    done = txrelay("apply", "-f", str(path), "--secrets-out", str(tmp_path / "s.yaml"))
    assert done.exit_code == 0, done.stderr
    assert counts(own_db) == {"accounts": 2, "domains": 2, "connections": 2, "webhooks": 1,
                              "suppressions": 1}
    assert "No changes" in txrelay("apply", "-f", str(path), "--prune").stdout
    exported = txrelay("export").stdout
    assert yaml.safe_load(exported)["domains"][0]["return_path"] == "bounces.acme.example"
    again = txrelay("apply", "-f", str(write(tmp_path, exported, "e.yaml")), "--dry-run",
                    "--prune")
    assert "No changes" in again.stdout


def test_a_sandbox_connection_is_applied_exported_and_switched_live(
    txrelay: Txrelay, own_db: DictConnection, tmp_path: Path
) -> None:
    sandboxed = BASE.replace("    bounces: keep\n", "    bounces: keep\n    sandbox: true\n")
    txrelay("apply", "-f", str(write(tmp_path, sandboxed)), "--secrets-out",
            str(tmp_path / "s"))
    crm = txrelay("connection", "show", "CRM", "--account", "Beta AG", "--json").json()
    assert crm["sandbox"] is True
    exported = yaml.safe_load(txrelay("export").stdout)
    assert [c.get("sandbox", False) for c in exported["connections"]] == [False, True]
    live = txrelay("apply", "-f", str(write(tmp_path, BASE, "live.yaml")), "--json").json()
    assert [(c["action"], c["kind"], sorted(c["changes"])) for c in live["changes"]] == [
        ("change", "connection", ["sandbox"])]
    crm = txrelay("connection", "show", "CRM", "--account", "Beta AG", "--json").json()
    assert crm["sandbox"] is False
