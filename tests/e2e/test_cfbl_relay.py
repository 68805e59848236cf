"""CFBL on every message (RFC 9477) through real Postfix, with the relay's own DKIM key.

The main stack's milter has the relay-wide bounce domain but no relay key ([bounce]
dkim_key_file absent): mail of a domain without its own return path gets no CFBL headers
there, and the milter said so when it started. This module starts a second milter whose
configuration has the key (made as `txrelay init` makes it) and [dns] resolver pointing at
NSD on loopback, behind a second submission service of the same Postfix. `txrelay bounce dns`
prints the bounce domain's records, NSD serves them, `txrelay bounce check` finds them; then
a shop's message carries exactly one CFBL-Address on the bounce domain and one
CFBL-Feedback-ID naming the message, both over-signed in the h= of the author's signature and
of the relay's (d= the bounce domain), and dkimpy verifies both with keys looked up in NSD."""

from __future__ import annotations

import dataclasses
import email
import email.policy
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
from tests.harness.provision import Provisioned, provision, txrelay_json
from tests.harness.services import MilterProcess
from tests.harness.smtp import SUBMISSION_HOST, build_message, submit
from tests.harness.stack import _add_second_submission
from txrelay.bounce_dkim import write_bounce_dkim_key
from txrelay.bounce_secret import read_bounce_secret
from txrelay.config import Config, load_config, render_toml
from txrelay.policy.return_path import read_feedback_id, read_return_path
from txrelay.sink import Capture

pytestmark = pytest.mark.e2e

MX_HOST = "mx.relay.test"
# The bounce domain (tests/harness/stackconfig.py) and the harness's shop domains.
ZONES = ("relay.test", "example.com")
SELECT_TXN = """
SELECT m.txn_id FROM messages m JOIN ledger l ON l.message_id = m.id WHERE l.recipient = %s"""


