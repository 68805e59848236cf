"""`domain set --return-path`, `connection set --bounces`, the return path's DNS records in
`domain dns` / `domain check` (real NSD on loopback), and the bounce secret `init` makes."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import (
    RELAY_ADDRESSES,
    RELAY_INCLUDE,
    CliRun,
    Txrelay,
    printed_records,
    run_main,
)
from tests.harness.dns import DnsServer
from tests.harness.processes import TXRELAY
from txrelay.bounce_dkim import read_bounce_dkim_key, write_bounce_dkim_key
from txrelay.bounce_secret import read_bounce_secret
from txrelay.cli.main import EXIT_INVALID_INPUT
from txrelay.config import load_config

MX_HOST = "relay.example.net"


@pytest.fixture()
def bounce_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A relay whose bounces come back to relay.example.net, relay-wide domain elsewhere."""
    monkeypatch.setenv("TXRELAY_BOUNCE_DOMAIN", "bounces.relay.example")
    monkeypatch.setenv("TXRELAY_BOUNCE_MX_HOST", MX_HOST)


def test_a_domain_takes_a_return_path_of_its_own_and_gives_it_back(
        txrelay: Txrelay, domain: str, bounce_env: None) -> None:
    result = txrelay("domain", "set", domain, "--return-path", f"Bounces.{domain}")
    assert result.exit_code == 0, result.stderr
    assert f"{domain}: return path is now bounces.{domain}" in result.stdout
    assert f"txrelay domain dns {domain}" in result.stdout
    assert txrelay("domain", "show", domain, "--json").json()["return_path"] == \
        f"bounces.{domain}"
    shown = txrelay("domain", "show", domain)
    assert f"Return path: bounces.{domain}" in shown.stdout
    listed = {d["domain"]: d for d in txrelay("domain", "list", "--json").json()}
    assert listed[domain]["return_path"] == f"bounces.{domain}"

    back = txrelay("domain", "set", domain, "--return-path", "relay", "--json").json()
    assert back["return_path"] is None
    shown = txrelay("domain", "show", domain)
    assert "Return path: the relay's (bounces.relay.example)" in shown.stdout
    row = next(line for line in txrelay("domain", "list").stdout.splitlines()
               if line.startswith(domain))
    assert row.split()[-1] == "relay"


def test_a_return_path_outside_the_domain_is_refused(txrelay: Txrelay, domain: str) -> None:
    for bad in ("bounces.elsewhere.example", f"evil{domain}", "not a host"):
        result = txrelay("domain", "set", domain, "--return-path", bad)
        assert result.exit_code == EXIT_INVALID_INPUT, (bad, result.stdout)
        assert "Traceback" not in result.stderr
    assert "must be" in txrelay("domain", "set", domain, "--return-path",
                                "bounces.elsewhere.example").error
    nothing = txrelay("domain", "set", domain)
    assert nothing.exit_code == EXIT_INVALID_INPUT
    assert "give --list-help or --return-path" in nothing.error


def test_a_connection_keeps_its_bounces_and_goes_back_to_the_relay(
        txrelay: Txrelay, account: str, domain: str) -> None:
    created = txrelay("connection", "create", account, "Shop", "--domain", domain, "--json")
    assert created.json()["connection"] == "Shop"
    kept = txrelay("connection", "set", "Shop", "--account", account, "--bounces", "keep")
    assert kept.exit_code == 0, kept.stderr
    assert "  bounces:     keep" in kept.stdout
    assert txrelay("connection", "show", "Shop", "--account", account,
                   "--json").json()["bounces"] == "keep"
    relay = txrelay("connection", "set", "Shop", "--account", account, "--bounces", "relay",
                    "--json").json()
    assert relay["bounces"] == "relay"
    bad = txrelay("connection", "set", "Shop", "--account", account, "--bounces", "drop")
    assert bad.exit_code == 2 and "Traceback" not in bad.stderr


