"""DKIM before live mail (txrelay.policy.publication) and dual signing (signing.sign_all)."""

from __future__ import annotations

import dataclasses

import dkim
import pytest

from txrelay.errors import InvalidInput
from txrelay.policy.message import check_author
from txrelay.policy.publication import dkim_publication_refusal
from txrelay.policy.sender import authorize_sender
from txrelay.policy.snapshot import (
    AccountPolicy,
    ConnectionPolicy,
    DomainKey,
    DomainPolicy,
    PolicySnapshot,
)
from txrelay.policy.verdict import Verdict
from txrelay.provisioning.dkim_keys import generate_key
from txrelay.provisioning.domains import dual_selector, parse_algorithms
from txrelay.signing import load_signing_key, queued_header, sign_all

SHOP = ConnectionPolicy(id=1, name="Web shop", account_id=10, enabled=True,
                        domains=frozenset({"shop.example", "new.example"}), rate_limit=25)
LIVE = DomainPolicy("shop.example", 10, "https://shop.example/help", "txr202611", "rsa",
                    signing_key=None)
PENDING = DomainPolicy("new.example", 10, "https://shop.example/help", "txr202612", "rsa",
                       signing_key=None, published=False)
SNAPSHOT = PolicySnapshot(1, {"webshop": SHOP},
                          {"shop.example": LIVE, "new.example": PENDING},
                          {10: AccountPolicy(10, paid=False)})


def test_a_published_domain_may_send() -> None:
    assert dkim_publication_refusal(LIVE) is None
    assert authorize_sender(SNAPSHOT, "webshop", "<orders@shop.example>") is SHOP


def test_a_pending_domain_is_refused_at_mail_naming_the_record_and_the_command() -> None:
    verdict = authorize_sender(SNAPSHOT, "webshop", "<orders@new.example>")
    assert isinstance(verdict, Verdict)
    assert (verdict.smtp_code, verdict.enhanced_code) == ("550", "5.7.26")
    assert "txr202612._domainkey.new.example" in verdict.text
    assert "txrelay domain check new.example" in verdict.text


def test_a_pending_from_header_domain_is_refused_at_end_of_message() -> None:
    verdict = check_author(SNAPSHOT, SHOP, ["Shop <orders@new.example>"])
    assert isinstance(verdict, Verdict) and verdict.enhanced_code == "5.7.26"
    assert "txr202612._domainkey.new.example" in verdict.text
    author = check_author(SNAPSHOT, SHOP, ["Shop <orders@shop.example>"])
    assert not isinstance(author, Verdict) and author.domain == "shop.example"


def test_sandbox_mail_from_a_pending_domain_is_allowed() -> None:
    assert dkim_publication_refusal(PENDING, sandbox=True) is None
    assert dkim_publication_refusal(PENDING) is not None


def test_a_pending_dual_signing_domain_names_both_records() -> None:
    dual = dataclasses.replace(PENDING, second_key=DomainKey("txr202612-ed25519", "ed25519",
                                                             None))
    verdict = dkim_publication_refusal(dual)
    assert verdict is not None
    assert "records txr202612._domainkey.new.example and " \
           "txr202612-ed25519._domainkey.new.example" in verdict.text


def test_algorithms_option_is_parsed_strictly() -> None:
    assert parse_algorithms("ed25519, RSA") == ("rsa", "ed25519")
    assert parse_algorithms("ed25519") == ("ed25519",)
    for bad in ("", "rsa,rsa", "dsa", "rsa,ed448"):
        with pytest.raises(InvalidInput, match="--algorithms"):
            parse_algorithms(bad)
    assert dual_selector("txr202612") == "txr202612-ed25519"


HEADERS = [(b"From", b"Shop <orders@shop.example>"), (b"To", b"alice@customer.example"),
           (b"Subject", b"Your order"), (b"Message-ID", b"<1@shop.example>")]
BODY = b"Hello\r\n\r\nBye\r\n"


def test_dual_signing_gives_an_ed25519_and_an_rsa_signature_that_both_verify() -> None:
    rsa_key, ed_key = generate_key("rsa"), generate_key("ed25519")
    records = {b"rsa1._domainkey.shop.example.": f"v=DKIM1; k=rsa; p={rsa_key.public_key_b64}",
               b"ed1._domainkey.shop.example.":
                   f"v=DKIM1; k=ed25519; p={ed_key.public_key_b64}"}
    keys = [("rsa1", load_signing_key("rsa", rsa_key.private_key_pem)),
            ("ed1", load_signing_key("ed25519", ed_key.private_key_pem))]
    queued = [(name, queued_header(value)) for name, value in HEADERS]
    signatures = sign_all(queued, BODY, domain="shop.example", keys=keys)
    assert [s.split("a=")[1][:7] for s in signatures] == ["ed25519", "rsa-sha"]
    # The milter inserts each at the top: the last one added comes first.
    raw = b"".join(b"DKIM-Signature: " + s.encode().replace(b"\n", b"\r\n") + b"\r\n"
                   for s in reversed(signatures))
    raw += b"".join(n + b": " + v + b"\r\n" for n, v in HEADERS) + b"\r\n" + BODY

    def verifies(message: bytes, index: int) -> bool:
        try:
            return bool(dkim.DKIM(message).verify(
                idx=index, dnsfunc=lambda name, timeout=5: records[name].encode()))
        except dkim.DKIMException:
            return False

    assert verifies(raw, 0) and verifies(raw, 1)
    tampered = raw.replace(b"Bye", b"Bye!")
    assert not verifies(tampered, 0) and not verifies(tampered, 1)
    headers_of = [dict(p.split("=", 1) for p in "".join(s.split()).split(";"))["h"]
                  for s in signatures]
    assert headers_of[0] == headers_of[1]


def test_keys_of_a_dual_domain_list_both() -> None:
    pem = generate_key("ed25519").private_key_pem
    key = load_signing_key("ed25519", pem)
    dual = dataclasses.replace(LIVE, second_key=DomainKey("ed1", "ed25519", key))
    assert [(k.selector, k.algorithm) for k in dual.keys] == [("txr202611", "rsa"),
                                                              ("ed1", "ed25519")]
