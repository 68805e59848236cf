"""DMARC records (txrelay/provisioning/dmarc_policy.py): parsing, alignment, the starting
record and the report-consent domains; pure logic."""

from __future__ import annotations

import pytest

from txrelay.provisioning import dmarc_policy


def test_a_full_record_is_read() -> None:
    record = dmarc_policy.parse("v=DMARC1; p=Reject; sp=none; adkim=s; aspf=r; pct=50; "
                                "rua=mailto:r@x.example")
    assert record == dmarc_policy.DmarcRecord("reject", "none", "s", "r", 50)
    assert dmarc_policy.parse("v=DMARC1;p=none") == dmarc_policy.DmarcRecord(
        "none", "none", "r", "r", 100)


@pytest.mark.parametrize(("value", "message"), [
    ("v=DMARC1; rua=mailto:r@x.example", "p= is missing"),
    ("v=DMARC1; p=block", "p=block is not none, quarantine or reject"),
    ("v=DMARC1; p=none; adkim=strict", "adkim=strict is not r (relaxed) or s (strict)"),
    ("v=DMARC1; p=none; aspf=x", "aspf=x is not r"),
    ("v=DMARC1; p=none; sp=all", "sp=all is not"),
    ("v=DMARC1; p=none; pct=150", "pct=150 is not a number from 0 to 100"),
])
def test_records_receivers_would_ignore_are_refused(value: str, message: str) -> None:
    with pytest.raises(dmarc_policy.DmarcSyntaxError, match=message.replace("(", r"\(")
                       .replace(")", r"\)")):
        dmarc_policy.parse(value)


def test_only_records_starting_with_the_version_are_dmarc_records() -> None:
    assert dmarc_policy.dmarc_records(["v=spf1 -all", "v=DMARC1; p=none", "v=DMARC1",
                                       "p=none; v=DMARC1", "v=DMARC10; p=none"]) == [
        "v=DMARC1; p=none", "v=DMARC1"]


@pytest.mark.parametrize(("mode", "author", "identifier", "aligned"), [
    ("s", "shop.example", "shop.example", True),
    ("s", "shop.example", "Shop.Example.", True),
    ("s", "shop.example", "bounce.shop.example", False),
    ("r", "shop.example", "bounce.shop.example", True),
    ("r", "a.shop.example", "b.shop.example", True),
    ("r", "shop.example", "relay.example", False),
])
def test_alignment_strict_and_relaxed(mode: str, author: str, identifier: str,
                                      aligned: bool) -> None:
    assert dmarc_policy.aligned(mode, author, identifier) is aligned


def test_starting_record_and_report_consent() -> None:
    assert dmarc_policy.starting_record("shop.example", "mailto:dmarc@{domain}") == \
        "v=DMARC1; p=none; rua=mailto:dmarc@shop.example"
    assert dmarc_policy.starting_record("shop.example", "") == "v=DMARC1; p=none"
    rua = "mailto:d@{domain}, mailto:reports@relay.example!10m"
    assert dmarc_policy.foreign_report_domains("shop.example", rua) == ["relay.example"]


def test_parents_stop_before_the_top_level_domain() -> None:
    assert dmarc_policy.parents("mail.shop.acme.example") == ["shop.acme.example",
                                                             "acme.example"]
    assert dmarc_policy.parents("shop.example") == []