def test_dns_prints_the_return_path_mx_and_spf(
        txrelay: Txrelay, domain: str, zone: DnsServer, bounce_env: None) -> None:
    host = f"bounces.{domain}"
    assert txrelay("domain", "set", domain, "--return-path", host).exit_code == 0
    result = txrelay("domain", "dns", domain)
    assert result.exit_code == 0, result.stderr
    assert f"{host}. IN MX 10 {MX_HOST}." in result.stdout
    assert f'{host}. IN TXT "v=spf1 include:{RELAY_INCLUDE} ~all"' in result.stdout
    records = txrelay("domain", "dns", domain, "--json").json()["records"]
    assert [(r["kind"], r["name"], r["type"]) for r in records[3:]] == [
        ("return-path", host, "MX"), ("spf", host, "TXT")]


def test_check_passes_once_the_return_path_records_are_published(
        txrelay: Txrelay, domain: str, zone: DnsServer, bounce_env: None) -> None:
    host = f"bounces.{domain}"
    assert txrelay("domain", "set", domain, "--return-path", host).exit_code == 0
    records = printed_records(txrelay, domain)
    missing_mx = {name: [r for r in rs if r[0] != "MX"] for name, rs in records.items()}
    zone.serve(missing_mx)
    result = txrelay("domain", "check", domain)
    assert result.exit_code == 1
    assert f"return path missing: {host} has no MX record" in result.stdout
    assert f"fix: publish: {host}. IN MX 10 {MX_HOST}." in result.stdout

    zone.serve({**records, host: [*missing_mx[host], ("MX", "10 mx.elsewhere.example.")]})
    wrong = txrelay("domain", "check", domain)
    assert wrong.exit_code == 1 and "return path mismatch" in wrong.stdout

    zone.serve(records)
    ok = txrelay("domain", "check", domain, "--json").json()
    assert ok["ready"] is True
    assert [(r["kind"], r["verdict"]) for r in ok["records"]][3:] == [
        ("return-path", "ok"), ("spf", "ok")]


def test_check_warns_when_the_relay_wide_domain_cannot_align_cfbl(
        txrelay: Txrelay, domain: str, zone: DnsServer, bounce_env: None) -> None:
    zone.serve(printed_records(txrelay, domain))
    result = txrelay("domain", "check", domain)
    assert result.exit_code == 0, result.stdout + result.stderr  # a warning does not fail
    assert "return path warning: bounces.relay.example is not" in result.stdout
    assert f"fix: txrelay domain set {domain} --return-path bounces.{domain}" in result.stdout
    dns = txrelay("domain", "dns", domain)
    assert "aligns only with the relay's own second DKIM signature" in dns.stdout
    assert "txrelay bounce dns" in dns.stdout


def test_init_makes_the_bounce_secret_and_keeps_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> None:
    def init(*extra: str) -> CliRun:
        return run_main(["init", "--config-path", str(tmp_path / "etc" / "txrelay.toml"),
                         "--database-url", database_url,
                         "--redis-url", "redis://127.0.0.1:6379/9",
                         "--smtp-host", "relay.example.com",
                         "--set", f"dovecot.config_dir={tmp_path / 'dovecot'}",
                         "--set", f"dovecot.base_dir={tmp_path / 'dovecot-run'}",
                         "--set", f"dovecot.auth_socket={tmp_path / 'dovecot-run' / 'auth'}",
                         "--set", f"dovecot.passdb_file={tmp_path / 'passdb' / 'passwd'}",
                         *extra], monkeypatch)

    result = init()
    assert result.exit_code == 0, result.stderr
    config = load_config(tmp_path / "etc" / "txrelay.toml", required=True, environ={})
    path = Path(config.bounce.secret_file)
    assert path == tmp_path / "etc" / "bounce.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    secret = read_bounce_secret(path)
    assert f"Bounces: Made the bounce secret {path}" in result.stdout
    assert secret.hex() not in result.stdout
    again = init("--force")
    assert again.exit_code == 0, again.stderr
    assert "Bounces: Kept the bounce secret" in again.stdout
    assert read_bounce_secret(path) == secret
    key_file = Path(config.bounce.dkim_key_file)
    assert key_file == tmp_path / "etc" / "bounce-dkim.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o640
    made = read_bounce_dkim_key(key_file)
    assert made.algorithm == "rsa"
    assert f"CFBL: Made the relay's DKIM key {key_file}" in result.stdout
    assert "PRIVATE KEY" not in result.stdout
    assert "CFBL: Kept the relay's DKIM key" in again.stdout
    assert read_bounce_dkim_key(key_file) == made


