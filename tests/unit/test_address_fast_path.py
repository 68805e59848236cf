"""The From:/Sender: fast path (txrelay.policy.addresses) agrees with email.headerregistry on
every value it takes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txrelay.policy import addresses

ATOM = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,6}", fullmatch=True)
LOCAL = st.lists(ATOM, min_size=1, max_size=3).map(".".join)
DOMAIN = st.lists(st.from_regex(r"[A-Za-z0-9-]{1,6}", fullmatch=True), min_size=1,
                  max_size=3).map(".".join)
ADDRESS = st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, DOMAIN)
DISPLAY = (st.lists(ATOM, min_size=1, max_size=3).map(" ".join)
           | st.from_regex(r'"[ !#-\[\]-~]{1,12}"', fullmatch=True))
VALUES = ADDRESS | st.builds(lambda name, addr: f"{name} <{addr}>", DISPLAY, ADDRESS)


def slow(value: str) -> list[str] | None:
    header = addresses._FROM_PARSER("from", value)
    if header.defects:
        return None
    return [f"{m.username}@{m.domain}" for g in header.groups for m in g.addresses]


@settings(max_examples=2000, deadline=None)
@given(VALUES)
def test_fast_path_agrees_with_the_full_parser(value: str) -> None:
    assert addresses._SIMPLE_MAILBOX.fullmatch(value) is not None
    assert addresses.parse_mailboxes("From", value) == slow(value)


@pytest.mark.parametrize("value", ["J. Smith <a@b.example>", "a..b@c.example",
                                   "Group: a@b.example;", "a@b.example, c@d.example",
                                   "\"a\\\"b\" <c@d.example>", "a@b.example (comment)"])
def test_other_forms_go_to_the_full_parser(value: str) -> None:
    assert addresses._SIMPLE_MAILBOX.fullmatch(value) is None