@dataclasses.dataclass
class Signer:
    """The second submission port, its milter (with the relay's DKIM key) and NSD."""

    config: Config
    config_file: Path
    port: int
    milter: MilterProcess
    zone: DnsServer
    database_url: str
    records: dict[str, list[Record]] = dataclasses.field(default_factory=dict)

    def cli(self, *args: str) -> Any:
        return txrelay_json(self.config_file, *args)

    def cli_exit(self, *args: str) -> tuple[int, Any]:
        done = run([TXRELAY, "--config", str(self.config_file), "--json", *args], check=False)
        return done.returncode, json.loads(done.stdout)

    def publish(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            if record["value"] is not None:
                self.records.setdefault(record["name"], []).append(
                    (record["type"], record["value"]))
        self.zone.serve(self.records)

    def settle(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute("SELECT version FROM policy_version").fetchone()
        wanted = int(row[0]) if row else 0
        wait_until(lambda: self.milter.loaded_policy_version() >= wanted, 20,
                   f"the relay-key milter loading policy version {wanted}", self.milter.log)

    def dnsfunc(self, name: bytes, timeout: int = 5) -> bytes | None:
        """dkimpy's key lookup, asked of NSD."""
        query = dns.message.make_query(name.decode(), "TXT")
        answer = dns.query.udp(query, "127.0.0.1", port=self.zone.port, timeout=timeout)
        for rrset in answer.answer:
            for rdata in rrset:
                return b"".join(rdata.strings)  # type: ignore[attr-defined]
        return None


def _signer_config(relay: RelayStack, directory: Path, resolver: str) -> Path:
    (directory / "milter").mkdir(mode=0o755, parents=True, exist_ok=True)
    key_file = directory / "bounce-dkim.pem"
    write_bounce_dkim_key(key_file)
    base: Config = relay.config
    config = dataclasses.replace(
        base,
        milter=dataclasses.replace(base.milter, socket=f"unix:{directory}/milter/milter.sock",
                                   journal_dir=str(directory / "journal"),
                                   node_name="cfbl-relay"),
        dns=dataclasses.replace(base.dns, resolver=resolver, relay_addresses="127.0.0.1"),
        bounce=dataclasses.replace(base.bounce, dkim_key_file=str(key_file), mx_host=MX_HOST))
    path = directory / "txrelay.toml"
    path.write_text(render_toml(config))
    path.chmod(0o640)
    return path


@pytest.fixture(scope="module")
def signer(relay: RelayStack, stopper: Stopper) -> Iterator[Signer]:
    directory = relay.config_file.parent.parent / f"cfbl-relay-{uuid.uuid4().hex[:6]}"
    with running_dns_server(directory / "nsd", ZONES) as zone:
        config_file = _signer_config(relay, directory, zone.address)
        config = load_config(config_file, required=True, environ={})
        milter = MilterProcess(config, config_file, directory / "milter.log")
        milter.start()
        port = free_port()
        _add_second_submission(relay.postfix, relay.config, config, port)
        service = f"{SUBMISSION_HOST}:{port}/inet"
        try:
            relay.postfix.reload()
            wait_until(lambda: port_open(port), 15, "the relay-key submission port")
            yield Signer(config, config_file, port, milter, zone, relay.database_url)
        finally:
            relay.postfix.postconf("-MX", service)
            relay.postfix.reload()
            stopper.stop_later(milter.stop)


def _signatures(raw: bytes) -> list[dict[str, str]]:
    """Each DKIM-Signature's tags, top first, whitespace removed."""
    message = email.message_from_bytes(raw)
    found = []
    for value in message.get_all("DKIM-Signature") or []:
        flat = "".join(str(value).split())
        found.append(dict(part.split("=", 1) for part in flat.split(";") if "=" in part))
    return found


def _send(signer: Signer, relay: RelayStack, shop: Provisioned, to: str) -> Capture:
    raw = build_message(shop.address(), [to], extra_headers=(
        ("CFBL-Address", "fbl@elsewhere.example; report=arf"),
        ("CFBL-Feedback-ID", "the-shop-s-own")))
    result = submit(shop.username, shop.password, shop.address(), [to], raw, port=signer.port)
    assert result.delivered_to == [to], result
    return relay.sink.wait_for_recipient(to)


def test_the_bounce_domain_s_records_are_printed_and_checked(signer: Signer) -> None:
    bounce = signer.config.bounce
    printed = signer.cli("bounce", "dns")
    assert printed["domain"] == bounce.domain and printed["dkim_key_error"] is None
    by_type = {(r["kind"], r["type"]): r for r in printed["records"]}
    dkim_record = by_type[("dkim", "TXT")]
    assert dkim_record["name"] == f"{bounce.dkim_selector}._domainkey.{bounce.domain}"
    assert dkim_record["value"].startswith("v=DKIM1; k=rsa; p=")
    assert by_type[("return-path", "MX")]["value"] == f"10 {MX_HOST}."
    assert by_type[("spf", "TXT")]["value"] is not None

    status, before = signer.cli_exit("bounce", "check")
    assert status == 1 and before["ready"] is False
    assert {r["kind"]: r["verdict"] for r in before["records"]}["dkim"] == "missing"

    signer.publish(printed["records"])
    status, after = signer.cli_exit("bounce", "check")
    assert status == 0, after
    assert after["ready"] is True
    assert {r["verdict"] for r in after["records"]} == {"ok"}, after


def test_mail_without_its_own_return_path_carries_cfbl_signed_by_author_and_relay(
        relay: RelayStack, signer: Signer) -> None:
    bounce = signer.config.bounce
    signer.publish([r for r in signer.cli("bounce", "dns")["records"] if r["kind"] == "dkim"])
    shop = provision(signer.config_file, f"cfbl-{uuid.uuid4().hex[:8]}")
    signer.publish([r for r in signer.cli("domain", "dns", shop.domain)["records"]
                    if r["kind"] == "dkim"])
    signer.settle()
    to = f"cfbl-{uuid.uuid4().hex[:8]}@rcpt.example.net"
    captured = _send(signer, relay, shop, to)
    raw = captured.raw

    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message.get_all("CFBL-Address") == [f"fbl@{bounce.domain}; report=arf"]
    [feedback] = message.get_all("CFBL-Feedback-ID")
    secret = read_bounce_secret(Path(bounce.secret_file))
    with psycopg.connect(relay.database_url, autocommit=True) as conn:
        row = conn.execute(SELECT_TXN, (to,)).fetchone()
    assert row is not None
    found = read_feedback_id(secret, str(feedback))
    assert found is not None and (found.account_id, found.txn_id) == (shop.account_id, row[0])
    assert read_return_path(secret, captured.mail_from) == row[0]

    author, relay_signature = _signatures(raw)  # the author's stays on top
    assert author["d"] == shop.domain
    assert (relay_signature["d"], relay_signature["s"]) == (bounce.domain, bounce.dkim_selector)
    for tags in (author, relay_signature):
        signed = tags["h"].lower().split(":")
        assert signed.count("cfbl-address") == 2 and signed.count("cfbl-feedback-id") == 2
    for index in (0, 1):
        assert dkim.DKIM(raw).verify(idx=index, dnsfunc=signer.dnsfunc), index


def test_without_the_relay_key_the_milter_warns_at_start(relay: RelayStack) -> None:
    log = relay.milter.process.log_path.read_text(errors="replace")
    assert "event=relay_dkim_key_missing" in log
    assert "[bounce] dkim_key_file" in log and "txrelay init" in log
