"""`txrelay domain rotate-key / switch-key / retire-key`: a DKIM key replaced without a moment
in which mail is signed with a key that DNS does not publish. Public DNS is the one thing
served by a real DNS server on loopback (tests/harness/dns.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from psycopg.rows import dict_row

from tests.cli.conftest import DictConnection, Txrelay, one_row, zone_strings
from tests.harness.dns import DnsServer
from txrelay.clock import FixedClock
from txrelay.config import QuotaConfig
from txrelay.kek import KeyRing
from txrelay.store.policy import PolicyLoader


def _keys(txrelay: Txrelay, domain: str) -> dict[str, dict[str, Any]]:
    """The domain's keys as `domain show --json` lists them, by state."""
    shown = txrelay("domain", "show", domain, "--json").json()
    return {key["state"]: key for key in shown["keys"]}


def _signing_selector(db: DictConnection, domain: str) -> str:
    return str(one_row(db, "SELECT k.selector FROM sending_domains d JOIN dkim_keys k "
                       "ON k.id = d.dkim_key_id WHERE d.domain = %s", (domain,))["selector"])


def _records(keys: dict[str, dict[str, Any]], *states: str) -> dict[str, list[tuple[str, str]]]:
    """The DKIM records of the keys in these states, as DnsServer.serve() takes them."""
    return {keys[s]["dns"]["name"]: [("TXT", keys[s]["dns"]["value"])] for s in states}


def test_rotation_publishes_first_switches_after_dns_check_and_retires_after_a_week(
        txrelay: Txrelay, domain: str, db: DictConnection, clock: FixedClock,
        zone: DnsServer) -> None:
    old = _signing_selector(db, domain)
    started = txrelay("domain", "rotate-key", domain)
    assert started.exit_code == 0, started.stderr
    new_name, new_value = zone_strings(started.stdout)
    keys = _keys(txrelay, domain)
    assert keys["signing"]["selector"] == old
    assert keys["pending"]["selector"] == new_name.partition("._domainkey.")[0] != old
    assert keys["pending"]["dns"]["value"] == new_value
    assert _signing_selector(db, domain) == old, "a pending key must not sign yet"

    zone.serve(_records(keys, "signing"))
    refused = txrelay("domain", "switch-key", domain)
    assert refused.exit_code == 1
    assert "not switching" in refused.error and "--force" in refused.error
    assert _signing_selector(db, domain) == old

    zone.serve(_records(keys, "signing", "pending"))
    switched = txrelay("domain", "switch-key", domain)
    assert switched.exit_code == 0, switched.stderr
    assert _signing_selector(db, domain) == keys["pending"]["selector"]
    assert f"retire-key {domain} {old}" in switched.stdout
    after = _keys(txrelay, domain)
    assert (after["signing"]["selector"], after["retiring"]["selector"]) == (
        keys["pending"]["selector"], old)
    assert "pending" not in after

    too_early = txrelay("domain", "retire-key", domain, old)
    assert too_early.exit_code == 1
    assert "2026-11-10 09:30 UTC" in too_early.error and "--force" in too_early.error
    clock.advance(dt.timedelta(days=7))
    retired = txrelay("domain", "retire-key", domain, old)
    assert retired.exit_code == 0, retired.stderr
    assert f"remove the DNS record {old}._domainkey.{domain}" in retired.stdout
    assert set(_keys(txrelay, domain)) == {"signing"}
    left = db.execute("SELECT count(*) AS n FROM dkim_keys WHERE id = %s",
                      (keys["signing"]["dkim_key_id"],)).fetchone()
    assert left == {"n": 0}, "a key no domain uses any more is deleted, private half included"


def test_force_switches_without_asking_dns(txrelay: Txrelay, domain: str,
                                           db: DictConnection, zone: DnsServer) -> None:
    assert txrelay("domain", "rotate-key", domain, "--selector", "mail2027").exit_code == 0
    zone.serve({})  # DNS publishes no key at all: only --force can switch
    assert txrelay("domain", "switch-key", domain).exit_code == 1
    switched = txrelay("domain", "switch-key", domain, "--force")
    assert switched.exit_code == 0, switched.stderr
    assert _signing_selector(db, domain) == "mail2027"


