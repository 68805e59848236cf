"""Reliability cases of issue 12 (item 9) on the fault stack's own Postfix, milter and
tracker (tests/harness/stack.py): Postfix killed right after the 250, a milter slower than
Postfix's milter timeouts, and a next hop without 8BITMIME.

Each test checks what docs/failure-modes.md promises: the client's reply, the mail at the
next hop (signed, DKIM verified), and the ledger and quota (billed once, or nothing)."""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import subprocess
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis

from tests.harness.postfix_faults import (
    PlainSmtpSink,
    kill_postfix,
    main_cf,
    submission_options,
)
from tests.harness.processes import wait_until
from tests.harness.provision import Provisioned, provision, txrelay_json, verify_dkim
from tests.harness.smtp import Reply, build_message, smtp_session, submit
from tests.harness.stack import FaultStack
from txrelay.store.keys import AccountKeys

pytestmark = pytest.mark.e2e

# Short milter timeouts on the fault stack's submission service, for the slow-milter tests.
MILTER_TIMEOUT_SECONDS = 3
MILTER_TIMEOUTS = {"milter_command_timeout": f"{MILTER_TIMEOUT_SECONDS}s",
                   "milter_content_timeout": f"{MILTER_TIMEOUT_SECONDS}s"}

SELECT_LEDGER = """
SELECT recipient, billing, state FROM ledger WHERE account_id = %s ORDER BY id"""
SELECT_QUOTA_USED = """
SELECT coalesce(sum(used), 0) FROM quota_blocks WHERE account_id = %s"""


@pytest.fixture()
def shop(faults: FaultStack) -> Provisioned:
    """A paid account (a booked block of 25,000), fresh for each test."""
    made = provision(faults.config_file, f"rel-{uuid.uuid4().hex[:8]}", rate_limit=0)
    txrelay_json(faults.config_file, "quota", "book", made.account, "--amount", "25000")
    time.sleep(2 * faults.config.milter.policy_refresh_seconds + 0.3)  # both milters see it
    return made


