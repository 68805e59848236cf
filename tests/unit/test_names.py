"""Validators for what admins type: domains, List-Help, addresses, selectors, names."""

from __future__ import annotations

import pytest

from txrelay.errors import InvalidInput
from txrelay.policy.names import (
    normalize_domain,
    normalize_email,
    normalize_list_help,
    normalize_selector,
    validate_name,
)


@pytest.mark.parametrize(("given", "stored"), [
    ("example.com", "example.com"),
    ("Shop.Example.COM", "shop.example.com"),
    ("example.com.", "example.com"),
    (" example.com ", "example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("BÜCHER.example", "xn--bcher-kva.example"),
    ("faß.de", "xn--fa-hia.de"),  # IDNA 2008: ß is kept, not folded to ss
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("a-b.c-d.example", "a-b.c-d.example"),
    ("123.example", "123.example"),
])
def test_domain_names_are_stored_in_lower_case_dns_form(given: str, stored: str) -> None:
    assert normalize_domain(given) == stored


@pytest.mark.parametrize("given", [
    "", ".", "com", "example..com", "-example.com", "example-.com", "exa mple.com",
    "exam_ple.com", "example.com\r\n", "ex;ample.com", "x'; DROP TABLE accounts;--.com",
    "user@example.com", "https://example.com", "1.2.3.4", "a" * 64 + ".com",
    ".".join(["abcdefghij"] * 25) + ".com", "xn--zz.example",
])
def test_malformed_domain_names_are_refused(given: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_domain(given)


@pytest.mark.parametrize(("given", "stored"), [
    ("https://example.com/help", "https://example.com/help"),
    ("http://example.com", "http://example.com"),
    ("HTTPS://example.com/Help?topic=mail#top", "https://example.com/Help?topic=mail#top"),
    ("https://example.com:8443/h", "https://example.com:8443/h"),
    ("mailto:help@example.com", "mailto:help@example.com"),
    ("mailto:help@Example.COM?subject=help", "mailto:help@example.com?subject=help"),
    ("<https://example.com/help>", "https://example.com/help"),
    ("https://[2001:db8::1]/help", "https://[2001:db8::1]/help"),
])
def test_list_help_accepts_http_urls_and_mailto(given: str, stored: str) -> None:
    assert normalize_list_help(given) == stored


@pytest.mark.parametrize("given", [
    "", "<>", "example.com/help", "ftp://example.com/help", "javascript:alert(1)",
    "https://example.com/help\r\nBcc: victim@example.org", "https://example.com/\nx",
    "https://example.com/a b", "https://example.com/\t", "https://example.com/\x00",
    "https://example.com/<x>", "<https://example.com/help", "https://", "https:///path",
    "https://user:secret@example.com/", "https://example.com:99999/", "mailto:",
    "mailto:not-an-address", "https://bücher.example/help", "https://exa_mple.com/",
    "https://example.com/" + "a" * 600,
])
def test_list_help_refuses_other_schemes_whitespace_and_junk(given: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_list_help(given)


def test_list_help_refusal_says_what_to_give() -> None:
    with pytest.raises(InvalidInput, match="https://, http:// or mailto:"):
        normalize_list_help("ftp://example.com/help")


@pytest.mark.parametrize(("given", "stored"), [
    ("ops@example.com", "ops@example.com"),
    ("Ops.Team+txrelay@Example.COM", "Ops.Team+txrelay@example.com"),
    ("o'brien@bücher.example", "o'brien@xn--bcher-kva.example"),
])
def test_email_addresses_keep_the_local_part_and_normalise_the_domain(given: str,
                                                                       stored: str) -> None:
    assert normalize_email(given) == stored


@pytest.mark.parametrize("given", [
    "", "ops", "@example.com", "ops@", "ops@@example.com", "ops example@example.com",
    ".ops@example.com", "ops.@example.com", "o..ps@example.com", "<ops@example.com>",
    "ops@example.com\nBcc: x@example.org", "x\";DROP TABLE accounts;--@example.com",
    "a" * 65 + "@example.com", "ops@localhost",
])
def test_malformed_email_addresses_are_refused(given: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_email(given)


@pytest.mark.parametrize(("given", "stored"), [
    ("txr202611", "txr202611"), ("Mail2026", "mail2026"), ("s1.mail", "s1.mail"),
    ("a", "a"), ("sel-1", "sel-1"),
])
def test_selectors_are_dns_labels_in_lower_case(given: str, stored: str) -> None:
    assert normalize_selector(given) == stored


@pytest.mark.parametrize("given", ["", "-sel", "sel-", "se_l", "sel..x", "sel x", "a" * 64,
                                   "sel;drop"])
def test_malformed_selectors_are_refused(given: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_selector(given)


@pytest.mark.parametrize("given", ["Web shop", "Acme GmbH", "Bücher & Co. KG",
                                   "Robert'); DROP TABLE accounts;--", "x"])
def test_printable_names_are_kept_verbatim(given: str) -> None:
    assert validate_name(given) == given


@pytest.mark.parametrize("given", ["", "   ", " Web shop", "Web shop ", "Web\nshop",
                                   "Web\rshop", "Web\x00shop", "Web\u200bshop", "x" * 201])
def test_names_with_control_characters_or_padding_are_refused(given: str) -> None:
    with pytest.raises(InvalidInput):
        validate_name(given, "connection name")