def test_the_milter_does_not_start_without_the_bounce_secret_it_needs(
        config_file: Path, tmp_path: Path) -> None:
    missing = tmp_path / "bounce.key"
    env = {**os.environ, "TXRELAY_BOUNCE_DOMAIN": "bounces.relay.example",
           "TXRELAY_BOUNCE_SECRET_FILE": str(missing),
           "TXRELAY_MILTER_SOCKET": f"unix:{tmp_path}/milter.sock",
           "TXRELAY_MILTER_JOURNAL_DIR": str(tmp_path / "journal")}
    done = subprocess.run([TXRELAY, "--config", str(config_file), "milter"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert f"the bounce secret {missing} is missing" in done.stderr
    assert "Traceback" not in done.stderr


def test_bounce_dns_needs_a_bounce_domain(txrelay: Txrelay) -> None:
    result = txrelay("bounce", "dns")
    assert result.exit_code == EXIT_INVALID_INPUT
    assert "set [bounce] domain" in result.stderr and "Traceback" not in result.stderr


def test_bounce_dns_without_the_relay_key_prints_mx_and_spf_and_says_why_no_dkim(
        txrelay: Txrelay, bounce_env: None, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.setenv("TXRELAY_BOUNCE_DKIM_KEY_FILE", str(tmp_path / "absent.pem"))
    printed = txrelay("bounce", "dns", "--json").json()
    assert printed["domain"] == "bounces.relay.example"
    assert "txrelay init" in printed["dkim_key_error"]
    assert [(r["kind"], r["type"]) for r in printed["records"]] == [
        ("return-path", "MX"), ("spf", "TXT")]
    assert printed["records"][0]["value"] == f"10 {MX_HOST}."
    human = txrelay("bounce", "dns")
    assert human.exit_code == 0 and "Note: no DKIM record" in human.stdout


def test_bounce_check_finds_the_relay_key_and_its_records_in_dns(
        txrelay: Txrelay, bounce_env: None, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, zone: DnsServer) -> None:
    key_file = tmp_path / "bounce-dkim.pem"
    write_bounce_dkim_key(key_file)
    monkeypatch.setenv("TXRELAY_BOUNCE_DKIM_KEY_FILE", str(key_file))
    printed = txrelay("bounce", "dns", "--json").json()
    [dkim] = [r for r in printed["records"] if r["kind"] == "dkim"]
    assert dkim["name"] == "txrelay._domainkey.bounces.relay.example"
    assert read_bounce_dkim_key(key_file).public_key_b64 in dkim["value"]
    missing = txrelay("bounce", "check")
    assert missing.exit_code == 1
    assert "DKIM missing" in missing.stdout and "not ready" in missing.stderr
    records = {RELAY_INCLUDE: [("TXT", "v=spf1 " + " ".join(
        f"ip{'6' if ':' in a else '4'}:{a}" for a in RELAY_ADDRESSES) + " -all")]}
    for record in printed["records"]:
        records.setdefault(record["name"], []).append((record["type"], record["value"]))
    zone.serve(records)
    checked = txrelay("bounce", "check", "--json")
    assert checked.exit_code == 0, checked.stdout + checked.stderr
    assert checked.json()["ready"] is True
    assert {r["kind"]: r["verdict"] for r in checked.json()["records"]} == {
        "dkim": "ok", "return-path": "ok", "spf": "ok"}
