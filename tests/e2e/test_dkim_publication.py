"""DKIM before live mail, and dual signing, through real Postfix with a real DNS server.

The main stack's milter runs with [dkim] require_published = false (tests/conftest.py: it has
no DNS server). This module starts a second milter with the default, true, and [dns]
resolver pointing at NSD on loopback (tests/harness/dns.py), behind a second submission
service of the same Postfix: the pending domain's mail is refused there with 550 5.7.26
naming the record; once NSD serves the record and `domain check` runs, it is accepted and
signed. Signatures are verified by dkimpy with its keys looked up in NSD, by Node.js's
mailauth (RSA and Ed25519) and by Perl's Mail::DKIM (RSA only: Debian's Mail::DKIM 1.20230212
has no Ed25519 module)."""

from __future__ import annotations

import dataclasses
import email
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import dns.message
import dns.query
import psycopg
import pytest

from tests.harness.dns import DnsServer, Record, running_dns_server
from tests.harness.fixtures import RelayStack
from tests.harness.processes import TXRELAY, Stopper, free_port, port_open, run, wait_until
from tests.harness.provision import txrelay_json
from tests.harness.second_verifier import mail_dkim_results, mailauth_results, passes_for
from tests.harness.services import MilterProcess
from tests.harness.smtp import SUBMISSION_HOST, build_message, smtp_session, submit, transact
from tests.harness.stack import _add_second_submission
from txrelay.config import Config, load_config, render_toml

pytestmark = pytest.mark.e2e