def unique_rcpt(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@rcpt.example.net"


def ledger(faults: FaultStack, shop: Provisioned) -> list[tuple[str, str, str]]:
    with psycopg.connect(faults.config.database.url) as conn:
        return [tuple(row) for row in  # type: ignore[misc]
                conn.execute(SELECT_LEDGER, (shop.account_id,)).fetchall()]


def quota_used(faults: FaultStack, shop: Provisioned) -> int:
    with psycopg.connect(faults.config.database.url) as conn:
        row = conn.execute(SELECT_QUOTA_USED, (shop.account_id,)).fetchone()
    assert row is not None
    return int(row[0])


def settled_ledger(faults: FaultStack, shop: Provisioned,
                   wanted: set[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """The ledger once every row is billed and in the wanted (billing, state) pairs."""
    wait_until(lambda: {(b, s) for _, b, s in ledger(faults, shop)} <= wanted
               and bool(ledger(faults, shop)), 40, f"ledger rows {wanted}",
               lambda: f"{ledger(faults, shop)}\n{faults.tracker.log(15)}")
    return ledger(faults, shop)


# -- Postfix killed right after the 250 ---------------------------------------------------


def test_postfix_killed_right_after_the_250_delivers_after_restart_billed_once(
        faults: FaultStack, shop: Provisioned) -> None:
    """The next hop is down, so the message is still in the queue when Postfix (master and
    every child) gets SIGKILL right after the 250; after `postfix start` it is delivered
    once, signed, and the ledger has one row for it, billed to quota once."""
    rcpt = unique_rcpt("sigkill")
    faults.sink.stop()
    try:
        result = submit(shop.username, shop.password, shop.address(), [rcpt],
                        build_message(shop.address(), [rcpt], subject="killed after 250"),
                        port=faults.port)
        assert result.delivered_to == [rcpt], result
        killed = kill_postfix(faults.postfix)
        assert len(killed) >= 3, killed  # master, qmgr, pickup at least
    finally:
        faults.sink.start()
        faults.postfix.start()
    faults.postfix.flush()
    captured = faults.sink.wait_for_recipient(rcpt, timeout=60)
    assert verify_dkim(captured.raw, faults.config.database.url)
    rows = settled_ledger(faults, shop, {("quota", "delivered")})
    assert [r for r, _, _ in rows] == [rcpt]
    assert quota_used(faults, shop) == 1
    faults.postfix.flush()
    time.sleep(2)
    assert len(faults.sink.for_recipient(rcpt)) == 1, "delivered twice"


# -- a milter slower than Postfix's milter timeouts ----------------------------------------


@contextlib.contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    """These processes (of the test's own stack) frozen with SIGSTOP for the block."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def milter_pids(faults: FaultStack) -> list[int]:
    return [faults.milter.process.pid]


def postgres_pids(faults: FaultStack) -> list[int]:
    """The fault stack's private PostgreSQL: postmaster and every backend."""
    master = int((faults.postgres.data / "postmaster.pid").read_text().split()[0])
    done = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True,
                          text=True, check=False)
    return [master, *(int(pid) for pid in done.stdout.split())]


def end_of_data_while_stopped(client: smtplib.SMTP, message: bytes,
                              pids: list[int]) -> tuple[Reply, float]:
    """DATA with the whole message sent, `pids` frozen just before the final dot (Postfix
    hands the milter headers, body and end of message only after the dot): the reply to
    the dot and how long it took; they stay frozen a second after that reply."""
    code, text = client.docmd("DATA")
    assert code == 354, (code, text)
    client.send(message)
    with stopped(pids):
        started = time.monotonic()
        client.send(b".\r\n")
        code, text = client.getreply()
        waited = time.monotonic() - started
        time.sleep(1)
    return Reply(code, text.decode(errors="replace")), waited


def slow_transaction(faults: FaultStack, shop: Provisioned, rcpt: str, message: bytes,
                     pids: list[int]) -> Reply:
    with smtp_session(shop.username, shop.password, port=faults.port) as client:
        assert client.mail(shop.address())[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        reply, waited = end_of_data_while_stopped(client, message, pids)
    print(f"\nend of data: {reply} after {waited:.1f} s")
    assert reply.code // 100 == 4, reply
    assert MILTER_TIMEOUT_SECONDS - 0.5 < waited < MILTER_TIMEOUT_SECONDS + 10
    return reply


def assert_nothing_billed_then_retry_billed_once(faults: FaultStack, shop: Provisioned,
                                                 rcpt: str, message: bytes) -> None:
    """Nothing at the next hop, no ledger row left billed, quota untouched and nothing held
    in Redis; the client's retry is delivered, signed, and billed once."""
    faults.postfix.flush()
    keys = AccountKeys(faults.config.redis.key_prefix, shop.account_id)
    client = redis.Redis.from_url(faults.config.redis.url, socket_timeout=5)
    wait_until(lambda: client.zcard(keys.held) == 0, 30, "reservations released",
               lambda: faults.milter.log(10))
    assert all(billing == "void" for _, billing, _ in ledger(faults, shop)), ledger(faults, shop)
    assert quota_used(faults, shop) == 0
    assert not faults.sink.for_recipient(rcpt)
    retried = submit(shop.username, shop.password, shop.address(), [rcpt], message,
                     port=faults.port)
    assert retried.delivered_to == [rcpt], retried
    assert verify_dkim(faults.sink.wait_for_recipient(rcpt).raw, faults.config.database.url)
    wait_until(lambda: quota_used(faults, shop) == 1, 20, "the retry billed",
               lambda: str(ledger(faults, shop)))
    assert len(faults.sink.for_recipient(rcpt)) == 1
    assert sum(1 for _, billing, _ in ledger(faults, shop) if billing != "void") == 1


def test_milter_frozen_past_the_milter_timeout_gets_a_tempfail_and_nothing_is_billed(
        faults: FaultStack, shop: Provisioned) -> None:
    """The milter frozen (SIGSTOP) before the end of data, past milter_content_timeout (3 s
    here): Postfix tempfails (milter_default_action = tempfail), queues nothing. Thawed, the
    milter finds the transaction gone and gives its reservation back: nothing recorded."""
    rcpt = unique_rcpt("frozen-milter")
    message = build_message(shop.address(), [rcpt], subject="frozen milter")
    with submission_options(faults.postfix, faults.port, **MILTER_TIMEOUTS):
        slow_transaction(faults, shop, rcpt, message, milter_pids(faults))
        assert ledger(faults, shop) == []
        assert_nothing_billed_then_retry_billed_once(faults, shop, rcpt, message)


def test_milter_stuck_in_end_of_message_past_the_timeout_has_its_record_voided(
        faults: FaultStack, shop: Provisioned) -> None:
    """The milter is inside end of message, waiting for PostgreSQL (frozen), when Postfix's
    milter_content_timeout (3 s here) runs out: the client gets a tempfail and nothing is
    queued, but the milter, once PostgreSQL answers, still records the message (or
    journals it and replays it). The tracker voids that row, since Postfix never queued it,
    and gives the quota back, so the client's retry is billed once."""
    rcpt = unique_rcpt("stuck-milter")
    message = build_message(shop.address(), [rcpt], subject="stuck milter")
    with submission_options(faults.postfix, faults.port, **MILTER_TIMEOUTS):
        slow_transaction(faults, shop, rcpt, message, postgres_pids(faults))
        rows = settled_ledger(faults, shop, {("void", "voided")})
        print(f"ledger after the timeout: {rows}")
        assert [r for r, _, _ in rows] == [rcpt]
        assert_nothing_billed_then_retry_billed_once(faults, shop, rcpt, message)


# -- a next hop without 8BITMIME ---------------------------------------------------------

EIGHT_BIT_BODY = "Grüße aus Köln: Ihre Bestellung über 12 € ist unterwegs.\r\n"


def send_eight_bit(faults: FaultStack, shop: Provisioned, rcpt: str) -> None:
    message = build_message(shop.address(), [rcpt], subject="8bit", body=EIGHT_BIT_BODY,
                            extra_headers=[("Content-Transfer-Encoding", "8bit")])
    result = submit(shop.username, shop.password, shop.address(), [rcpt], message,
                    port=faults.port)
    assert result.delivered_to == [rcpt], result


@pytest.fixture()
def next_hop_without_8bitmime(faults: FaultStack) -> Iterator[PlainSmtpSink]:
    """The fault stack's Postfix relays to smtp-sink -8 for the test."""
    directory = faults.config_file.parent / f"smtp-sink-{uuid.uuid4().hex[:6]}"
    sink = PlainSmtpSink(directory / "dump")
    sink.start()
    try:
        with main_cf(faults.postfix, relayhost=f"[127.0.0.1]:{sink.port}"):
            yield sink
    finally:
        sink.stop()


def test_eight_bit_body_to_a_next_hop_without_8bitmime_keeps_a_valid_signature(
        faults: FaultStack, shop: Provisioned,
        next_hop_without_8bitmime: PlainSmtpSink) -> None:
    """The relay's Postfix as `txrelay postfix configure` leaves it: the 8-bit body goes
    out unconverted (disable_mime_output_conversion = yes), so the signature verifies."""
    assert faults.postfix.postconf("-h", "disable_mime_output_conversion").strip() == "yes"
    rcpt = unique_rcpt("eightbit")
    send_eight_bit(faults, shop, rcpt)
    captured = next_hop_without_8bitmime.wait_for_recipient(rcpt)
    assert EIGHT_BIT_BODY.encode() in captured.raw  # not turned into quoted-printable
    assert verify_dkim(captured.raw, faults.config.database.url)


def test_conversion_to_quoted_printable_would_break_the_signature(
        faults: FaultStack, shop: Provisioned,
        next_hop_without_8bitmime: PlainSmtpSink) -> None:
    """Why the setting matters: with Postfix's default (conversion on) the next hop gets
    quoted-printable, and the signature made over the 8-bit body no longer verifies."""
    rcpt = unique_rcpt("converted")
    with main_cf(faults.postfix, disable_mime_output_conversion="no"):
        send_eight_bit(faults, shop, rcpt)
        captured = next_hop_without_8bitmime.wait_for_recipient(rcpt)
    assert b"Content-Transfer-Encoding: quoted-printable" in captured.raw
    assert EIGHT_BIT_BODY.encode() not in captured.raw
    assert not verify_dkim(captured.raw, faults.config.database.url)


def test_conversion_off_on_the_delivering_smtp_service_alone_keeps_the_signature(
        faults: FaultStack, shop: Provisioned,
        next_hop_without_8bitmime: PlainSmtpSink) -> None:
    """Where the setting has to be: with main.cf at Postfix's default, `-o
    disable_mime_output_conversion=yes` on the smtp delivery service alone (the one that
    relays txrelay's mail) is enough: the smtp client is what converts."""
    rcpt = unique_rcpt("smtp-service")
    with main_cf(faults.postfix, disable_mime_output_conversion="no"):
        faults.postfix.postconf("-P", "smtp/unix/disable_mime_output_conversion=yes")
        faults.postfix.reload()
        try:
            send_eight_bit(faults, shop, rcpt)
            captured = next_hop_without_8bitmime.wait_for_recipient(rcpt)
        finally:
            faults.postfix.postconf("-PX", "smtp/unix/disable_mime_output_conversion")
    assert EIGHT_BIT_BODY.encode() in captured.raw
    assert verify_dkim(captured.raw, faults.config.database.url)
