"""Address headers (From:, Sender:) are bounded before the RFC 5322 parser runs, and every
parser error is a 550, never a 451."""

from __future__ import annotations

import time

import pytest

from txrelay.policy import addresses
from txrelay.policy.addresses import (
    MAX_ADDRESS_HEADER_LENGTH,
    MAX_ADDRESS_HEADER_MAILBOXES,
    MAX_ADDRESS_HEADER_TOKENS,
    header_sender,
    parse_mailboxes,
)
from txrelay.policy.verdict import Verdict

# Commas folded into short lines: each line passes the 998-byte check, and without a bound
# the parser spent 28 s of CPU on 60 KB of them.
HOSTILE_FROM = ",\n " * 20_000
NESTED_COMMENTS = "(" * 400 + ")" * 400 + " orders@shop.example"


def cpu_ms(work: object) -> float:
    start = time.process_time()
    assert callable(work)
    work()
    return (time.process_time() - start) * 1000


def test_hostile_from_of_60_kb_is_refused_with_5_6_0_in_far_less_than_50_ms() -> None:
    assert len(HOSTILE_FROM) >= 60_000
    verdict = header_sender([HOSTILE_FROM])
    assert isinstance(verdict, Verdict) and verdict.label == "550 5.6.0", verdict
    assert f"at most {MAX_ADDRESS_HEADER_LENGTH}" in verdict.text
    spent = min(cpu_ms(lambda: header_sender([HOSTILE_FROM])) for _ in range(5))
    assert spent < 5, f"{spent:.2f} ms of CPU"


@pytest.mark.parametrize(("value", "says"), [
    (", ".join(f"a{n}@shop.example" for n in range(MAX_ADDRESS_HEADER_MAILBOXES + 1)),
     "names 17 addresses"),
    ("a " * (MAX_ADDRESS_HEADER_TOKENS + 1) + "<orders@shop.example>", "separators"),
    (NESTED_COMMENTS, "separators"),
])
def test_address_header_over_a_bound_is_refused_before_parsing(
        value: str, says: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def parser_must_not_run(*args: object) -> None:
        raise AssertionError("the parser ran")

    monkeypatch.setattr(addresses, "_FROM_PARSER", parser_must_not_run)
    verdict = parse_mailboxes("From", value)
    assert isinstance(verdict, Verdict) and verdict.label == "550 5.6.0" and says in verdict.text


@pytest.mark.parametrize("error", [RecursionError("maximum recursion depth exceeded"),
                                   IndexError("pop from empty list"), KeyError("x"),
                                   AssertionError("parser bug")])
def test_any_parser_error_is_a_550_not_a_451(error: Exception,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_parser(*args: object) -> None:
        raise error

    monkeypatch.setattr(addresses, "_FROM_PARSER", failing_parser)
    verdict = header_sender(["(a comment) orders@shop.example"])
    assert isinstance(verdict, Verdict) and verdict.label == "550 5.7.1"
    assert "cannot be parsed" in verdict.text


def test_nested_comments_within_the_bound_parse_or_are_refused_with_550() -> None:
    value = "(" * 30 + ")" * 30 + " orders@shop.example"
    assert len(value) < MAX_ADDRESS_HEADER_LENGTH
    result = header_sender([value])
    assert not isinstance(result, Verdict) or result.smtp_code == "550"


@pytest.mark.parametrize("value", [
    "orders@shop.example",
    '"Shop, Inc. (Customer Service)" <orders@shop.example>',
    "=?utf-8?b?" + "w7Y" * 60 + "?= <orders@shop.example>",
    "Orders Department of the Very Long Shop Name Limited <orders@shop.example>",
])
def test_real_author_headers_are_within_the_bounds(value: str) -> None:
    author = header_sender([value])
    assert not isinstance(author, Verdict), author
    assert author.address == "orders@shop.example"


def test_parse_cost_within_the_bounds_stays_small() -> None:
    worst = ", ".join(["a.b.c.d.e@x.y"] * 12)[:MAX_ADDRESS_HEADER_LENGTH]
    assert parse_mailboxes("From", worst) is not None
    spent = min(cpu_ms(lambda: addresses._mailboxes(worst)) for _ in range(3))
    assert spent < 25, f"{spent:.2f} ms of CPU"
