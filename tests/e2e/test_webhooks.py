"""Webhooks end to end: real mail through real Postfix and the milter, outcomes recorded by
the tracker (`txrelay tracker --once`), events delivered by the worker daemon
(`txrelay webhooks run`) to a real HTTP receiver on loopback, signed, each once, also when
the receiver was down for a while; and mail keeps flowing while webhooks back up."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.harness.fixtures import RelayStack
from tests.harness.metrics import http_get, samples
from tests.harness.processes import TXRELAY, ManagedProcess, free_port, run, wait_until
from tests.harness.provision import Provisioned
from tests.harness.smtp import build_message, submit
from tests.harness.webhook_receiver import WebhookReceiver, verify

pytestmark = pytest.mark.e2e

RCPT_DOMAIN = "rcpt.example.net"


def cli(relay: RelayStack, *args: str) -> Any:
    done = run([TXRELAY, "--config", str(relay.config_file), "--json", *args], timeout=120)
    return json.loads(done.stdout)


def query(relay: RelayStack, sql: str, *params: object) -> list[dict[str, Any]]:
    with psycopg.connect(relay.database_url, row_factory=dict_row, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def send(relay: RelayStack, shop: Provisioned, recipients: list[str]) -> float:
    """One message; the seconds its SMTP session took."""
    raw = build_message(shop.address(), recipients)
    for _ in range(10):
        started = time.perf_counter()
        result = submit(shop.username, shop.password, shop.address(), recipients, raw,
                        port=relay.port)
        took = time.perf_counter() - started
        refusal = result.first_refusal()
        if refusal is None or "belongs to no active connection" not in refusal.text:
            break
        time.sleep(0.5)
    assert result.delivered_to == recipients, result
    return took


def worker(relay: RelayStack, directory: Path, metrics_port: int) -> ManagedProcess:
    """`txrelay webhooks run` as its unit runs it, with retries in fractions of a second."""
    env = {**os.environ, "TXRELAY_CONFIG": str(relay.config_file),
           "TXRELAY_WEBHOOKS_RETRY_FIRST_SECONDS": "0.3",
           "TXRELAY_WEBHOOKS_RETRY_MAX_SECONDS": "1",
           "TXRELAY_WEBHOOKS_POLL_INTERVAL_SECONDS": "0.2",
           "TXRELAY_WEBHOOKS_TIMEOUT_SECONDS": "3",
           "TXRELAY_METRICS_WEBHOOKS_LISTEN": f"127.0.0.1:{metrics_port}"}
    process = ManagedProcess([TXRELAY, "webhooks", "run"], directory / "webhooks.log", env=env)
    process.start()
    return process


def outcome_rows(relay: RelayStack, webhook_id: int) -> list[dict[str, Any]]:
    return query(relay, "SELECT event, event_id, attempts, delivered_at FROM webhook_outbox "
                        "WHERE webhook_id = %s", webhook_id)


def test_real_mails_events_reach_the_receiver_once_signed_even_after_it_was_down(
        relay: RelayStack, tmp_path: Path) -> None:
    shop = relay.provision()
    receiver = WebhookReceiver()  # down: not started yet
    hook = cli(relay, "webhook", "add", shop.account, receiver.url, "--allow-private")
    ok, gone = f"hook-ok@{RCPT_DOMAIN}", f"bounce-hook@{RCPT_DOMAIN}"
    send(relay, shop, [ok, gone])
    metrics_port = free_port()
    daemon = worker(relay, tmp_path, metrics_port)
    try:
        def tracked() -> bool:
            cli(relay, "tracker", "--once")
            events = {row["event"] for row in outcome_rows(relay, hook["id"])}
            return {"delivered", "bounced"} <= events

        wait_until(tracked, 90, "the tracker to queue delivered and bounced",
                   lambda: relay.postfix.log(30))
        wait_until(lambda: all(r["attempts"] >= 2 for r in outcome_rows(relay, hook["id"])),
                   60, "the worker to fail against the receiver that is down", daemon_log(tmp_path))
        status, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        assert samples(text, "txrelay_webhook_backlog")[()] >= 2
        assert samples(text, "txrelay_webhook_attempts_total")[(("outcome", "retry"),)] >= 2

        receiver.start()  # back
        wait_until(lambda: all(r["delivered_at"] for r in outcome_rows(relay, hook["id"])),
                   60, "every event delivered once the receiver is back", daemon_log(tmp_path))
        time.sleep(1.0)  # a duplicate, were there one, would arrive within the next polls
        rows = outcome_rows(relay, hook["id"])
        assert sorted(receiver.event_ids()) == sorted(str(r["event_id"]) for r in rows)
        assert len(set(receiver.event_ids())) == len(receiver.event_ids())  # none twice
        by_event = {r.payload["event"]: r for r in receiver.received}
        assert by_event["delivered"].payload["data"]["recipient"] == ok
        assert by_event["bounced"].payload["data"]["recipient"] == gone
        for request in receiver.received:
            assert verify(hook["secret"], request), request.headers
        deliveries = cli(relay, "webhook", "deliveries", str(hook["id"]))
        assert {d["state"] for d in deliveries} == {"delivered"}
        assert all(d["attempts"] >= 3 for d in deliveries)  # failed while down, then 2xx
    finally:
        daemon.stop()
        receiver.stop()


def daemon_log(directory: Path) -> Any:
    return lambda: (directory / "webhooks.log").read_text(errors="replace")[-3000:]


def test_mail_flows_while_thousands_of_webhook_events_back_up(relay: RelayStack,
                                                              tmp_path: Path) -> None:
    """The outbox is the worker's business only: with 5000 undelivered events and a worker
    failing against a dead receiver, the milter answers as before. Prints the figures."""
    shop = relay.provision()
    before = [send(relay, shop, [f"calm-{i}@{RCPT_DOMAIN}"]) for i in range(10)]
    dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
    hook = cli(relay, "webhook", "add", shop.account, dead, "--allow-private")
    query(relay, "INSERT INTO webhook_outbox (webhook_id, event_id, event, payload, "
                 "created_at, next_attempt_at) SELECT %s, gen_random_uuid(), 'delivered', "
                 "'{}'::jsonb, now(), now() FROM generate_series(1, 5000)", hook["id"])
    daemon = worker(relay, tmp_path, free_port())
    try:
        wait_until(lambda: query(relay, "SELECT count(*) AS n FROM webhook_outbox WHERE "
                                        "webhook_id = %s AND attempts > 0",
                                 hook["id"])[0]["n"] > 100,
                   60, "the worker to be busy failing", daemon_log(tmp_path))
        during = [send(relay, shop, [f"busy-{i}@{RCPT_DOMAIN}"]) for i in range(10)]
        assert daemon.running
    finally:
        daemon.stop()
    pending = query(relay, "SELECT count(*) AS n FROM webhook_outbox WHERE webhook_id = %s "
                           "AND delivered_at IS NULL AND failed_at IS NULL", hook["id"])[0]["n"]
    assert pending > 1000  # still backed up while the mail went through
    print(f"\nSMTP session incl. EOM, seconds: outbox empty median "
          f"{statistics.median(before):.4f} max {max(before):.4f}; 5000 events backed up "
          f"median {statistics.median(during):.4f} max {max(during):.4f}")
