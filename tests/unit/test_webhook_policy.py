"""Webhook decisions: URL and address checks (SSRF), the signature, the retry plan."""

from __future__ import annotations

import datetime as dt
import subprocess

import pytest

from txrelay.errors import InvalidInput
from txrelay.policy import webhooks as policy
from txrelay.store.webhook_events import EVENTS


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",  # noqa: S104
    "100.64.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1",
    "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1",
    "192.0.2.10", "2001:db8::1"])
def test_private_loopback_link_local_multicast_and_reserved_addresses_are_refused(
        address: str) -> None:
    assert policy.address_refusal(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert policy.address_refusal(address) is None


def test_one_private_answer_among_public_ones_refuses_the_host() -> None:
    with pytest.raises(InvalidInput, match=r"hooks\.shop\.example resolves to 10\.0\.0\.1, a "
                       r"private address; .*--allow-private"):
        policy.check_addresses("hooks.shop.example", ["93.184.216.34", "10.0.0.1"], False)
    assert policy.check_addresses("h", ["10.0.0.1"], True) == ["10.0.0.1"]
    with pytest.raises(InvalidInput, match="has no A or AAAA record"):
        policy.check_addresses("h", [], True)


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://shop.example/x", "is not an http:// or https:// URL"),
    ("file:///etc/passwd", "is not an http:// or https:// URL"),
    ("shop.example/hook", "is not an http:// or https:// URL"),
    ("https:///hook", "names no host"),
    ("https://user:pw@shop.example/", "carries a user name or password"),
    ("https://shop.example:99999/", "is not a URL"),
    ("https://shop.example/a b", "contains spaces"),
    ("https://shop.example/" + "a" * 2000, "longer than 2000"),
])
def test_bad_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        policy.parse_url(url)


def test_a_url_gives_its_host_port_and_request_path() -> None:
    assert policy.parse_url("https://Shop.Example/hooks/tx?k=1") == policy.Target(
        "https", "shop.example", 443, "/hooks/tx?k=1")
    assert policy.parse_url("http://[::1]:8080") == policy.Target("http", "::1", 8080, "/")
    assert str(policy.parse_url("http://127.0.0.1:81/").literal_address) == "127.0.0.1"


def test_signature_is_openssls_hmac_sha256_of_timestamp_dot_body() -> None:
    """Checked against an independent implementation: openssl dgst -hmac."""
    body = policy.body({"id": "e1", "event": "delivered", "data": {"to": "ü@example.org"}})
    assert body == '{"data":{"to":"ü@example.org"},"event":"delivered","id":"e1"}'.encode()
    done = subprocess.run(["openssl", "dgst", "-sha256", "-hmac", "whsec_s3cret", "-r"],
                          input=b"1767225600." + body, capture_output=True, check=True)
    expected = done.stdout.split()[0].decode()
    assert policy.signature("whsec_s3cret", 1767225600, body) == f"t=1767225600,v1={expected}"
    assert policy.signature("whsec_other", 1767225600, body) != f"t=1767225600,v1={expected}"


def test_retries_double_with_at_most_a_quarter_of_jitter_up_to_the_longest_wait() -> None:
    plan = policy.RetryPlan(dt.timedelta(seconds=30), dt.timedelta(hours=1),
                            dt.timedelta(hours=24))
    waits = [plan.wait(n, draw=lambda: 0.0).total_seconds() for n in range(1, 10)]
    assert waits == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert plan.wait(2, draw=lambda: 0.999).total_seconds() == pytest.approx(74.985)


def test_an_event_is_given_up_when_the_next_try_would_pass_the_deadline() -> None:
    plan = policy.RetryPlan(dt.timedelta(minutes=30), dt.timedelta(hours=8),
                            dt.timedelta(hours=24))
    created = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    now, attempts = created, 0
    while (following := plan.next_attempt(created, attempts + 1, now, lambda: 0.5)) is not None:
        now, attempts = following, attempts + 1
    assert now <= created + dt.timedelta(hours=24)
    assert 5 <= attempts <= 8, attempts  # 30 m, 1 h, 2 h, 4 h, 8 h, 8 h... within a day


def test_events_option_lists_known_events_and_refuses_unknown_ones() -> None:
    assert policy.parse_events(None, EVENTS) == list(EVENTS)
    assert policy.parse_events("bounced, delivered,bounced", EVENTS) == ["bounced", "delivered"]
    with pytest.raises(InvalidInput, match="unknown event 'opened' in --events; known: "
                       "delivered, deferred"):
        policy.parse_events("bounced,opened", EVENTS)
    with pytest.raises(InvalidInput, match="names no event"):
        policy.parse_events(" , ", EVENTS)