def test_policy_snapshot_signs_with_the_signing_key_only(
        txrelay: Txrelay, domain: str, database_url: str, kek_ring: KeyRing) -> None:
    def snapshot_selector() -> str:
        with psycopg.connect(database_url, row_factory=dict_row) as conn:  # type: ignore[arg-type]
            return PolicyLoader(QuotaConfig(demo_rate_limit=25), kek_ring).load(conn).domains[  # type: ignore[arg-type]
                domain].selector

    before = snapshot_selector()
    assert txrelay("domain", "rotate-key", domain, "--selector", "next").exit_code == 0
    assert snapshot_selector() == before
    assert txrelay("domain", "switch-key", domain, "--force").exit_code == 0
    assert snapshot_selector() == "next"


def test_json_of_every_rotation_step_never_contains_a_private_key(
        txrelay: Txrelay, domain: str, tmp_path: Path, zone: DnsServer) -> None:
    pem = tmp_path / "new.pem"
    pem.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    outputs = [txrelay("domain", "rotate-key", domain, "--key-file", str(pem), "--json"),
               txrelay("domain", "show", domain, "--json"),
               txrelay("domain", "list", "--json"),
               txrelay("domain", "dns", domain, "--json"),
               txrelay("domain", "switch-key", domain, "--force", "--json")]
    old = _keys(txrelay, domain)["retiring"]["selector"]
    outputs.append(txrelay("domain", "retire-key", domain, old, "--force", "--json"))
    for result in outputs:
        assert result.exit_code == 0, result.stderr
        assert "PRIVATE" not in result.stdout + result.stderr
    assert _keys(txrelay, domain)["signing"]["algorithm"] == "ed25519"


def test_show_list_and_dns_say_which_selector_signs_and_which_rotate(
        txrelay: Txrelay, domain: str, db: DictConnection, zone: DnsServer) -> None:
    old = _signing_selector(db, domain)
    assert txrelay("domain", "rotate-key", domain, "--selector", "fresh").exit_code == 0
    shown = txrelay("domain", "show", domain)
    lines = {line.split()[0]: line for line in shown.stdout.splitlines() if line.strip()}
    assert "signing" in lines[old] and "pending" in lines["fresh"]
    listed = txrelay("domain", "list")
    row = next(line for line in listed.stdout.splitlines() if line.startswith(domain))
    assert old in row and "fresh (pending)" in row
    assert "SIGNING SELECTOR" in listed.stdout
    dns_out = txrelay("domain", "dns", domain).stdout
    assert dns_out.count("._domainkey.") == 2 and "not signing yet" in dns_out


def test_a_second_rotation_before_the_switch_is_refused(txrelay: Txrelay,
                                                        domain: str) -> None:
    assert txrelay("domain", "rotate-key", domain, "--selector", "one").exit_code == 0
    second = txrelay("domain", "rotate-key", domain, "--selector", "two")
    assert second.exit_code == 1
    assert "already has a new key waiting under selector one" in second.error
    dropped = txrelay("domain", "retire-key", domain, "one")
    assert dropped.exit_code == 0, dropped.stderr
    assert txrelay("domain", "rotate-key", domain, "--selector", "two").exit_code == 0


def test_default_selector_does_not_reuse_one_the_domain_publishes(
        txrelay: Txrelay, domain: str, db: DictConnection) -> None:
    first = _signing_selector(db, domain)
    assert first == "txr202611"  # the fixed clock's month
    rotated = txrelay("domain", "rotate-key", domain, "--json").json()
    assert {k["selector"] for k in rotated["keys"]} == {"txr202611", "txr202611-2"}


def test_bad_rotation_requests_are_refused_with_what_to_do(
        txrelay: Txrelay, domain: str, db: DictConnection) -> None:
    signing = _signing_selector(db, domain)
    cases = [  # (command, message, exit status: docs/cli.md)
        (("domain", "rotate-key", domain, "--selector", signing), "already publishes selector",
         1),
        (("domain", "switch-key", domain), "no new key waiting", 3),
        (("domain", "retire-key", domain, signing), "signs the mail of", 4),
        (("domain", "retire-key", domain, "nosuch"), "has no key with selector nosuch", 3),
        (("domain", "rotate-key", "nowhere.example"), "is not registered", 3),
        (("domain", "rotate-key", domain, "--selector", "-bad"), "not a valid DKIM selector", 4),
    ]
    for args, message, status in cases:
        result = txrelay(*args)
        assert result.exit_code == status, args
        assert message in result.error, (args, result.error)


def test_rotation_commands_explain_themselves_in_help(txrelay: Txrelay) -> None:
    for command, phrase in (("rotate-key", "publish the DNS record"),
                            ("switch-key", "7 more days"),
                            ("retire-key", "7 days after"),
                            ("show", "retiring")):
        result = txrelay("domain", command, "--help")
        assert result.exit_code == 0
        assert phrase in " ".join(result.stdout.split()), command
