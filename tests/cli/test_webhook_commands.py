"""`txrelay webhook add|list|remove|test|deliveries` and `webhooks run --once`, with --json,
and the bad input each refuses with one line and its documented exit status."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cli.conftest import DictConnection, Txrelay
from tests.cli.test_reports_read_only import database_fingerprint
from tests.harness.dns import DnsServer
from tests.harness.webhook_receiver import WebhookReceiver, verify
from txrelay.kek import is_sealed
from txrelay.store.webhook_events import EVENTS


@pytest.fixture()
def receiver() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    yield started
    started.release()
    started.stop()


@pytest.fixture()
def fast_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXRELAY_METRICS_WEBHOOKS_LISTEN", "")
    monkeypatch.setenv("TXRELAY_WEBHOOKS_RETRY_FIRST_SECONDS", "0.1")
    monkeypatch.setenv("TXRELAY_WEBHOOKS_GIVE_UP_AFTER_SECONDS", "0.05")


def test_add_prints_the_secret_once_and_stores_it_sealed(txrelay: Txrelay, account: str,
                                                         db: DictConnection,
                                                         receiver: WebhookReceiver) -> None:
    added = txrelay("webhook", "add", account, receiver.url, "--allow-private",
                    "--events", "bounced,complained", "--json").json()
    assert added["account"] == account and added["url"] == receiver.url
    assert added["events"] == ["bounced", "complained"] and added["allow_private"] is True
    assert added["secret"].startswith("whsec_") and added["secret_sealed"] is True
    stored = db.execute("SELECT secret FROM webhooks WHERE id = %s",
                        (added["id"],)).fetchone()["secret"]  # type: ignore[index]
    assert is_sealed(stored) and added["secret"] not in stored
    listed = txrelay("webhook", "list", account, "--json").json()
    assert [(w["id"], w["delivered"], w["pending"], w["failed"]) for w in listed] == [
        (added["id"], 0, 0, 0)]
    assert "secret" not in listed[0]
    human = txrelay("webhook", "list", account)
    assert added["secret"] not in human.stdout and receiver.url in human.stdout
    text = txrelay("webhook", "add", account, receiver.url, "--allow-private")
    assert text.exit_code == 0 and "secret:  whsec_" in text.stdout
    assert "not shown again" in text.stdout
    all_events = txrelay("webhook", "list", account, "--json").json()[1]["events"]
    assert all_events == list(EVENTS)


def test_test_event_goes_through_the_worker_and_deliveries_show_it(
        txrelay: Txrelay, account: str, receiver: WebhookReceiver, fast_worker: None) -> None:
    added = txrelay("webhook", "add", account, receiver.url, "--allow-private", "--json").json()
    queued = txrelay("webhook", "test", str(added["id"]), "--json").json()
    assert queued["event"] == "test"
    pending = txrelay("webhook", "deliveries", str(added["id"]), "--json").json()
    assert [(d["event"], d["state"]) for d in pending] == [("test", "pending")]
    ran = txrelay("webhooks", "run", "--once", "--json").json()
    assert ran["delivered"] >= 1
    [request] = receiver.received
    assert request.event_id == queued["event_id"] and verify(added["secret"], request)
    assert request.payload["data"] == {"webhook_id": added["id"], "url": receiver.url}
    done = txrelay("webhook", "deliveries", str(added["id"]), "--json").json()
    assert [(d["event"], d["state"], d["attempts"], d["last_status"]) for d in done] == [
        ("test", "delivered", 1, 200)]
    assert txrelay("webhook", "deliveries", str(added["id"]), "--failed", "--json").json() == []


def test_failed_deliveries_are_listed_with_the_receivers_answer(
        txrelay: Txrelay, account: str, receiver: WebhookReceiver, fast_worker: None) -> None:
    receiver.status = 503
    added = txrelay("webhook", "add", account, receiver.url, "--allow-private", "--json").json()
    txrelay("webhook", "test", str(added["id"]))
    txrelay("webhooks", "run", "--once")
    [failed] = txrelay("webhook", "deliveries", str(added["id"]), "--failed", "--json").json()
    assert (failed["state"], failed["last_status"], failed["last_error"]) == (
        "failed", 503, "HTTP 503 ok")
    human = txrelay("webhook", "deliveries", str(added["id"]), "--failed")
    assert "failed" in human.stdout and "HTTP 503 ok" in human.stdout


def test_remove_stops_the_webhook_and_gives_up_what_waited(txrelay: Txrelay, account: str,
                                                           receiver: WebhookReceiver) -> None:
    added = txrelay("webhook", "add", account, receiver.url, "--allow-private", "--json").json()
    txrelay("webhook", "test", str(added["id"]))
    removed = txrelay("webhook", "remove", str(added["id"]), "--json").json()
    assert removed == {"id": added["id"], "removed": True, "events_given_up": 1}
    assert txrelay("webhook", "list", account, "--json").json() == []
    again = txrelay("webhook", "remove", str(added["id"]))
    assert again.exit_code == 3 and again.error.startswith(f"webhook {added['id']} was removed")
    test_removed = txrelay("webhook", "test", str(added["id"]))
    assert test_removed.exit_code == 3
    history = txrelay("webhook", "deliveries", str(added["id"]), "--json").json()
    assert [(d["state"], d["last_error"]) for d in history] == [
        ("failed", "the webhook was removed")]


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://shop.example/hook", "'ftp://shop.example/hook' is not an http:// or https:// URL"),
    ("https://user:pw@shop.example/", "carries a user name or password"),
    ("http://127.0.0.1:8080/hook", "127.0.0.1 is a loopback address; "
     "webhooks go to public addresses only (--allow-private allows it for this webhook)"),
    ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
    ("http://10.0.0.8/", "10.0.0.8 is a private address"),
    ("http://[::1]/", "::1 is a loopback address"),
    ("http://[::ffff:192.168.0.1]/", "::ffff:192.168.0.1 is a private address"),
])
def test_add_refuses_bad_and_private_urls_with_exit_4(txrelay: Txrelay, account: str, url: str,
                                                      message: str) -> None:
    result = txrelay("webhook", "add", account, url)
    assert result.exit_code == 4
    assert message in result.error
    assert txrelay("webhook", "list", account, "--json").json() == []


def test_add_refuses_a_host_name_that_resolves_to_a_private_address(
        txrelay: Txrelay, account: str, dns_server: DnsServer, unique: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXRELAY_DNS_RESOLVER", dns_server.address)
    inside, mixed = f"inside-{unique}.example", f"mixed-{unique}.example"
    public = f"public-{unique}.example"
    dns_server.serve({inside: [("A", "192.168.10.5")],
                      mixed: [("A", "93.184.216.34"), ("AAAA", "fd00::5")],
                      public: [("A", "93.184.216.34")]})
    refused = txrelay("webhook", "add", account, f"https://{inside}/hook")
    assert (refused.exit_code, refused.error) == (4, (
        f"{inside} resolves to 192.168.10.5, a private address; webhooks go to public "
        "addresses only (--allow-private allows it for this webhook)"))
    assert txrelay("webhook", "add", account, f"https://{mixed}/hook").exit_code == 4
    missing = txrelay("webhook", "add", account, f"https://absent-{unique}.example/hook")
    assert (missing.exit_code, missing.error) == (
        4, f"absent-{unique}.example has no A or AAAA record")
    assert txrelay("webhook", "add", account, f"https://{public}/hook").exit_code == 0
    allowed = txrelay("webhook", "add", account, f"https://{inside}/hook", "--allow-private")
    assert allowed.exit_code == 0, allowed.stderr


def test_bad_input_is_one_line_with_its_exit_status(txrelay: Txrelay, account: str) -> None:
    unknown_event = txrelay("webhook", "add", account, "http://10.0.0.1/", "--allow-private",
                            "--events", "delivered,opened")
    assert unknown_event.exit_code == 4
    assert unknown_event.error.startswith("unknown event 'opened' in --events; known: delivered")
    no_account = txrelay("webhook", "add", "No Such Account", "http://10.0.0.1/",
                         "--allow-private")
    assert no_account.exit_code == 3 and "no account named 'No Such Account'" in no_account.error
    assert txrelay("webhook", "list", "No Such Account").exit_code == 3
    for command in ("remove", "test", "deliveries"):
        missing = txrelay("webhook", command, "999999999")
        assert (missing.exit_code, missing.error) == (
            3, "no webhook with id 999999999; see 'txrelay webhook list ACCOUNT'")
    not_a_number = txrelay("webhook", "remove", "seven")
    assert not_a_number.exit_code == 2 and "Traceback" not in not_a_number.stderr


def test_help_texts_say_what_each_command_does(txrelay: Txrelay) -> None:
    assert "--allow-private" in txrelay("webhook", "add", "--help").stdout
    assert "Txrelay-Signature" in txrelay("webhook", "add", "--help").stdout
    assert "--failed" in txrelay("webhook", "deliveries", "--help").stdout
    assert "webhooks_listen" in txrelay("webhooks", "run", "--help").stdout


def test_webhook_list_and_deliveries_leave_the_database_unchanged(
        txrelay: Txrelay, account: str, db: DictConnection, receiver: WebhookReceiver) -> None:
    added = txrelay("webhook", "add", account, receiver.url, "--allow-private", "--json").json()
    txrelay("webhook", "test", str(added["id"]))
    before = database_fingerprint(db)
    assert len(txrelay("webhook", "list", account, "--json").json()) == 1
    assert len(txrelay("webhook", "deliveries", str(added["id"]), "--json").json()) == 1
    txrelay("webhook", "deliveries", str(added["id"]), "--failed")
    assert database_fingerprint(db) == before
