"""Who may see which dashboard page, and what a link's token becomes in the database."""

from __future__ import annotations

import datetime as dt

from txrelay.policy.web_access import (
    StoredLink,
    Viewer,
    is_admin_token,
    new_token,
    token_hash,
)

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


def test_the_admin_sees_every_page_a_link_only_its_account() -> None:
    admin, link = Viewer(None), Viewer("acme")
    assert admin.may_see(None) and admin.may_see("acme") and admin.may_see("other")
    assert link.may_see("acme")
    assert not link.may_see(None)  # the relay-wide pages
    assert not link.may_see("other") and not link.may_see("ACME") and not link.may_see("")


def test_a_link_works_until_it_expires_is_revoked_or_its_account_is_deleted() -> None:
    later = NOW + dt.timedelta(days=1)
    assert StoredLink("acme", later, None, False).valid(NOW)
    assert not StoredLink("acme", NOW, None, False).valid(NOW)  # expiry is exclusive
    assert not StoredLink("acme", later, NOW, False).valid(NOW)
    assert not StoredLink("acme", later, None, True).valid(NOW)


def test_tokens_are_random_and_stored_as_their_sha256() -> None:
    first, second = new_token(), new_token()
    assert first != second and len(first) >= 43
    assert token_hash(first) != first and len(token_hash(first)) == 64
    assert token_hash("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_the_admin_token_must_match_exactly_and_be_set() -> None:
    token = "x" * 40
    assert is_admin_token(token, token)
    assert not is_admin_token(token[:-1], token)
    assert not is_admin_token(token + " ", token)
    assert not is_admin_token("", "")
