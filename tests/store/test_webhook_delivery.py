"""The webhook worker against real PostgreSQL and a real HTTP receiver on loopback: each
event once and signed, nothing lost while the receiver is down, given up after the deadline,
a hanging receiver holding one slot only, DNS rebinding refused; quota and block events."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from tests.harness.dns import DnsServer
from tests.harness.processes import wait_until
from tests.harness.webhook_receiver import WebhookReceiver, verify
from tests.store.tracking_fixtures import RecordingMailer, add_message, make_sender
from txrelay.clock import SystemClock
from txrelay.config import Config, DnsConfig, WebhooksConfig
from txrelay.kek import KeyRing, is_sealed
from txrelay.provisioning import tls
from txrelay.provisioning import webhooks as provisioning
from txrelay.provisioning.dns_lookup import DnsLookup
from txrelay.store import database, webhook_events
from txrelay.store import webhooks as store
from txrelay.tracker.tick import run_tick
from txrelay.webhooks.delivery import Outcome, post
from txrelay.webhooks.worker import WebhookWorker

Conn = psycopg.Connection


@pytest.fixture()
def conn(config: Config) -> Iterator[psycopg.Connection]:
    connection = database.connect(config.database, autocommit=True)
    yield connection
    connection.close()


@pytest.fixture()
def receiver() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    yield started
    started.release()
    started.stop()


def fast(config: Config, **settings: float) -> Config:
    """Retries in fractions of a second instead of minutes, no metrics port."""
    values = {"retry_first_seconds": 0.2, "retry_max_seconds": 0.5, "timeout_seconds": 2.0,
              "poll_interval_seconds": 0.1, "give_up_after_seconds": 60.0, **settings}
    return dataclasses.replace(
        config, webhooks=WebhooksConfig(**values),  # type: ignore[arg-type]
        metrics=dataclasses.replace(config.metrics, webhooks_listen=""))


def add(conn: Conn, kek_ring: KeyRing, account: str, url: str, *, events: str | None = None,
        allow_private: bool = True, resolver: object = None) -> provisioning.AddedWebhook:
    return provisioning.add_webhook(conn, kek_ring, resolver or DnsLookup(DnsConfig()),  # type: ignore[arg-type]
                                    dt.datetime.now(dt.UTC), account, url, events, allow_private)


def emit(conn: Conn, account_id: int, event: str, n: int) -> list[str]:
    ids = []
    with conn.transaction():
        for i in range(n):
            event_id = webhook_events.event_id_for("test-event", account_id, event, i)
            webhook_events.emit(conn, account_id, event, {"n": i}, dt.datetime.now(dt.UTC),
                                event_id=event_id)
            ids.append(str(event_id))
    return ids


def states(conn: Conn, webhook_id: int) -> dict[str, int]:
    rows = store.deliveries(conn, webhook_id, False, 10000)
    found: dict[str, int] = {}
    for row in rows:
        found[row["state"]] = found.get(row["state"], 0) + 1
    return found


def deliver_until(config: Config, done: Callable[[], bool], what: str,
                  timeout: float = 30) -> None:
    def attempt() -> bool:
        WebhookWorker(config, SystemClock()).once()
        return done()

    wait_until(attempt, timeout, what, interval=0.1)


def test_each_event_arrives_once_with_a_valid_signature(conn, db, config, kek_ring, unique,
                                                        receiver):
    sender = make_sender(db, unique)
    added = add(conn, kek_ring, sender.account, receiver.url)
    stored = db.execute("SELECT secret FROM webhooks WHERE id = %s",
                        (added.webhook.id,)).fetchone()["secret"]
    assert is_sealed(stored) and added.secret not in stored  # sealed with the KEK
    ids = emit(conn, sender.account_id, "delivered", 3) + emit(conn, sender.account_id,
                                                                "bounced", 2)
    summary = WebhookWorker(fast(config), SystemClock()).once()
    assert summary.delivered == 5
    assert sorted(receiver.event_ids()) == sorted(ids)
    for request in receiver.received:
        assert verify(added.secret, request)
        assert request.headers["Content-Type"] == "application/json"
        assert request.payload["id"] == request.event_id
        assert request.payload["account_id"] == sender.account_id
        stamp = int(request.headers["Txrelay-Signature"].split(",")[0].removeprefix("t="))
        assert abs(stamp - time.time()) < 300
    # Again: nothing more is sent, and emitting the same events again queues nothing.
    emit(conn, sender.account_id, "delivered", 3)
    assert WebhookWorker(fast(config), SystemClock()).once().delivered == 0
    assert len(receiver.received) == 5
    assert states(conn, added.webhook.id) == {"delivered": 5}


def test_only_subscribed_events_of_the_webhooks_own_account_are_sent(conn, db, config, kek_ring,
                                                                      unique, receiver):
    sender, other = make_sender(db, unique), make_sender(db, unique + "o")
    add(conn, kek_ring, sender.account, receiver.url, events="bounced")
    emit(conn, sender.account_id, "delivered", 2)
    bounced = emit(conn, sender.account_id, "bounced", 1)
    emit(conn, other.account_id, "bounced", 1)
    WebhookWorker(fast(config), SystemClock()).once()
    assert receiver.event_ids() == bounced


def test_receiver_down_for_a_while_then_back_gets_every_event_once(conn, db, config, kek_ring,
                                                                   unique, receiver):
    sender = make_sender(db, unique)
    added = add(conn, kek_ring, sender.account, receiver.url)
    receiver.stop()
    ids = emit(conn, sender.account_id, "delivered", 20)
    worker_config = fast(config)
    retried = delivered = 0
    for _ in range(3):  # several failed rounds while it is down
        summary = WebhookWorker(worker_config, SystemClock()).once()
        retried, delivered = retried + summary.retried, delivered + summary.delivered
        time.sleep(0.3)
    assert retried >= 20 and delivered == 0
    rows = store.deliveries(conn, added.webhook.id, False, 100)
    assert all(r["state"] == "pending" and "ConnectionRefused" in r["last_error"] for r in rows)
    receiver.start()
    deliver_until(worker_config, lambda: states(conn, added.webhook.id) == {"delivered": 20},
                  "every event delivered after the receiver came back")
    assert sorted(receiver.event_ids()) == sorted(ids)  # each once
    assert all(verify(added.secret, request) for request in receiver.received)


def test_a_receiver_answering_500_forever_ends_failed_and_says_why(conn, db, config, kek_ring,
                                                                   unique, receiver):
    receiver.status = 500
    sender = make_sender(db, unique)
    added = add(conn, kek_ring, sender.account, receiver.url)
    emit(conn, sender.account_id, "bounced", 1)
    worker_config = fast(config, give_up_after_seconds=1.5)
    deliver_until(worker_config, lambda: states(conn, added.webhook.id) == {"failed": 1},
                  "the event given up")
    [row] = store.deliveries(conn, added.webhook.id, True, 10)
    assert row["last_status"] == 500 and row["last_error"] == "HTTP 500 ok"
    assert row["attempts"] >= 2 and len(receiver.received) == row["attempts"]
    assert row["next_attempt_at"] is None
    count = len(receiver.received)
    WebhookWorker(worker_config, SystemClock()).once()
    assert len(receiver.received) == count  # failed means never again


def test_a_hanging_receiver_holds_one_slot_while_the_others_deliver(conn, db, config, kek_ring,
                                                                    unique, receiver):
    stuck = WebhookReceiver().start()
    stuck.hang = True
    try:
        sender, other = make_sender(db, unique), make_sender(db, unique + "h")
        hanging = add(conn, kek_ring, other.account, stuck.url)
        fine = add(conn, kek_ring, sender.account, receiver.url)
        emit(conn, other.account_id, "delivered", 1)
        ids = emit(conn, sender.account_id, "delivered", 30)
        summary = WebhookWorker(fast(config, timeout_seconds=1.5, concurrency=2),
                                SystemClock()).once()
        assert summary.delivered == 30 and summary.retried == 1
        assert sorted(receiver.event_ids()) == sorted(ids)
        [row] = store.deliveries(conn, hanging.webhook.id, False, 10)
        assert row["state"] == "pending"
        assert row["last_error"] == "127.0.0.1: no complete answer within 1.5 s"
        assert states(conn, fine.webhook.id) == {"delivered": 30}
    finally:
        stuck.release()
        stuck.stop()


def test_a_receiver_that_hangs_forever_ends_failed(conn, db, config, kek_ring, unique,
                                                   receiver):
    receiver.hang = True
    sender = make_sender(db, unique)
    added = add(conn, kek_ring, sender.account, receiver.url)
    emit(conn, sender.account_id, "delivered", 1)
    worker_config = fast(config, timeout_seconds=0.5, give_up_after_seconds=1.0)
    deliver_until(worker_config, lambda: states(conn, added.webhook.id) == {"failed": 1},
                  "the event given up")
    [row] = store.deliveries(conn, added.webhook.id, True, 10)
    assert row["last_status"] is None
    assert row["last_error"] == "127.0.0.1: no complete answer within 0.5 s"


def test_two_workers_share_the_outbox_without_sending_an_event_twice(
        conn, db, config, kek_ring, unique, receiver):
    """Two nodes' workers at once: FOR UPDATE SKIP LOCKED gives each event to one of them."""
    sender = make_sender(db, unique)
    add(conn, kek_ring, sender.account, receiver.url)
    ids = emit(conn, sender.account_id, "delivered", 200)
    worker_config = fast(config, concurrency=3)
    workers = [WebhookWorker(worker_config, SystemClock()) for _ in range(2)]
    threads = [threading.Thread(target=w.once) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    counts = [w.summary.delivered for w in workers]
    print(f"\nevents delivered by each worker: {counts}")
    assert sum(counts) == 200
    assert sorted(receiver.event_ids()) == sorted(ids)  # each once


def test_a_receiver_trickling_its_answer_is_cut_off_at_the_timeout(receiver) -> None:
    """Each byte comes within the socket timeout; the attempt's deadline still ends it."""
    receiver.trickle = True
    outcome = post(receiver.url, {"id": "e1"}, "e1", "whsec_x",
                   resolver=DnsLookup(DnsConfig()), allow_private=True, timeout=1.5)
    assert (outcome.status, outcome.error) == (
        None, "127.0.0.1: no complete answer within 1.5 s")


def test_a_host_that_turns_private_after_add_is_refused_at_delivery(
        conn, db, config, kek_ring, unique, receiver, dns_server: DnsServer):
    """DNS rebinding: the name was public when added, points at loopback when delivered."""
    host = f"hooks-{unique}.example"
    dns_server.serve({host: [("A", "93.184.216.34")]})
    resolver = DnsLookup(DnsConfig(resolver=dns_server.address))
    sender = make_sender(db, unique)
    url = f"http://{host}:{receiver.port}/txrelay-events"
    added = add(conn, kek_ring, sender.account, url, allow_private=False, resolver=resolver)
    assert added.addresses == ["93.184.216.34"]
    dns_server.serve({host: [("A", "127.0.0.1")]})
    emit(conn, sender.account_id, "delivered", 1)
    worker_config = dataclasses.replace(fast(config), dns=DnsConfig(resolver=dns_server.address))
    summary = WebhookWorker(worker_config, SystemClock()).once()
    assert summary.refused == 1 and receiver.received == []
    [row] = store.deliveries(conn, added.webhook.id, False, 10)
    assert row["last_error"] == (f"refused: {host} resolves to 127.0.0.1, a loopback address; "
                                 "webhooks go to public addresses only (--allow-private allows "
                                 "it for this webhook)")


def test_https_connects_to_the_checked_address_and_verifies_the_urls_host_name(
        tmp_path: Path, dns_server: DnsServer, unique: str) -> None:
    """The connection is pinned to the address checked, but TLS still checks the
    certificate against the URL's host name (SNI included), not against that address."""
    host, other = f"hooks-{unique}.example", f"other-{unique}.example"
    dns_server.serve({host: [("A", "127.0.0.1")], other: [("A", "127.0.0.1")]})
    certificate = tls.self_signed(tmp_path / "tls", host)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(certificate.cert_file, certificate.key_file)
    trusting = ssl.create_default_context(cafile=str(certificate.cert_file))
    receiver = WebhookReceiver(tls=server_side).start()
    resolver = DnsLookup(DnsConfig(resolver=dns_server.address))
    try:
        def send(name: str) -> Outcome:
            return post(f"https://{name}:{receiver.port}/hook", {"id": "e1"}, "e1", "whsec_x",
                        resolver=resolver, allow_private=True, timeout=5, context=trusting)

        assert send(host).status == 200
        assert receiver.received[0].headers["Host"] == f"{host}:{receiver.port}"
        wrong = send(other)
        assert wrong.status is None and "CERTIFICATE_VERIFY_FAILED" in (wrong.error or "")
        untrusted = post(f"https://{host}:{receiver.port}/hook", {"id": "e2"}, "e2", "whsec_x",
                         resolver=resolver, allow_private=True, timeout=5)
        assert untrusted.status is None and "CERTIFICATE_VERIFY_FAILED" in (untrusted.error or "")
        assert len(receiver.received) == 1
    finally:
        receiver.stop()


def test_removed_webhooks_get_nothing_more(conn, db, config, kek_ring, unique, receiver):
    sender = make_sender(db, unique)
    added = add(conn, kek_ring, sender.account, receiver.url)
    emit(conn, sender.account_id, "delivered", 2)
    assert provisioning.remove_webhook(conn, added.webhook.id, dt.datetime.now(dt.UTC)) == 2
    emit(conn, sender.account_id, "bounced", 1)
    WebhookWorker(fast(config), SystemClock()).once()
    assert receiver.received == []
    assert states(conn, added.webhook.id) == {"failed": 2}


def outbox(db: Conn, account_id: int, event: str) -> list[dict]:
    return db.execute("SELECT o.payload FROM webhook_outbox o JOIN webhooks w ON w.id = "
                      "o.webhook_id WHERE w.account_id = %s AND o.event = %s ORDER BY o.id",
                      (account_id, event)).fetchall()


@pytest.fixture()
def client(config: Config) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(config.redis.url)
    yield connection
    connection.close()


def test_the_tick_queues_block_expired_quota_low_and_quota_exhausted_once(
        conn, db, config, kek_ring, unique, receiver, client):
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=10)
    sender = make_sender(db, unique, quota=100, threshold=50)
    add(conn, kek_ring, sender.account, receiver.url)
    old_block = db.execute(
        "INSERT INTO quota_blocks (account_id, kind, amount, booked_at, expires_at) "
        "VALUES (%s, 'booked', 10, %s, %s) RETURNING id",
        (sender.account_id, start - dt.timedelta(days=31), start - dt.timedelta(days=1)),
    ).fetchone()["id"]
    mailer = RecordingMailer()
    run_tick(conn, client, config, start, mailer, [sender.account_id])
    [expired] = outbox(db, sender.account_id, "block.expired")
    assert expired["payload"]["data"] == {"block_id": old_block, "expired_unused": 10}
    assert outbox(db, sender.account_id, "quota.exhausted") == []
    add_message(db, sender, f"Q{unique}", [f"r{i}@x.test" for i in range(60)],
                accepted_at=start)
    run_tick(conn, client, config, start, mailer, [sender.account_id])
    [low] = outbox(db, sender.account_id, "quota.low")
    assert low["payload"]["data"] == {"account": sender.account, "remaining": 40,
                                      "threshold": 50}
    add_message(db, sender, f"R{unique}", [f"s{i}@x.test" for i in range(40)],
                accepted_at=start)
    for _ in range(2):
        run_tick(conn, client, config, start, mailer, [sender.account_id])
    [exhausted] = outbox(db, sender.account_id, "quota.exhausted")
    assert exhausted["payload"]["data"] == {"account": sender.account, "remaining": 0}
    # Quota back, then used up again: told again, once.
    extra = db.execute("INSERT INTO quota_blocks (account_id, kind, amount, booked_at) "
                       "VALUES (%s, 'demo', 10, %s) RETURNING id",
                       (sender.account_id, start)).fetchone()["id"]
    run_tick(conn, client, config, start, mailer, [sender.account_id])
    db.execute("UPDATE quota_blocks SET used = amount WHERE id = %s", (extra,))
    later = start + dt.timedelta(minutes=1)
    run_tick(conn, client, config, later, mailer, [sender.account_id])
    run_tick(conn, client, config, later, mailer, [sender.account_id])
    assert len(outbox(db, sender.account_id, "quota.exhausted")) == 2
    WebhookWorker(fast(config), SystemClock()).once()
    assert sorted(r.payload["event"] for r in receiver.received) == [
        "block.expired", "quota.exhausted", "quota.exhausted", "quota.low"]


