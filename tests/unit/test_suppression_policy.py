"""The RCPT refusal of a suppressed recipient, the [suppression] settings, and the capture
sink's bounce-/defer- replies."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from txrelay.config import load_config
from txrelay.errors import ConfigError
from txrelay.policy.suppression import Suppressed, SuppressionRules, suppressed_refusal
from txrelay.sink import DEFAULT_RULES

SINCE = dt.datetime(2026, 12, 1, 8, 30, tzinfo=dt.UTC)


def test_the_refusal_says_why_and_since_when() -> None:
    verdict = suppressed_refusal("a@x.example", Suppressed("hard_bounce", SINCE, None, "5.1.1"))
    assert (verdict.smtp_code, verdict.enhanced_code) == ("550", "5.1.1")
    assert verdict.text == ("<a@x.example> is suppressed for this account since 2026-12-01 "
                            "(hard bounce 5.1.1); the relay does not send to it; ask your "
                            "relay admin to remove it")


@pytest.mark.parametrize(("reason", "dsn", "words"), [
    ("soft_bounces", "4.2.2", "(repeated soft bounces 4.2.2) until 2026-12-31;"),
    ("complaint", None, "(spam complaint) until 2026-12-31;"),
    ("manual", None, "(added by the relay admin) until 2026-12-31;"),
])
def test_each_reason_has_its_words_and_an_expiry_its_date(reason: str, dsn: str | None,
                                                          words: str) -> None:
    until = dt.datetime(2026, 12, 31, tzinfo=dt.UTC)
    verdict = suppressed_refusal("a@x.example", Suppressed(reason, SINCE, until, dsn))
    assert words in verdict.text


def test_an_entry_suppresses_until_it_expires() -> None:
    until = SINCE + dt.timedelta(days=1)
    entry = Suppressed("soft_bounces", SINCE, until)
    assert entry.active(until - dt.timedelta(seconds=1))
    assert not entry.active(until)
    assert Suppressed("hard_bounce", SINCE, None).active(SINCE + dt.timedelta(days=9999))


def test_suppression_settings_feed_the_rules(tmp_path: Path) -> None:
    path = tmp_path / "txrelay.toml"
    path.write_text("[suppression]\nsoft_bounce_limit = 1\ncomplaint_days = 90\n")
    rules = load_config(path, environ={"TXRELAY_SUPPRESSION_HARD_BOUNCE_DAYS": "365"}).suppression
    assert rules.rules() == SuppressionRules(soft_bounce_limit=1, soft_bounce_window_days=7,
                                             hard_bounce_days=365, soft_bounces_days=30,
                                             complaint_days=90)
    assert load_config(None, environ={}).suppression.rules() == SuppressionRules()


@pytest.mark.parametrize(("key", "value"), [("soft_bounce_limit", "-1"),
                                            ("soft_bounce_window_days", "0"),
                                            ("complaint_days", "-3")])
def test_bad_suppression_settings_are_refused_naming_the_key(tmp_path: Path, key: str,
                                                             value: str) -> None:
    path = tmp_path / "txrelay.toml"
    path.write_text(f"[suppression]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=key):
        load_config(path, environ={})


def sink_reply(address: str) -> str | None:
    for rule in DEFAULT_RULES:
        if rule.matches(address):
            return rule.reply
    return None


def test_the_capture_sink_bounces_bounce_dash_and_defers_defer_dash() -> None:
    assert (sink_reply("bounce-1@rcpt.example") or "").startswith("550 5.1.1 ")
    assert (sink_reply("Bounce-X@Rcpt.Example") or "").startswith("550 5.1.1 ")
    assert (sink_reply("defer-1@rcpt.example") or "").startswith("451 4.2.0 ")
    for accepted in ("bouncer@rcpt.example", "deferred@rcpt.example", "a@bounce-x.example",
                     "x-bounce-1@rcpt.example"):
        assert sink_reply(accepted) is None, accepted
