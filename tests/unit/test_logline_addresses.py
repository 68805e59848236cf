"""The addresses a delivery line can name, for the tracker's ledger lookup: every reading's
recipient and original recipient, lower-cased, so that no reading pick_candidate could
match is left out."""

from __future__ import annotations

from txrelay.policy import logline

TAIL = "relay=mx[192.0.2.1]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 Ok)"


def test_a_plain_line_names_its_recipient_lower_cased() -> None:
    event = logline.parse_delivery("ABC123", f"to=<Rcpt@Example.ORG>, {TAIL}")
    assert isinstance(event, logline.Delivery)
    assert logline.addresses_of(event) == ["rcpt@example.org"]


def test_a_rewritten_recipient_names_both_addresses() -> None:
    event = logline.parse_delivery("ABC123", f"to=<new@example.org>, orig_to=<Old@example.org>, "
                                             f"{TAIL}")
    assert isinstance(event, logline.Delivery)
    addresses = logline.addresses_of(event)
    assert {"new@example.org", "old@example.org"} <= set(addresses)
    assert logline.pick_candidate(event, set(addresses)) is None  # two readings match: none
    assert logline.pick_candidate(event, {"old@example.org"}) is not None


def test_a_hostile_address_names_every_reading() -> None:
    hostile = f'"x>, {TAIL}"@evil.example'
    event = logline.parse_delivery("ABC123", f"to=<{hostile}>, {TAIL}")
    assert isinstance(event, logline.Delivery) and len(event.candidates) > 1
    addresses = logline.addresses_of(event)
    assert hostile.lower() in addresses and '"x' in addresses
    for candidate in event.candidates:
        found = logline.pick_candidate(event, {candidate.recipient.lower()})
        assert found is None or found[1] in addresses
