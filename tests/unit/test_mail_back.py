"""Where a message's bounces and complaints go: return path and CFBL headers (policy only)."""

from __future__ import annotations

import uuid

import pytest

from txrelay.policy.mail_back import bounce_domain, cfbl_aligned, mail_back
from txrelay.policy.return_path import read_feedback_id, read_return_path
from txrelay.policy.snapshot import ConnectionPolicy, DomainPolicy

SECRET = bytes(range(32))
RELAY = "bounces.relay.example"


def domain(return_path: str = "") -> DomainPolicy:
    return DomainPolicy("shop.example", 7, "https://shop.example/help", "s", "rsa", None,
                        return_path=return_path)


def connection(keep: bool = False) -> ConnectionPolicy:
    return ConnectionPolicy(11, "Web shop", 7, True, frozenset({"shop.example"}), 0,
                            keep_bounces=keep)


def test_the_relay_wide_return_path_names_the_message_but_cfbl_needs_alignment() -> None:
    txn = uuid.uuid4()
    back = mail_back(SECRET, txn, domain(), connection(), RELAY)
    assert back.bounce_domain == RELAY
    assert back.envelope_sender is not None and back.envelope_sender.endswith(f"@{RELAY}")
    assert read_return_path(SECRET, back.envelope_sender) == txn
    assert (back.cfbl_address, back.feedback_id) == (None, None)  # relay.example ≠ shop


def test_a_domain_of_its_own_gets_the_return_path_and_both_cfbl_headers() -> None:
    txn = uuid.uuid4()
    back = mail_back(SECRET, txn, domain("bounces.shop.example"), connection(), RELAY)
    assert back.envelope_sender is not None
    assert back.envelope_sender.endswith("@bounces.shop.example")
    assert back.cfbl_address == "fbl@bounces.shop.example; report=arf"
    assert back.feedback_id is not None
    found = read_feedback_id(SECRET, back.feedback_id)
    assert found is not None and (found.account_id, found.connection_id, found.txn_id) == (
        7, 11, txn)


def test_a_relay_wide_domain_under_the_signing_domain_is_aligned() -> None:
    back = mail_back(SECRET, uuid.uuid4(), domain(), connection(), "fb.shop.example")
    assert back.cfbl_address == "fbl@fb.shop.example; report=arf"


def test_keep_leaves_the_envelope_sender_but_still_adds_cfbl() -> None:
    back = mail_back(SECRET, uuid.uuid4(), domain("shop.example"), connection(keep=True), RELAY)
    assert back.envelope_sender is None
    assert back.cfbl_address == "fbl@shop.example; report=arf"


@pytest.mark.parametrize(("secret", "relay", "own"), [
    (SECRET, "", ""),  # no bounce domain anywhere
    (None, RELAY, ""),  # no secret: nothing could be authenticated
    (None, "", "bounces.shop.example"),
])
def test_without_a_bounce_domain_or_a_secret_nothing_changes(
        secret: bytes | None, relay: str, own: str) -> None:
    back = mail_back(secret, uuid.uuid4(), domain(own), connection(), relay)
    assert (back.envelope_sender, back.cfbl_address, back.feedback_id) == (None, None, None)
    assert back.bounce_domain == (own or relay)


def test_the_domain_s_own_return_path_wins_over_the_relay_s() -> None:
    assert bounce_domain(domain("bounces.shop.example"), RELAY) == "bounces.shop.example"
    assert bounce_domain(domain(), RELAY) == RELAY


@pytest.mark.parametrize(("candidate", "signing", "aligned"), [
    ("shop.example", "shop.example", True),
    ("bounces.shop.example", "shop.example", True),
    ("Bounces.Shop.Example", "shop.example", True),
    ("evilshop.example", "shop.example", False),  # a suffix is not a subdomain
    ("shop.example", "mail.shop.example", False),  # the parent is not under d=
    ("bounces.relay.example", "shop.example", False),
])
def test_cfbl_alignment_is_the_signing_domain_or_below(candidate: str, signing: str,
                                                      aligned: bool) -> None:
    assert cfbl_aligned(candidate, signing) is aligned


def test_with_the_relay_key_an_unaligned_message_gets_cfbl_signed_by_the_relay() -> None:
    txn = uuid.uuid4()
    back = mail_back(SECRET, txn, domain(), connection(), RELAY, relay_signs=True)
    assert back.envelope_sender is not None and back.envelope_sender.endswith(f"@{RELAY}")
    assert back.cfbl_address == f"fbl@{RELAY}; report=arf"
    assert back.relay_signer == RELAY  # the second signature's d=: aligned with fbl@RELAY
    assert back.feedback_id is not None
    found = read_feedback_id(SECRET, back.feedback_id)
    assert found is not None and (found.account_id, found.connection_id, found.txn_id) == (
        7, 11, txn)


def test_an_aligned_message_needs_no_relay_signature_even_with_the_key() -> None:
    back = mail_back(SECRET, uuid.uuid4(), domain("bounces.shop.example"), connection(), RELAY,
                     relay_signs=True)
    assert back.cfbl_address == "fbl@bounces.shop.example; report=arf"
    assert back.relay_signer == ""


def test_keep_with_the_relay_key_keeps_the_sender_and_still_adds_cfbl() -> None:
    back = mail_back(SECRET, uuid.uuid4(), domain(), connection(keep=True), RELAY,
                     relay_signs=True)
    assert back.envelope_sender is None
    assert (back.cfbl_address, back.relay_signer) == (f"fbl@{RELAY}; report=arf", RELAY)


def test_an_unaligned_own_return_path_complains_to_the_relay_domain() -> None:
    # The domain's own return path is elsewhere: bounces go there, the complaint address is
    # the relay's, the one the relay's signature aligns with.
    back = mail_back(SECRET, uuid.uuid4(), domain("bounces.other.example"), connection(),
                     RELAY, relay_signs=True)
    assert back.envelope_sender is not None
    assert back.envelope_sender.endswith("@bounces.other.example")
    assert (back.cfbl_address, back.relay_signer) == (f"fbl@{RELAY}; report=arf", RELAY)


@pytest.mark.parametrize(("secret", "relay", "own"), [
    (None, RELAY, ""),  # no secret: no feedback id can be made
    (SECRET, "", "bounces.other.example"),  # no relay domain for the relay's key to sign as
])
def test_the_relay_key_alone_adds_nothing(secret: bytes | None, relay: str, own: str) -> None:
    back = mail_back(secret, uuid.uuid4(), domain(own), connection(), relay, relay_signs=True)
    assert (back.cfbl_address, back.feedback_id, back.relay_signer) == (None, None, "")
