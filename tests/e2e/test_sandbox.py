"""Sandbox connections through real Postfix (issue 14, item 2).

A sandbox connection's mail takes the whole path — STARTTLS and AUTH, sender checks,
List-Help, DKIM — and the client gets 250, but the milter keeps the message in PostgreSQL
and answers DISCARD: the capture sink receives nothing, no quota is used, `stats` counts it
as sandboxed and `messages show ID --raw` prints it as the receiver would have got it, its
DKIM signature valid (dkimpy). The DKIM gate of test_dkim_publication (a second milter with
[dkim] require_published = true, NSD on loopback) shows that a pending domain may send
sandbox mail while live mail from it is refused."""

from __future__ import annotations

import email
import uuid

import dkim
import pytest

from tests.e2e import test_dkim_publication as publication
from tests.e2e.test_dkim_publication import Gate
from tests.harness.fixtures import RelayStack
from tests.harness.processes import TXRELAY, run
from tests.harness.smtp import build_message, submit

pytestmark = pytest.mark.e2e
gate = publication.gate  # its gated milter and NSD, as a fixture of this module too


def _account(gate: Gate, domain: str) -> str:
    name = f"sbx-{uuid.uuid4().hex[:8]}"
    gate.cli("account", "create", name, "--admin-email", f"admin@{name}.example")
    gate.cli("domain", "add", name, domain, "--list-help", "https://help.example/")
    return name


def _raw(gate: Gate, ref: str) -> bytes:
    """`txrelay messages show REF --raw`, its bytes."""
    done = run([TXRELAY, "--config", str(gate.config_file), "messages", "show", ref, "--raw"])
    return done.stdout.encode("utf-8", "surrogateescape")


def _record_lookup(gate: Gate, domain: str) -> dict[bytes, bytes]:
    """DOMAIN's DKIM records as `domain dns` prints them, by name (not published in DNS)."""
    return {
        f"{r['name'].rstrip('.')}.".encode(): r["value"].encode()
        for r in gate.cli("domain", "dns", domain)["records"] if r["kind"] == "dkim"
    }


def test_pending_domain_sandbox_mail_is_captured_verifiable_unbilled_and_not_delivered(
        relay: RelayStack, gate: Gate) -> None:
    token = uuid.uuid4().hex[:8]
    domain = f"pending-{token}.example"
    account = _account(gate, domain)
    assert gate.cli("domain", "show", domain)["dkim_publication"]["state"] == "pending"
    sandbox = gate.cli("connection", "create", account, "staging", "--domain", domain,
                       "--sandbox")
    live = gate.cli("connection", "create", account, "shop", "--domain", domain)
    quota_before = gate.cli("quota", "show", account)["quota_remaining"]
    gate.settle()

    # Live mail from the pending domain: refused at MAIL, naming the record.
    rcpt = f"live-{token}@rcpt.example.net"
    refused = submit(live["username"], live["password"], f"orders@{domain}", [rcpt],
                     build_message(f"orders@{domain}", [rcpt]), port=gate.port)
    assert refused.mail.code == 550 and "5.7.26" in refused.mail.text, refused

    # Sandbox mail from it: 250 for the client, captured, never delivered.
    rcpts = [f"a-{token}@rcpt.example.net", f"b-{token}@rcpt.example.net"]
    message_id = f"<sandbox-{token}@{domain}>"
    raw = build_message(f"Shop <orders@{domain}>", rcpts,
                        extra_headers=[("X-Order", "4711")]).replace(
        b"Message-ID: <", b"X-Old-Id: <", 1)
    raw = f"Message-ID: {message_id}\r\n".encode() + raw
    sent = submit(sandbox["username"], sandbox["password"], f"orders@{domain}", rcpts, raw,
                  port=gate.port)
    assert sent.delivered_to == rcpts, sent
    assert sent.data is not None and sent.data.code == 250

    # A live mail sent after it reaches the sink; the sandbox mail never does.
    other = f"other-{token}"
    other_domain = f"{other}.example"
    other_account = _account(gate, other_domain)
    gate.publish_dkim(other_domain)
    run([TXRELAY, "--config", str(gate.config_file), "domain", "check", other_domain],
        check=False)
    shop = gate.cli("connection", "create", other_account, "shop", "--domain", other_domain)
    gate.settle()
    marker = f"after-{token}@rcpt.example.net"
    assert submit(shop["username"], shop["password"], f"orders@{other_domain}", [marker],
                  build_message(f"orders@{other_domain}", [marker]),
                  port=gate.port).delivered_to == [marker]
    relay.sink.wait_for_recipient(marker)
    assert all(relay.sink.for_recipient(r) == [] for r in rcpts)

    # As the receiver would have got it: our headers, the DKIM signature valid.
    captured = _raw(gate, message_id)
    parsed = email.message_from_bytes(captured)
    assert parsed["List-Help"] == "<https://help.example/>"
    assert parsed["X-Order"] == "4711" and parsed["Message-ID"] == message_id
    assert captured.endswith(b"\r\n\r\nThank you for your order.\r\n")
    records = _record_lookup(gate, domain)
    assert dkim.verify(captured, dnsfunc=lambda name, timeout=5: records.get(name))
    tampered = captured.replace(b"Thank you", b"Thank YOU")
    assert not dkim.verify(tampered, dnsfunc=lambda name, timeout=5: records.get(name))

    [story] = gate.cli("messages", "show", message_id)
    assert story["decision"]["verdict"] == "sandboxed"
    assert _raw(gate, story["message"]["txn_id"]) == captured
    found = gate.cli("messages", "search", "--account", account)
    assert sorted((r["recipient"], r["state"]) for r in found) == [
        (r, "sandboxed") for r in rcpts]

    # Not billed: the quota is where it was, and stats count the recipients apart.
    assert gate.cli("quota", "show", account)["quota_remaining"] == quota_before
    stats = {row["connection"]: row for row in gate.cli("stats", "--account", account)}
    assert (stats["staging"]["arrived"], stats["staging"]["sandboxed"]) == (0, 2)
    assert stats["staging"]["last_used_at"] is not None and stats["staging"]["active"]
    assert (stats["shop"]["arrived"], stats["shop"]["sandboxed"]) == (0, 0)
    by = gate.cli("stats", "--by", "1h", "--account", account, "--since", "2h")
    assert sum(row["sandboxed"] for row in by if row["connection"] == "staging") == 2