@dataclasses.dataclass
class Gate:
    """The second submission port, its milter (require_published = true) and NSD."""

    config_file: Path
    port: int
    milter: MilterProcess
    zone: DnsServer
    database_url: str
    records: dict[str, list[Record]] = dataclasses.field(default_factory=dict)

    def cli(self, *args: str) -> Any:
        return txrelay_json(self.config_file, *args)

    def publish_dkim(self, domain: str) -> None:
        """Put DOMAIN's DKIM records, as `domain dns --json` prints them, into NSD."""
        for record in self.cli("domain", "dns", domain)["records"]:
            if record["kind"] == "dkim":
                self.records[record["name"]] = [("TXT", record["value"])]
        self.zone.serve(self.records)

    def settle(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute("SELECT version FROM policy_version").fetchone()
        wanted = int(row[0]) if row else 0
        wait_until(lambda: self.milter.loaded_policy_version() >= wanted, 20,
                   f"the gated milter loading policy version {wanted}", self.milter.log)

    def dnsfunc(self, name: bytes, timeout: int = 5) -> bytes | None:
        """dkimpy's key lookup, asked of NSD."""
        query = dns.message.make_query(name.decode(), "TXT")
        answer = dns.query.udp(query, "127.0.0.1", port=self.zone.port, timeout=timeout)
        for rrset in answer.answer:
            for rdata in rrset:
                return b"".join(rdata.strings)  # type: ignore[attr-defined]
        return None


def _gated_config(relay: RelayStack, directory: Path, resolver: str) -> Path:
    (directory / "milter").mkdir(mode=0o755, parents=True, exist_ok=True)
    base: Config = relay.config
    config = dataclasses.replace(
        base,
        milter=dataclasses.replace(base.milter, socket=f"unix:{directory}/milter/milter.sock",
                                   journal_dir=str(directory / "journal"),
                                   node_name="dkim-gate"),
        dkim=dataclasses.replace(base.dkim, require_published=True),
        dns=dataclasses.replace(base.dns, resolver=resolver))
    path = directory / "txrelay.toml"
    path.write_text(render_toml(config))
    path.chmod(0o640)
    return path


@pytest.fixture(scope="module")
def gate(relay: RelayStack, stopper: Stopper) -> Iterator[Gate]:
    directory = relay.config_file.parent.parent / f"dkim-gate-{uuid.uuid4().hex[:6]}"
    with running_dns_server(directory / "nsd") as zone:
        config_file = _gated_config(relay, directory, zone.address)
        config = load_config(config_file, required=True, environ={})
        milter = MilterProcess(config, config_file, directory / "milter.log")
        milter.start()
        port = free_port()
        _add_second_submission(relay.postfix, relay.config, config, port)
        service = f"{SUBMISSION_HOST}:{port}/inet"
        try:
            relay.postfix.reload()
            wait_until(lambda: port_open(port), 15, "the gated submission port")
            yield Gate(config_file, port, milter, zone, relay.database_url)
        finally:
            relay.postfix.postconf("-MX", service)
            relay.postfix.reload()
            stopper.stop_later(milter.stop)


def _shop(gate: Gate, *domains: str, algorithms: str = "") -> tuple[str, str]:
    """An account with DOMAINS on one connection; (username, password)."""
    name = f"gate-{uuid.uuid4().hex[:8]}"
    gate.cli("account", "create", name, "--admin-email", f"admin@{name}.example")
    for domain in domains:
        extra = ["--algorithms", algorithms] if algorithms else []
        gate.cli("domain", "add", name, domain, "--list-help", "https://help.example/", *extra)
    args = ["connection", "create", name, "shop"]
    for domain in domains:
        args += ["--domain", domain]
    made = gate.cli(*args)
    return made["username"], made["password"]


def _check(gate: Gate, domain: str) -> dict[str, Any]:
    """`domain check --json` (exit 1 here: NSD serves no SPF or DMARC record)."""
    done = run([TXRELAY, "--config", str(gate.config_file), "--json", "domain", "check",
                domain], check=False)
    return dict(json.loads(done.stdout))


def test_a_pending_domain_is_refused_until_its_record_is_in_dns_and_checked(
        relay: RelayStack, gate: Gate) -> None:
    token = uuid.uuid4().hex[:8]
    live, pending = f"live-{token}.example", f"new-{token}.example"
    username, password = _shop(gate, live, pending)
    selector = gate.cli("domain", "show", pending)["selector"]
    assert gate.cli("domain", "show", pending)["dkim_publication"]["state"] == "pending"
    gate.publish_dkim(live)
    assert _check(gate, live)["dkim_publication"]["state"] == "published"
    gate.settle()

    rcpt = f"p-{token}@rcpt.example.net"
    raw = build_message(f"orders@{pending}", [rcpt])
    refused = submit(username, password, f"orders@{pending}", [rcpt], raw, port=gate.port)
    assert refused.mail.code == 550, refused
    assert "5.7.26" in refused.mail.text
    assert f"{selector}._domainkey.{pending}" in refused.mail.text
    assert f"txrelay domain check {pending}" in refused.mail.text

    # The envelope sender's domain is live, the From: header's is not: refused at the end.
    with smtp_session(username, password, port=gate.port) as client:
        header_only = transact(client, f"orders@{live}", [rcpt], raw)
    assert header_only.mail.code == 250 and header_only.data is not None, header_only
    assert header_only.data.code == 550 and "5.7.26" in header_only.data.text, header_only
    assert f"{selector}._domainkey.{pending}" in header_only.data.text

    # The main stack's milter (require_published = false) signs it regardless.
    assert submit(username, password, f"orders@{pending}", [rcpt], raw,
                  port=relay.port).delivered_to == [rcpt]
    relay.sink.wait_for_recipient(rcpt)

    gate.publish_dkim(pending)
    checked = _check(gate, pending)
    assert checked["dkim_publication"]["state"] == "published", checked
    assert checked["dkim_publication"]["last_checked_at"] is not None
    shown = gate.cli("domain", "list", "--account", gate.cli("domain", "show", pending)["account"])
    assert {d["domain"]: d["dkim_publication"]["state"] for d in shown} == {
        live: "published", pending: "published"}
    gate.settle()

    later = f"q-{token}@rcpt.example.net"
    raw = build_message(f"orders@{pending}", [later])
    accepted = submit(username, password, f"orders@{pending}", [later], raw, port=gate.port)
    assert accepted.delivered_to == [later], accepted
    signed = relay.sink.wait_for_recipient(later).raw
    assert dkim.verify(signed, dnsfunc=gate.dnsfunc)


def _signatures(raw: bytes) -> list[dict[str, str]]:
    message = email.message_from_bytes(raw)
    found = []
    for value in message.get_all("DKIM-Signature") or []:
        flat = "".join(str(value).split())
        found.append(dict(part.split("=", 1) for part in flat.split(";") if "=" in part))
    return found


def test_dual_signed_mail_verifies_with_both_signatures(relay: RelayStack, gate: Gate) -> None:
    token = uuid.uuid4().hex[:8]
    domain = f"dual-{token}.example"
    username, password = _shop(gate, domain, algorithms="rsa,ed25519")
    shown = gate.cli("domain", "show", domain)
    assert shown["algorithms"] == ["rsa", "ed25519"]
    assert [(k["algorithm"], k["state"]) for k in shown["keys"]] == [
        ("rsa", "signing"), ("ed25519", "signing")]
    printed = [r for r in gate.cli("domain", "dns", domain)["records"] if r["kind"] == "dkim"]
    assert [r["value"].split(";")[1].strip() for r in printed] == ["k=rsa", "k=ed25519"]

    gate.publish_dkim(domain)
    checked = _check(gate, domain)
    assert [(k["state"], k["status"]) for k in checked["keys"]] == [
        ("signing", "published"), ("signing", "published")]
    assert checked["dkim_publication"]["state"] == "published"
    gate.settle()

    rcpt = f"d-{token}@rcpt.example.net"
    raw = build_message(f"orders@{domain}", [rcpt])
    assert submit(username, password, f"orders@{domain}", [rcpt], raw,
                  port=gate.port).delivered_to == [rcpt]
    signed = relay.sink.wait_for_recipient(rcpt).raw
    signatures = _signatures(signed)
    assert sorted(s["a"] for s in signatures) == ["ed25519-sha256", "rsa-sha256"]
    assert signatures[0]["h"] == signatures[1]["h"] and signatures[0]["bh"] == signatures[1]["bh"]
    assert {s["d"] for s in signatures} == {domain}

    # dkimpy, keys from NSD: each signature on its own.
    for index in range(2):
        assert dkim.DKIM(signed).verify(idx=index, dnsfunc=gate.dnsfunc), signatures[index]
    altered = signed.replace(b"Thank you", b"Thank YOU")
    for index in range(2):
        try:
            ok = dkim.DKIM(altered).verify(idx=index, dnsfunc=gate.dnsfunc)
        except dkim.DKIMException:
            ok = False
        assert not ok

    # Node.js's mailauth, a second implementation that knows Ed25519: both signatures pass.
    messages = {"dual": signed, "altered": altered}
    verdicts = mailauth_results(relay.database_url, messages)
    for algorithm in ("rsa-sha256", "ed25519-sha256"):
        assert passes_for(verdicts["dual"], domain, algorithm), verdicts
        assert not passes_for(verdicts["altered"], domain, algorithm), verdicts
    print(f"\nmailauth on the dual-signed message: {verdicts['dual']}")

    # Perl's Mail::DKIM: the RSA signature passes; it cannot check Ed25519 (no module in
    # Debian's 1.20230212) and says so ("unsupported algorithm") instead of failing the mail.
    perl = mail_dkim_results(relay.database_url, messages)
    assert passes_for(perl["dual"], domain), perl
    assert not passes_for(perl["altered"], domain), perl
    print(f"Mail::DKIM on the dual-signed message: {perl['dual']}")
