"""`txrelay domain dns` / `domain check`: every record a sending domain needs (DKIM, SPF,
DMARC), printed ready for the zone and checked against a real DNS server on loopback (NSD,
tests/harness/dns.py) through txrelay's [dns] resolver."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.cli.conftest import RELAY_INCLUDE, CliRun, Txrelay, printed_records
from tests.harness.dns import DnsServer, running_dns_server
from tests.harness.processes import port_open

Records = dict[str, list[tuple[str, str]]]


def _lines(result: CliRun) -> dict[str, str]:
    """`domain check` output: record label → its verdict line and fix line (the closing
    line on the domain's DKIM publication state, which starts with the domain, left out)."""
    found: dict[str, str] = {}
    label = ""
    for line in result.stdout.splitlines():
        if line.startswith("  fix: "):
            found[label] += "\n" + line
        elif line and not line.startswith("shop-"):
            label = line.split(" ")[0]
            found[label] = line
    return found


def test_dns_prints_dkim_spf_and_dmarc_ready_for_the_zone(
        txrelay: Txrelay, domain: str, zone: DnsServer) -> None:
    result = txrelay("domain", "dns", domain)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert f"._domainkey.{domain}. IN TXT ( \"v=DKIM1; k=rsa; p=" in out
    assert f'{domain}. IN TXT "v=spf1 include:{RELAY_INCLUDE} ~all"' in out
    assert (f'_dmarc.{domain}. IN TXT "v=DMARC1; p=none; '
            f'rua=mailto:dmarc-reports@{domain}"') in out
    assert f"{domain} has no SPF record yet" in out
    assert f"_dmarc.{domain} has no DMARC record yet" in out
    records = txrelay("domain", "dns", domain, "--json").json()["records"]
    assert [r["kind"] for r in records] == ["dkim", "spf", "dmarc"]
    assert records[0]["state"] == "signing"
    assert records[1]["value"] == f"v=spf1 include:{RELAY_INCLUDE} ~all"


def test_dns_lists_the_relay_addresses_when_there_is_no_include(
        txrelay: Txrelay, domain: str, zone: DnsServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TXRELAY_DNS_SPF_INCLUDE")
    monkeypatch.setenv("TXRELAY_DNS_RELAY_ADDRESSES", "192.0.2.10, 2001:db8::10, 198.51.100.0/28")
    monkeypatch.setenv("TXRELAY_DNS_DMARC_RUA", "mailto:reports@relay.example")
    result = txrelay("domain", "dns", domain)
    assert result.exit_code == 0, result.stderr
    assert (f'{domain}. IN TXT "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 ip4:198.51.100.0/28 '
            '~all"') in result.stdout
    assert "rua=mailto:reports@relay.example" in result.stdout
    assert f'{domain}._report._dmarc.relay.example TXT "v=DMARC1"' in result.stdout


def test_dns_without_relay_addresses_says_to_ask_the_relay_admin(
        txrelay: Txrelay, domain: str, zone: DnsServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TXRELAY_DNS_SPF_INCLUDE")
    monkeypatch.delenv("TXRELAY_DNS_RELAY_ADDRESSES")
    result = txrelay("domain", "dns", domain)
    assert result.exit_code == 0, result.stderr
    assert "relay's sending addresses are not configured" in result.stdout
    spf = txrelay("domain", "dns", domain, "--json").json()["records"][1]
    assert (spf["kind"], spf["value"], spf["zone_line"]) == ("spf", None, None)


def test_dns_extends_the_spf_record_the_domain_has_and_keeps_its_dmarc_record(
        txrelay: Txrelay, domain: str, zone: DnsServer) -> None:
    theirs = "v=spf1 mx include:_spf.mailbox.example -all"
    dmarc = "v=DMARC1; p=reject; rua=mailto:d@mailbox.example"
    zone.serve({domain: [("TXT", theirs), ("TXT", "google-site-verification=x")],
                f"_dmarc.{domain}": [("TXT", dmarc)]})
    result = txrelay("domain", "dns", domain)
    assert result.exit_code == 0, result.stderr
    merged = f"v=spf1 mx include:_spf.mailbox.example include:{RELAY_INCLUDE} -all"
    assert f'{domain}. IN TXT "{merged}"' in result.stdout
    assert f"{domain} already publishes '{theirs}'; there must be one SPF record per name, " \
        "so replace it with the record above" in result.stdout
    assert f'_dmarc.{domain}. IN TXT "{dmarc}"' in result.stdout
    assert "publishes this record already: keep it" in result.stdout
    assert "p=none" not in result.stdout
    records = txrelay("domain", "dns", domain, "--json").json()["records"]
    assert (records[1]["value"], records[1]["published"]) == (merged, [theirs])
    assert (records[2]["value"], records[2]["published"]) == (dmarc, [dmarc])

    zone.serve({domain: [("TXT", merged)]})
    again = txrelay("domain", "dns", domain)
    assert f"{domain} publishes this record already; nothing to change" in again.stdout


def test_dns_without_an_answer_from_dns_says_how_to_merge(
        txrelay: Txrelay, domain: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXRELAY_DNS_SPF_INCLUDE", RELAY_INCLUDE)
    with running_dns_server(tmp_path / "nsd", zones=("invalid",)) as elsewhere:
        monkeypatch.setenv("TXRELAY_DNS_RESOLVER", elsewhere.address)  # REFUSED for .example
        result = txrelay("domain", "dns", domain)
        as_json = txrelay("domain", "dns", domain, "--json")
    assert result.exit_code == 0, result.stderr
    assert f"txrelay could not look up the records {domain} has now" in result.stdout
    assert "do not add a second one" in result.stdout
    assert f'add "include:{RELAY_INCLUDE}" to it, before its "all" term' in result.stdout
    assert f'{domain}. IN TXT "v=spf1 include:{RELAY_INCLUDE} ~all"' in result.stdout
    data = as_json.json()
    assert "failed" in data["lookup_error"]
    assert data["records"][1]["published"] is None


def test_check_is_ok_when_every_printed_record_is_published(
        txrelay: Txrelay, domain: str, zone: DnsServer) -> None:
    zone.serve(printed_records(txrelay, domain))
    result = txrelay("domain", "check", domain)
    assert result.exit_code == 0, result.stderr
    lines = _lines(result)
    # The first check that finds the DKIM record makes the pending domain published.
    assert result.stdout.endswith(f"{domain} is published now: its live mail is signed and "
                                  "sent.\n")
    assert set(lines) == {"DKIM", "SPF", "DMARC"}
    assert all(" ok: " in line for line in lines.values()), result.stdout
    assert "authorises the relay (192.0.2.10, 2001:db8::10)" in lines["SPF"]
    assert "p=none" in lines["DMARC"] and "aligned" in lines["DMARC"]
    data = txrelay("domain", "check", domain, "--json").json()
    assert data["ready"] is True and data["status"] == "published"
    assert [(r["kind"], r["verdict"]) for r in data["records"]] == [
        ("dkim", "ok"), ("spf", "ok"), ("dmarc", "ok")]


def test_spf_authorising_the_relay_through_a_and_mx_is_ok(
        txrelay: Txrelay, domain: str, zone: DnsServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TXRELAY_DNS_SPF_INCLUDE")
    records = printed_records(txrelay, domain)
    records[domain] = [("TXT", "v=spf1 mx a:out.relay.example/30 -all"),
                       ("MX", f"10 mx.{domain}.")]
    records[f"mx.{domain}"] = [("A", "198.51.100.7"), ("AAAA", "2001:db8::10")]
    records["out.relay.example"] = [("A", "192.0.2.9")]  # /30 covers .8-.11
    zone.serve(records)
    result = txrelay("domain", "check", domain)
    assert result.exit_code == 0, result.stderr
    assert "authorises the relay (192.0.2.10, 2001:db8::10)" in _lines(result)["SPF"]


def _other_key() -> str:
    return base64.b64encode(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def _dkim_name(records: Records) -> str:
    return next(name for name in records if "._domainkey." in name)


def _without_dkim(records: Records, domain: str) -> None:
    del records[_dkim_name(records)]


def _other_dkim_key(records: Records, domain: str) -> None:
    records[_dkim_name(records)] = [("TXT", f"v=DKIM1; k=rsa; p={_other_key()}")]


def _without_spf(records: Records, domain: str) -> None:
    del records[domain]


def _spf_for_someone_else(records: Records, domain: str) -> None:
    records[domain] = [("TXT", "v=spf1 ip4:198.51.100.1 -all")]


def _two_spf_records(records: Records, domain: str) -> None:
    records[domain].append(("TXT", "v=spf1 mx -all"))


def _without_dmarc(records: Records, domain: str) -> None:
    del records[f"_dmarc.{domain}"]


def _dmarc_with_an_alignment_no_receiver_knows(records: Records, domain: str) -> None:
    records[f"_dmarc.{domain}"] = [("TXT", "v=DMARC1; p=reject; adkim=strict")]


def _dmarc_at_the_domain_itself(records: Records, domain: str) -> None:
    records[domain].append(("TXT", records.pop(f"_dmarc.{domain}")[0][1]))


@pytest.mark.parametrize(("break_zone", "label", "verdict", "detail", "fix"), [
    (_without_dkim, "DKIM", "missing", "no TXT record at", "fix: publish: txr"),
    (_other_dkim_key, "DKIM", "mismatch", "publishes a different key", "fix: publish: txr"),
    (_without_spf, "SPF", "missing", "has no SPF record",
     f'fix: publish: {{domain}}. IN TXT "v=spf1 include:{RELAY_INCLUDE} ~all"'),
    (_spf_for_someone_else, "SPF", "mismatch",
     "does not authorise the relay: 192.0.2.10 gets fail",
     f'fix: replace it with: {{domain}}. IN TXT "v=spf1 ip4:198.51.100.1 '
     f'include:{RELAY_INCLUDE} -all"'),
    (_two_spf_records, "SPF", "mismatch", "has 2 SPF records",
     f'fix: replace them with one record: {{domain}}. IN TXT "v=spf1 include:{RELAY_INCLUDE} '
     'mx ~all"'),
    (_without_dmarc, "DMARC", "missing", "no DMARC record at _dmarc.{domain}",
     'fix: publish: _dmarc.{domain}. IN TXT "v=DMARC1; p=none; '
     'rua=mailto:dmarc-reports@{domain}"'),
    (_dmarc_with_an_alignment_no_receiver_knows, "DMARC", "mismatch",
     "adkim=strict is not r (relaxed) or s (strict); receivers ignore the record",
     "fix: replace it with: _dmarc.{domain}. IN TXT"),
    (_dmarc_at_the_domain_itself, "DMARC", "missing",
     "a DMARC record is published at {domain} itself", "fix: move it: _dmarc.{domain}."),
])
def test_each_wrong_record_gets_its_verdict_its_fix_and_exit_status_1(
        txrelay: Txrelay, domain: str, zone: DnsServer,
        break_zone: Callable[[Records, str], None], label: str, verdict: str, detail: str,
        fix: str) -> None:
    records = printed_records(txrelay, domain)
    break_zone(records, domain)
    zone.serve(records)
    result = txrelay("domain", "check", domain)
    assert result.exit_code == 1
    lines = _lines(result)
    assert lines[label].startswith(f"{label} {verdict}: "), result.stdout
    assert detail.format(domain=domain) in lines[label]
    assert fix.format(domain=domain) in lines[label]
    assert all(" ok: " in line for other, line in lines.items() if other != label)
    assert result.error.startswith(f"{domain} is not ready: {label} {verdict}: ")
    as_json = txrelay("domain", "check", domain, "--json")
    assert as_json.exit_code == 1
    data = _json(as_json)
    assert data["ready"] is False
    by_kind = {r["kind"]: r for r in data["records"]}
    assert by_kind[label.lower()]["verdict"] == verdict
    assert fix.format(domain=domain).removeprefix("fix: ") in by_kind[label.lower()]["fix"]
    assert [r["verdict"] for r in data["records"] if r["kind"] != label.lower()] == ["ok", "ok"]


def _json(result: CliRun) -> Any:
    """The JSON a failing check prints as well (CliRun.json() wants exit status 0)."""
    return json.loads(result.stdout)


def test_check_sees_a_record_published_after_a_failed_check(
        txrelay: Txrelay, domain: str, zone: DnsServer) -> None:
    records = printed_records(txrelay, domain)
    spf = records.pop(domain)
    zone.serve(records)
    assert txrelay("domain", "check", domain).exit_code == 1
    zone.serve({**records, domain: spf})
    result = txrelay("domain", "check", domain)
    assert result.exit_code == 0, result.stdout + result.stderr


def test_during_a_rotation_both_keys_are_printed_and_checked(
        txrelay: Txrelay, domain: str, zone: DnsServer) -> None:
    before = printed_records(txrelay, domain)
    assert txrelay("domain", "rotate-key", domain, "--selector", "next").exit_code == 0
    printed = txrelay("domain", "dns", domain)
    assert printed.stdout.count("._domainkey.") == 2
    assert "DKIM for the new key (pending since" in printed.stdout
    zone.serve(before)  # only the signing key's record
    result = txrelay("domain", "check", domain)
    assert result.exit_code == 1
    assert f"DKIM (pending key next) missing: no TXT record at next._domainkey.{domain}" \
        in result.stdout
    assert "DKIM pending" not in result.stdout
    zone.serve(printed_records(txrelay, domain))
    result = txrelay("domain", "check", domain, "--json")
    assert result.exit_code == 0, result.stdout
    keys = [(k["selector"], k["state"], k["status"]) for k in result.json()["keys"]]
    assert keys == [("txr202611", "signing", "published"), ("next", "pending", "published")]


def test_a_parent_domains_dmarc_record_applies_to_a_subdomain(
        txrelay: Txrelay, account: str, unique: str, zone: DnsServer) -> None:
    parent = f"acme-{unique}.example"
    domain = f"mail.{parent}"
    assert txrelay("domain", "add", account, domain, "--list-help",
                   "https://h.example/").exit_code == 0
    records = printed_records(txrelay, domain)
    del records[f"_dmarc.{domain}"]
    records[f"_dmarc.{parent}"] = [("TXT", "v=DMARC1; p=reject; sp=quarantine; adkim=s")]
    zone.serve(records)
    result = txrelay("domain", "check", domain)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert (f"_dmarc.{parent} (inherited by {domain}) applies policy p=quarantine"
            in _lines(result)["DMARC"])


def test_spf_over_the_lookup_limit_is_a_mismatch(txrelay: Txrelay, domain: str,
                                                 zone: DnsServer) -> None:
    records = printed_records(txrelay, domain)
    records[domain] = [("TXT", "v=spf1 include:l1.relay.example ~all")]
    for level in range(1, 12):
        records[f"l{level}.relay.example"] = [
            ("TXT", f"v=spf1 include:l{level + 1}.relay.example -all")]
    records["l12.relay.example"] = [("TXT", f"v=spf1 include:{RELAY_INCLUDE} -all")]
    zone.serve(records)
    result = txrelay("domain", "check", domain)
    assert result.exit_code == 1
    assert "SPF mismatch: " in _lines(result)["SPF"]
    assert "more than 10 DNS lookups" in _lines(result)["SPF"]


def test_what_cannot_be_decided_is_a_warning_with_exit_status_0(
        txrelay: Txrelay, domain: str, zone: DnsServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    records = printed_records(txrelay, domain)
    records[domain] = [("TXT", "v=spf1 exists:%{i}.spf.relay.example -all")]
    zone.serve(records)
    result = txrelay("domain", "check", domain)
    assert result.exit_code == 0, result.stderr
    assert _lines(result)["SPF"].startswith("SPF warning: cannot tell whether")
    monkeypatch.delenv("TXRELAY_DNS_SPF_INCLUDE")
    monkeypatch.delenv("TXRELAY_DNS_RELAY_ADDRESSES")
    unconfigured = txrelay("domain", "check", domain, "--json")
    assert unconfigured.exit_code == 0, unconfigured.stderr
    spf = _json(unconfigured)["records"][1]
    assert spf["verdict"] == "warning" and "relay's sending addresses" in spf["fix"]


def test_a_resolver_that_refuses_to_answer_gives_dns_errors(
        txrelay: Txrelay, domain: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with running_dns_server(tmp_path / "nsd", zones=("invalid",)) as elsewhere:
        monkeypatch.setenv("TXRELAY_DNS_RESOLVER", elsewhere.address)  # REFUSED for .example
        result = txrelay("domain", "check", domain)
        as_json = txrelay("domain", "check", domain, "--json")
    assert result.exit_code == 1
    assert all(" dns-error: " in line for line in _lines(result).values()), result.stdout
    assert "DNS lookup" in result.error and "failed" in result.error
    assert "try again later" in result.stdout
    assert as_json.exit_code == 1
    assert {r["verdict"] for r in _json(as_json)["records"]} == {"dns-error"}


def test_the_dns_server_is_stopped_even_when_the_test_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="the test failed"), \
            running_dns_server(tmp_path / "nsd") as server:
        assert server.process is not None
        process = server.process.process
        assert process is not None and process.poll() is None
        raise RuntimeError("the test failed")
    assert process.poll() is not None, "NSD still runs"
    assert not port_open(server.port)
