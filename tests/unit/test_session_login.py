"""Whether a session may still send with the login it authenticated with (issue 12 item 5)."""

from __future__ import annotations

import dataclasses

from txrelay.policy.session import SessionLogin, check_session_login
from txrelay.policy.snapshot import ConnectionPolicy, PolicySnapshot
from txrelay.policy.verdict import Action, Verdict

SHOP = ConnectionPolicy(id=1, name="Web shop", account_id=10, enabled=True,
                        domains=frozenset({"shop.example"}), rate_limit=0,
                        credential="v1", credential_since=0.0)


def snapshot(connection: ConnectionPolicy | None = None) -> PolicySnapshot:
    """A snapshot in which the login 'webshop' is `connection` (or nobody)."""
    return PolicySnapshot(1, {"webshop": connection} if connection else {}, {}, {})


def test_first_mail_pins_the_credential_current_then() -> None:
    pinned = check_session_login(snapshot(SHOP), "WebShop ", None, session_started=100.0)
    assert pinned == SessionLogin("webshop", "v1", 0.0)


def test_later_mail_with_the_same_credential_goes_on() -> None:
    pinned = SessionLogin("webshop", "v1", 0.0)
    assert check_session_login(snapshot(SHOP), "webshop", pinned, 100.0) == pinned


def _assert_log_in_again(result: object) -> None:
    assert isinstance(result, Verdict)
    assert (result.action, result.smtp_code, result.enhanced_code) == (
        Action.TEMPFAIL, "421", "4.7.0")
    assert "log in again" in result.text


def test_rotated_password_refuses_the_next_mail_of_a_pinned_session() -> None:
    rotated = dataclasses.replace(SHOP, credential="v2", credential_since=150.0)
    _assert_log_in_again(check_session_login(
        snapshot(rotated), "webshop", SessionLogin("webshop", "v1", 0.0), 100.0))


def test_disabled_or_deleted_connection_refuses_the_next_mail_of_a_pinned_session() -> None:
    pinned = SessionLogin("webshop", "v1", 0.0)
    disabled = dataclasses.replace(SHOP, enabled=False, credential_since=150.0)
    _assert_log_in_again(check_session_login(snapshot(disabled), "webshop", pinned, 100.0))
    _assert_log_in_again(check_session_login(snapshot(), "webshop", pinned, 100.0))


def test_disabled_then_enabled_again_still_ends_the_pinned_session() -> None:
    reenabled = dataclasses.replace(SHOP, credential_since=150.0)
    _assert_log_in_again(check_session_login(
        snapshot(reenabled), "webshop", SessionLogin("webshop", "v1", 0.0), 100.0))


def test_rotation_between_auth_and_first_mail_is_refused() -> None:
    """The session connected (and logged in, with the old password) before the milter knew
    the new credential: its first MAIL must not pin the new one."""
    rotated = dataclasses.replace(SHOP, credential="v2", credential_since=150.0)
    _assert_log_in_again(check_session_login(snapshot(rotated), "webshop", None, 149.0))
    # credential_since is when this node's Dovecot checks the new one (login file's mtime
    # plus its read lag): just before it, Dovecot may still have checked the old password.
    _assert_log_in_again(check_session_login(snapshot(rotated), "webshop", None, 149.9))


def test_session_begun_after_the_new_credential_settled_may_send() -> None:
    rotated = dataclasses.replace(SHOP, credential="v2", credential_since=150.0)
    assert check_session_login(snapshot(rotated), "webshop", None, 150.0) == SessionLogin(
        "webshop", "v2", 150.0)


def test_login_of_no_enabled_connection_is_left_to_the_sender_check() -> None:
    disabled = dataclasses.replace(SHOP, enabled=False)
    assert check_session_login(snapshot(disabled), "webshop", None, 100.0) is None
    assert check_session_login(snapshot(), "webshop", None, 100.0) is None
