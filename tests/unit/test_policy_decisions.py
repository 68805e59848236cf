"""Pure relay decisions: who may send, which From: is acceptable, what each reply says."""

from __future__ import annotations

import pytest

from txrelay.policy.addresses import HeaderSender, envelope_address, header_sender
from txrelay.policy.message import check_author, check_size, list_help_value
from txrelay.policy.quota import Reservation, ReservationStatus, recipient_verdict
from txrelay.policy.sender import authorize_sender
from txrelay.policy.snapshot import (
    AccountPolicy,
    ConnectionPolicy,
    DomainPolicy,
    PolicySnapshot,
    effective_rate_limit,
)
from txrelay.policy.verdict import Action, Verdict, service_unavailable

SHOP = ConnectionPolicy(id=1, name="Web shop", account_id=10, enabled=True,
                        domains=frozenset({"shop.example", "mail.shop.example"}), rate_limit=25)
OFF = ConnectionPolicy(id=2, name="Old CRM", account_id=10, enabled=False,
                       domains=frozenset({"shop.example"}), rate_limit=0)
SNAPSHOT = PolicySnapshot(
    version=1,
    connections={"webshop": SHOP, "oldcrm": OFF},
    domains={"shop.example": DomainPolicy("shop.example", 10, "https://shop.example/help",
                                          "txr202611", "rsa", signing_key=None)},
    accounts={10: AccountPolicy(10, paid=False)},
)


def reply(verdict: object) -> tuple[str, str]:
    assert isinstance(verdict, Verdict)
    return verdict.smtp_code, verdict.enhanced_code


# -- MAIL FROM -----------------------------------------------------------------------------

def test_sender_of_an_enabled_domain_is_authorized() -> None:
    assert authorize_sender(SNAPSHOT, "webshop", "<orders@shop.example>") is SHOP


def test_sender_domain_is_compared_case_insensitively() -> None:
    assert authorize_sender(SNAPSHOT, "webshop", "<Orders@SHOP.Example>") is SHOP


def test_no_sasl_login_is_told_to_authenticate_with_530() -> None:
    verdict = authorize_sender(SNAPSHOT, None, "<orders@shop.example>")
    assert reply(verdict) == ("530", "5.7.0")
    assert isinstance(verdict, Verdict) and "STARTTLS" in verdict.text


@pytest.mark.parametrize("username", ["nobody", "oldcrm"])
def test_unknown_or_disabled_connection_is_refused(username: str) -> None:
    assert reply(authorize_sender(SNAPSHOT, username, "<a@shop.example>")) == ("550", "5.7.1")


def test_foreign_sender_domain_names_domain_and_connection() -> None:
    verdict = authorize_sender(SNAPSHOT, "webshop", "<a@example.org>")
    assert isinstance(verdict, Verdict)
    assert verdict.text == 'sender domain example.org is not enabled for connection "Web shop"'


def test_subdomain_is_not_its_parent_domain() -> None:
    verdict = authorize_sender(SNAPSHOT, "webshop", "<a@evil.shop.example>")
    assert reply(verdict) == ("550", "5.7.1")


def test_null_sender_is_refused() -> None:
    verdict = authorize_sender(SNAPSHOT, "webshop", "<>")
    assert reply(verdict) == ("550", "5.7.1")
    assert isinstance(verdict, Verdict) and "null sender" in verdict.text


def test_envelope_address_drops_brackets_and_source_route() -> None:
    assert envelope_address("<@relay.example:user@shop.example>") == "user@shop.example"
    assert envelope_address(" <a@b.example> ") == "a@b.example"


# -- From: header --------------------------------------------------------------------------

@pytest.mark.parametrize("value, address", [
    ("orders@shop.example", "orders@shop.example"),
    ("Shop <orders@shop.example>", "orders@shop.example"),
    ('"ceo@bank.example" <orders@shop.example>', "orders@shop.example"),
    ("=?utf-8?q?J=C3=BCrgen?= <j@shop.example>", "j@shop.example"),
    ("=?utf-8?b?Y2VvQGJhbmsuZXhhbXBsZQ==?= <x@shop.example>", "x@shop.example"),
    ("Shop <orders@shop.example> (comment)", "orders@shop.example"),
    ("Shop <orders@SHOP.EXAMPLE>", "orders@SHOP.EXAMPLE"),
])
def test_single_mailbox_from_is_parsed_to_its_address(value: str, address: str) -> None:
    author = header_sender([value])
    assert isinstance(author, HeaderSender)
    assert author.address == address
    assert author.domain == address.rsplit("@", 1)[1].lower()


