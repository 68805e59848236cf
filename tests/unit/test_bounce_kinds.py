"""One classification of failed deliveries for every source of bounces."""

from __future__ import annotations

import pytest

from txrelay.policy.bounces import BounceKind, classify

HARD, SOFT, BLOCK = BounceKind.HARD, BounceKind.SOFT, BounceKind.BLOCK


@pytest.mark.parametrize(
    ("status", "diagnostic", "kind"),
    [
        ("5.1.1", "550 5.1.1 <x@y>: Recipient address rejected: User unknown", HARD),
        ("5.1.10", "556 5.1.10 Recipient address has null MX", HARD),
        ("5.2.1", "550 5.2.1 mailbox disabled", HARD),
        ("5.4.4", "Host or domain name not found", HARD),
        ("5.2.2", "552 5.2.2 mailbox full", SOFT),
        ("4.2.0", "451 4.2.0 try later", SOFT),
        ("4.7.1", "450 4.7.1 greylisted", SOFT),
        ("5.7.1", "554 5.7.1 Service unavailable; client host blocked", BLOCK),
        ("5.7.26", "550 5.7.26 DMARC policy", BLOCK),
        ("5.3.4", "552 5.3.4 message too big", BLOCK),
        ("5.6.0", "content rejected", BLOCK),
        ("5.0.0", "550 no such user here", HARD),
        ("5.0.0", "552 Mailbox is full", SOFT),
        ("5.0.0", "554 rejected as spam", BLOCK),
        ("5.0.0", "something odd", SOFT),
        ("not a code", "", SOFT),
    ],
)
def test_classify(status: str, diagnostic: str, kind: BounceKind) -> None:
    assert classify(status, diagnostic) is kind
