"""DKIM before live mail and dual signing at the command line: `domain add --algorithms`,
rotation per algorithm, `domain check` recording the publication state, `domain list/show
--json` showing it, and the tracker's tick publishing a domain whose records appeared (all
against NSD on loopback, tests/harness/dns.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import Txrelay
from tests.harness.dns import DnsServer
from tests.harness.processes import TXRELAY, run


def _dkim_records(txrelay: Txrelay, domain: str) -> dict[str, list[tuple[str, str]]]:
    records = txrelay("domain", "dns", domain, "--json").json()["records"]
    return {r["name"]: [("TXT", r["value"])] for r in records if r["kind"] == "dkim"}


@pytest.fixture()
def dual(txrelay: Txrelay, account: str, unique: str) -> str:
    name = f"dual-{unique}.example"
    result = txrelay("domain", "add", account, name, "--list-help", "https://help.example/",
                     "--algorithms", "rsa,ed25519", "--selector", "s2026")
    assert result.exit_code == 0, result.stderr
    assert "Publish these two DNS records" in result.stdout
    assert f"s2026._domainkey.{name}. IN TXT ( \"v=DKIM1; k=rsa; p=" in result.stdout
    assert f's2026-ed25519._domainkey.{name}. IN TXT "v=DKIM1; k=ed25519; p=' in result.stdout
    return name


def test_add_with_two_algorithms_makes_two_signing_keys_and_a_pending_domain(
        txrelay: Txrelay, dual: str) -> None:
    shown = txrelay("domain", "show", dual, "--json").json()
    assert shown["algorithms"] == ["rsa", "ed25519"]
    assert [(k["selector"], k["algorithm"], k["state"]) for k in shown["keys"]] == [
        ("s2026", "rsa", "signing"), ("s2026-ed25519", "ed25519", "signing")]
    assert shown["dkim_publication"] == {
        "state": "pending", "published_at": None, "last_checked_at": None,
        "last_check_published": None, "last_check_detail": None}
    text = txrelay("domain", "show", dual).stdout
    assert "DKIM:        pending (live mail refused until 'txrelay domain check" in text
    assert "never checked" in text
    listed = txrelay("domain", "list", "--json").json()
    assert next(d for d in listed if d["domain"] == dual)["dkim_publication"]["state"] \
        == "pending"
    table = txrelay("domain", "list").stdout
    row = next(line for line in table.splitlines() if line.startswith(dual))
    assert "s2026, s2026-ed25519" in row and "rsa, ed25519" in row and " pending " in row


@pytest.mark.parametrize(("args", "message"), [
    (["--algorithms", "rsa,rsa"], "--algorithms 'rsa,rsa': give rsa, ed25519 or rsa,ed25519"),
    (["--algorithms", "rsa,dsa"], "--algorithms 'rsa,dsa'"),
    (["--algorithms", "rsa,ed25519", "--algorithm", "rsa"],
     "give either --algorithm or --algorithms, not both"),
    (["--algorithms", "rsa,ed25519", "--reuse-key-of", "other.example"],
     "cannot be combined with --key-file or --reuse-key-of"),
])
def test_bad_algorithms_are_refused_with_exit_status_4(
        txrelay: Txrelay, account: str, unique: str, args: list[str], message: str) -> None:
    result = txrelay("domain", "add", account, f"bad-{unique}.example", "--list-help",
                     "https://help.example/", *args, "--json")
    assert result.exit_code == 4, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert txrelay("domain", "show", f"bad-{unique}.example").exit_code == 3


def test_check_publishes_the_domain_only_when_every_signing_record_is_there(
        txrelay: Txrelay, dual: str, zone: DnsServer) -> None:
    records = _dkim_records(txrelay, dual)
    rsa_only = {name: value for name, value in records.items() if "-ed25519." not in name}
    zone.serve(rsa_only)
    half = txrelay("domain", "check", dual)
    assert half.exit_code == 1
    assert f"{dual} is pending: its live mail is refused until every DKIM record above is " \
        "published" in half.stdout
    data = json.loads(txrelay("domain", "check", dual, "--json").stdout)
    assert [k["status"] for k in data["keys"]] == ["published", "missing"]
    publication = data["dkim_publication"]
    assert (publication["state"], publication["last_check_published"]) == ("pending", False)
    assert f"s2026-ed25519._domainkey.{dual}: missing" in publication["last_check_detail"]
    assert publication["last_checked_at"] == "2026-11-03T09:30:00+00:00"

    zone.serve(records)
    whole = txrelay("domain", "check", dual)
    assert f"{dual} is published now: its live mail is signed and sent." in whole.stdout
    shown = txrelay("domain", "show", dual, "--json").json()["dkim_publication"]
    assert shown["state"] == "published" and shown["published_at"] == "2026-11-03T09:30:00+00:00"
    assert "DKIM:        published since 2026-11-03 09:30 UTC" in txrelay(
        "domain", "show", dual).stdout

    # Published stays published: a record gone later is reported, mail is not stopped.
    zone.serve({})
    gone = txrelay("domain", "check", dual, "--json")
    assert gone.exit_code == 1
    after = json.loads(gone.stdout)["dkim_publication"]
    assert (after["state"], after["last_check_published"]) == ("published", False)


def test_a_dual_domain_rotates_one_algorithm_and_stays_published(
        txrelay: Txrelay, dual: str, zone: DnsServer) -> None:
    zone.serve(_dkim_records(txrelay, dual))
    assert txrelay("domain", "check", dual).stdout.count("published now") == 1

    unsaid = txrelay("domain", "rotate-key", dual)
    assert unsaid.exit_code == 4
    assert "say which one to replace with --algorithm rsa or --algorithm ed25519" in unsaid.stderr

    rotated = txrelay("domain", "rotate-key", dual, "--algorithm", "ed25519", "--selector",
                      "s2027-ed25519")
    assert rotated.exit_code == 0, rotated.stderr
    assert "still signs with selector s2026-ed25519" in rotated.stdout
    said = txrelay("domain", "switch-key", dual, "--force")
    assert f"{dual} now signs with selector s2027-ed25519. Keep the record of selector " \
        "s2026-ed25519" in said.stdout, said.stdout + said.stderr
    switched = txrelay("domain", "show", dual, "--json").json()
    assert [(k["selector"], k["state"]) for k in switched["keys"]] == [
        ("s2026", "signing"), ("s2027-ed25519", "signing"), ("s2026-ed25519", "retiring")]
    assert switched["algorithms"] == ["rsa", "ed25519"]
    assert switched["dkim_publication"]["state"] == "published"
    retired = txrelay("domain", "retire-key", dual, "s2026", "--force")
    assert retired.exit_code == 4 and "signs the mail of" in retired.stderr


def test_the_trackers_tick_publishes_a_pending_domain_whose_records_appeared(
        txrelay: Txrelay, dual: str, zone: DnsServer, config_file: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`txrelay tracker --once` as the daemons' role (least privilege: it may record the
    check and mark the domain published). The tick checks 20 pending domains at a time, the
    least recently checked first, so other tests' domains may come first: tick until done."""
    zone.serve(_dkim_records(txrelay, dual))
    log_file = tmp_path / "maillog"
    log_file.write_text("")
    env = {"TXRELAY_DKIM_REQUIRE_PUBLISHED": "true", "TXRELAY_TRACKER_SOURCE": "file",
           "TXRELAY_TRACKER_LOG_PATH": str(log_file), "TXRELAY_METRICS_TRACKER_LISTEN": "",
           "TXRELAY_DNS_RESOLVER": zone.address, "PATH": "/usr/bin:/bin"}
    published: list[str] = []
    for _attempt in range(30):
        done = run([TXRELAY, "--config", str(config_file), "--json", "tracker", "--once"],
                   env=env, timeout=120)
        ticks = json.loads(done.stdout)["ticks"]
        published += [d for tick in ticks for d in tick["dkim_published"]]
        if dual in published:
            break
    assert dual in published
    shown = txrelay("domain", "show", dual, "--json").json()["dkim_publication"]
    assert shown["state"] == "published" and shown["last_check_published"] is True
