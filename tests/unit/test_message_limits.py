"""The milter's two limits as pure decisions: header fields per message, MAILs per session."""

from __future__ import annotations

from txrelay.policy.message import check_header_count, check_session_messages
from txrelay.policy.verdict import Action


def test_header_count_at_the_cap_passes_and_one_more_gets_550_5_6_0() -> None:
    assert check_header_count(30, 30) is None
    refused = check_header_count(31, 30)
    assert refused is not None
    assert (refused.action, refused.smtp_code, refused.enhanced_code) == (
        Action.REJECT, "550", "5.6.0")
    assert "more than 30 header fields" in refused.text


def test_mail_at_the_session_cap_passes_and_the_next_gets_421_4_7_0() -> None:
    assert check_session_messages(3, 3) is None
    refused = check_session_messages(4, 3)
    assert refused is not None
    assert (refused.action, refused.smtp_code, refused.enhanced_code) == (
        Action.TEMPFAIL, "421", "4.7.0")
    assert "reconnect" in refused.text
