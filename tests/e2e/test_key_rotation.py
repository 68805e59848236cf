"""A DKIM key rotation through the real relay: Postfix + milter sign with the old selector
until the switch, with the new one after the milter's policy refresh, and mail signed before
the switch still verifies while the old key is retiring (its record still published)."""

from __future__ import annotations

import uuid

import dkim
import pytest

from tests.harness.fixtures import RelayStack
from tests.harness.provision import Provisioned, dkim_dns, dkim_tags, txrelay_json
from tests.harness.smtp import build_message, submit

pytestmark = pytest.mark.e2e


def send_one(relay: RelayStack, shop: Provisioned, tag: str) -> bytes:
    rcpt = f"{tag}-{uuid.uuid4().hex[:8]}@rcpt.example.net"
    raw = build_message(shop.address(), [rcpt], subject=f"rotation {tag}")
    result = submit(shop.username, shop.password, shop.address(), [rcpt], raw, port=relay.port)
    assert result.delivered_to == [rcpt], result
    return relay.sink.wait_for_recipient(rcpt).raw


def test_mail_is_signed_with_the_old_selector_until_the_switch_and_the_new_one_after(
        relay: RelayStack, provisioned: Provisioned) -> None:
    config, domain = relay.config_file, provisioned.domain
    verify = dkim_dns(relay.database_url)
    old = txrelay_json(config, "domain", "show", domain)["selector"]

    rotated = txrelay_json(config, "domain", "rotate-key", domain, "--selector", "e2enext")
    assert {k["state"]: k["selector"] for k in rotated["keys"]} == {
        "signing": old, "pending": "e2enext"}
    relay.settle_policy()
    before = send_one(relay, provisioned, "before")
    assert (dkim_tags(before)["s"], dkim_tags(before)["d"]) == (old, domain)
    assert dkim.verify(before, dnsfunc=verify)

    # Public DNS cannot be asked from here: --force skips the lookup (the CLI tests cover it).
    txrelay_json(config, "domain", "switch-key", domain, "--force")
    relay.settle_policy()
    after = send_one(relay, provisioned, "after")
    assert (dkim_tags(after)["s"], dkim_tags(after)["d"]) == ("e2enext", domain)
    assert dkim.verify(after, dnsfunc=verify)
    assert dkim.verify(before, dnsfunc=verify), "the retiring key's record still verifies"

    txrelay_json(config, "domain", "retire-key", domain, old, "--force")
    assert not dkim.verify(before, dnsfunc=verify), "retired: its record is gone"
    assert dkim.verify(after, dnsfunc=verify)