def test_display_name_that_looks_like_an_address_does_not_count() -> None:
    author = header_sender(['"orders@shop.example" <ceo@bank.example>'])
    assert isinstance(author, HeaderSender) and author.domain == "bank.example"


def test_missing_from_is_refused() -> None:
    verdict = header_sender([])
    assert isinstance(verdict, Verdict) and "no From:" in verdict.text


def test_two_from_headers_are_refused() -> None:
    verdict = header_sender(["a@shop.example", "b@shop.example"])
    assert isinstance(verdict, Verdict) and "more than one From:" in verdict.text


def test_two_mailboxes_in_one_from_are_refused() -> None:
    verdict = header_sender(["a@shop.example, b@shop.example"])
    assert isinstance(verdict, Verdict) and "2 addresses" in verdict.text


@pytest.mark.parametrize("value", [
    "Friends: a@shop.example;",  # group syntax
    "undisclosed-recipients:;",
    "ceo@bank.example <a@shop.example>",  # unquoted @ in a display name
    "a@shop.example <b@bank.example>",
    "<<a@shop.example>>",
    "a@",
    "no address at all",
])
def test_unparsable_or_group_from_is_refused(value: str) -> None:
    verdict = header_sender([value])
    assert reply(verdict) == ("550", "5.7.1")


def test_from_of_a_foreign_domain_is_refused_naming_it() -> None:
    verdict = check_author(SNAPSHOT, SHOP, ["Bank <ceo@bank.example>"])
    assert isinstance(verdict, Verdict)
    assert verdict.text == 'From: header domain bank.example is not enabled for connection ' \
                           '"Web shop"'


def test_from_domain_without_loaded_key_is_a_temporary_failure() -> None:
    verdict = check_author(SNAPSHOT, SHOP, ["a@mail.shop.example"])
    assert reply(verdict) == ("451", "4.7.0")


def test_from_of_the_connections_domain_is_accepted() -> None:
    author = check_author(SNAPSHOT, SHOP, ["Shop <orders@shop.example>"])
    assert isinstance(author, HeaderSender) and author.domain == "shop.example"


# -- size, headers, quota replies, verdicts ------------------------------------------------

def test_oversized_message_gets_552() -> None:
    assert check_size(30 * 1024 * 1024, 30 * 1024 * 1024) is None
    verdict = check_size(30 * 1024 * 1024 + 1, 30 * 1024 * 1024)
    assert reply(verdict) == ("552", "5.3.4") and verdict is not None and "30 MB" in verdict.text


def test_list_help_is_written_in_angle_brackets() -> None:
    assert list_help_value("mailto:help@shop.example") == "<mailto:help@shop.example>"


def test_rate_limited_recipient_gets_451_with_limit_and_retry_time() -> None:
    verdict = recipient_verdict(Reservation(ReservationStatus.RATE_LIMITED, 5, 125.0), 25,
                                "Web shop")
    assert reply(verdict) == ("451", "4.7.1")
    assert "25 recipients per hour" in verdict.text and "3 minutes" in verdict.text


def test_demo_account_out_of_quota_is_told_to_book_quota() -> None:
    verdict = recipient_verdict(Reservation(ReservationStatus.QUOTA_EXHAUSTED), 25, "Web shop")
    assert reply(verdict) == ("550", "5.7.1") and "txrelay quota book" in verdict.text


@pytest.mark.parametrize("status", [ReservationStatus.RESERVED, ReservationStatus.OVERAGE,
                                    ReservationStatus.DUPLICATE])
def test_reserved_overage_and_duplicate_recipients_continue(status: ReservationStatus) -> None:
    assert recipient_verdict(Reservation(status), 25, "x").action is Action.CONTINUE


def test_refusal_verdict_needs_matching_codes() -> None:
    with pytest.raises(ValueError):
        Verdict.tempfail("550", "5.7.1", "wrong class")
    with pytest.raises(ValueError):
        Verdict.reject("550", "5.7.1", "")
    assert Verdict.reject("550", "5.7.1", "no").label == "550 5.7.1"
    assert Verdict.accept().label == "accept"


def test_service_unavailable_names_the_service() -> None:
    verdict = service_unavailable("quota service (Redis)")
    assert reply(verdict) == ("451", "4.3.0") and "Redis" in verdict.text


@pytest.mark.parametrize("rate_limit, paid, expected", [
    (None, False, 25), (None, True, 0), (0, False, 0), (100, True, 100)])
def test_effective_rate_limit(rate_limit: int | None, paid: bool, expected: int) -> None:
    assert effective_rate_limit(rate_limit, paid, 25) == expected