def test_the_daemons_role_may_deliver(config, db, milter_url):
    """The worker connects with [database] milter_url (the daemons' role): its grants
    cover claiming and recording, and the tick's mark of an exhausted quota."""
    with psycopg.connect(milter_url, autocommit=True) as daemon, daemon.transaction():
        daemon.execute("SELECT id FROM webhook_outbox FOR UPDATE SKIP LOCKED LIMIT 1")
        daemon.execute("UPDATE webhook_outbox SET last_error = last_error WHERE false")
        daemon.execute("UPDATE quota_reminders SET exhausted_since = NULL WHERE false")
        daemon.execute("INSERT INTO quota_reminders (account_id, changed_at, exhausted_since) "
                       "SELECT id, now(), now() FROM accounts WHERE false")


def test_secrets_without_a_kek_are_stored_in_clear_and_still_sign(conn, db, config, unique,
                                                                  receiver, tmp_path: Path):
    sender = make_sender(db, unique)
    added = provisioning.add_webhook(conn, None, DnsLookup(DnsConfig()), dt.datetime.now(dt.UTC),
                                     sender.account, receiver.url, None, True)
    assert not added.sealed
    emit(conn, sender.account_id, "complained", 1)
    WebhookWorker(fast(config), SystemClock()).once()
    assert len(receiver.received) == 1 and verify(added.secret, receiver.received[0])
