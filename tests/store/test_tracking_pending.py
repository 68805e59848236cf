"""Log lines the tracker reads before the ledger knows their queue id (a message journaled
while PostgreSQL was down, replayed later): kept, applied once in log order when the row
appears, never voided meanwhile, and expired when no message ever claims them."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.store.builders import Tenant
from tests.store.tracking_fixtures import MailLog, RecordingMailer, states
from txrelay.clock import FixedClock
from txrelay.config import Config, DatabaseConfig
from txrelay.store import database, tracking
from txrelay.store.journal import Journal, JournalEntry
from txrelay.store.ledger import AcceptedMessage, record_acceptance, settle
from txrelay.tracker.daemon import RunSummary, TrackerDaemon

ACCEPTED = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)


@pytest.fixture()
def clock() -> FixedClock:
    """Twenty minutes after acceptance: well past the 600 s confirm timeout."""
    return FixedClock(ACCEPTED + dt.timedelta(minutes=20))


@pytest.fixture()
def daemon(config: Config, clock: FixedClock, maillog: MailLog,
           node: str) -> Iterator[TrackerDaemon]:
    tracker = TrackerDaemon(config, clock, log_path=maillog.path, node=node,
                            mailer=RecordingMailer(), rotation_grace=0.0)
    yield tracker
    tracker.disconnect()


def journaled(tmp_path: Path, database_url: str, tenant: Tenant, node: str,
              recipients: list[str]) -> tuple[Journal, AcceptedMessage]:
    """What the milter does while PostgreSQL is down: the record goes to the journal."""
    txn = uuid.uuid4()
    message = AcceptedMessage(txn, "P" + txn.hex[:9].upper(), node, f"<{txn.hex}@x>",
                              tenant.account_id, tenant.connection_id, f"o@{tenant.domain}",
                              f"o@{tenant.domain}", 1234, recipients, ACCEPTED)
    journal = Journal(tmp_path / "journal", database_url, 1000)
    journal.append(JournalEntry(message))
    journal.close()
    return journal, message


def replay(journal: Journal, database_url: str) -> int:
    with database.connect(DatabaseConfig(url=database_url)) as conn:
        return journal.replay(lambda e: record_acceptance(conn, e.message, e.holds))


def message_row(db: psycopg.Connection, message: AcceptedMessage) -> dict:
    row = db.execute("SELECT id, queued_at, removed_at FROM messages WHERE txn_id = %s",
                     (message.txn_id,)).fetchone()
    assert row is not None
    return row  # type: ignore[return-value]


def kept(db: psycopg.Connection, node: str) -> int:
    row = db.execute("SELECT count(*) AS n FROM tracker_pending_events WHERE node = %s",
                     (node,)).fetchone()
    return int(row["n"])  # type: ignore[index,call-overload]


def used(db: psycopg.Connection, tenant: Tenant) -> tuple[int, int]:
    """(quota used, ledger rows billed to quota) of the tenant, once its pending rows are
    settled (as the milter's settler does within a fraction of a second)."""
    settle(db, tenant.account_id)
    row = db.execute(
        "SELECT (SELECT sum(used) FROM quota_blocks WHERE account_id = %(a)s) AS used, "
        "(SELECT count(*) FROM ledger WHERE account_id = %(a)s AND billing = 'quota') AS q",
        {"a": tenant.account_id}).fetchone()
    return int(row["used"]), int(row["q"])  # type: ignore[index,call-overload]


def test_lines_read_before_the_replay_are_applied_once_after_it(
        tmp_path: Path, database_url: str, db: psycopg.Connection, node: str,
        maillog: MailLog, daemon: TrackerDaemon,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    journal, message = journaled(tmp_path, database_url, tenant, node, ["a@x.test", "b@x.test"])
    copy = tmp_path / "journal-copy"
    shutil.copytree(journal.directory, copy)
    qid = message.queue_id
    maillog.queued(qid, 2)
    maillog.delivery(qid, "a@x.test", "sent")
    maillog.delivery(qid, "b@x.test", "deferred")
    maillog.queued(qid, 1)
    maillog.delivery(qid, "b@x.test", "sent")
    maillog.removed(qid)
    summary = RunSummary()
    daemon.run_once(summary, tick=False)  # the tracker reads it all before the replay
    assert kept(db, node) == 6
    assert summary.counters.unmatched_events == 5  # "removed" is not an unmatched event

    assert replay(journal, database_url) == 1
    daemon.run_once(summary, tick=False)
    row = message_row(db, message)
    assert states(db, row["id"]) == {"a@x.test": "delivered", "b@x.test": "delivered"}
    assert row["queued_at"] is not None and row["removed_at"] is not None
    assert kept(db, node) == 0 and summary.voided == 0
    assert used(db, tenant) == (2, 2)

    for path in copy.iterdir():  # the same journal again: nothing changes
        shutil.copy(path, journal.directory / path.name)
    assert replay(Journal(journal.directory, database_url, 1000), database_url) == 1
    daemon.run_once(summary, tick=False)
    assert states(db, row["id"]) == {"a@x.test": "delivered", "b@x.test": "delivered"}
    rows = db.execute("SELECT count(*) AS n FROM ledger WHERE account_id = %s",
                      (tenant.account_id,)).fetchone()
    assert rows["n"] == 2  # type: ignore[index,call-overload]
    assert used(db, tenant) == (2, 2)
    assert summary.voided == 0


def test_a_replayed_row_with_kept_lines_is_not_voided_before_they_are_applied(
        tmp_path: Path, database_url: str, db: psycopg.Connection, node: str,
        maillog: MailLog, daemon: TrackerDaemon, clock: FixedClock,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    journal, message = journaled(tmp_path, database_url, tenant, node, ["a@x.test"])
    _, never_queued = journaled(tmp_path, database_url, tenant, node, ["z@x.test"])
    maillog.queued(message.queue_id, 1)
    daemon.run_once(RunSummary(), tick=False)
    assert replay(journal, database_url) == 2
    conn = daemon.conn
    assert conn is not None
    # The void scan runs between the replay and the tracker's next look at kept lines.
    with conn.transaction():
        voided = tracking.void_unconfirmed(conn, node, clock.now() - dt.timedelta(minutes=10),
                                           clock.now())
    assert voided.rows == 1  # only the message Postfix never logged
    assert states(db, message_row(db, never_queued)["id"]) == {"z@x.test": "voided"}
    assert states(db, message_row(db, message)["id"]) == {"a@x.test": "accepted"}
    daemon.run_once(RunSummary(), tick=False)
    assert states(db, message_row(db, message)["id"]) == {"a@x.test": "queued"}
    assert used(db, tenant) == (1, 1)


def test_a_live_line_after_kept_ones_is_applied_after_them(
        tmp_path: Path, database_url: str, db: psycopg.Connection, node: str,
        maillog: MailLog, daemon: TrackerDaemon,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    journal, message = journaled(tmp_path, database_url, tenant, node, ["a@x.test"])
    maillog.queued(message.queue_id, 1)
    maillog.delivery(message.queue_id, "a@x.test", "deferred")
    daemon.run_once(RunSummary(), tick=False)
    replay(journal, database_url)
    maillog.delivery(message.queue_id, "a@x.test", "sent")
    tracker = daemon.connect()
    result = tracker.run_pass()  # the live line finds the row: the kept lines go first
    assert result.counters.unmatched_events == 0
    row = message_row(db, message)
    assert states(db, row["id"]) == {"a@x.test": "delivered"}
    assert row["queued_at"] is not None and kept(db, node) == 0


def test_kept_lines_of_an_earlier_use_of_the_queue_id_are_never_applied(
        tmp_path: Path, database_url: str, db: psycopg.Connection, node: str,
        maillog: MailLog, config: Config, tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    journal, message = journaled(tmp_path, database_url, tenant, node, ["a@x.test"])
    qid = message.queue_id
    # Postfix's own bounce used the queue id and was gone before the message was accepted.
    maillog.queued(qid, 1)
    maillog.line("smtp", f"{qid}: to=<a@x.test>, relay=none, delay=0, delays=0/0/0/0, "
                         "dsn=5.0.0, status=bounced (gone)")
    maillog.removed(qid)
    before = TrackerDaemon(config, FixedClock(ACCEPTED - dt.timedelta(minutes=5)),
                           log_path=maillog.path, node=node, mailer=RecordingMailer(),
                           rotation_grace=0.0)
    try:
        before.run_once(RunSummary(), tick=False)
    finally:
        before.disconnect()
    assert kept(db, node) == 3
    replay(journal, database_url)
    after = TrackerDaemon(config, FixedClock(ACCEPTED + dt.timedelta(seconds=30)),
                          log_path=maillog.path, node=node, mailer=RecordingMailer(),
                          rotation_grace=0.0)
    try:
        after.run_once(RunSummary(), tick=False)
        row = message_row(db, message)
        assert states(db, row["id"]) == {"a@x.test": "accepted"}
        assert row["queued_at"] is None and row["removed_at"] is None
        maillog.queued(qid, 1)  # the message's own line
        after.run_once(RunSummary(), tick=False)
    finally:
        after.disconnect()
    assert states(db, message_row(db, message)["id"]) == {"a@x.test": "queued"}


def test_kept_lines_no_message_claims_expire_after_the_retention(
        db: psycopg.Connection, node: str, maillog: MailLog, daemon: TrackerDaemon,
        clock: FixedClock) -> None:
    maillog.queued("NOTOURS01", 1)  # Postfix's own mail: never in the ledger
    maillog.removed("NOTOURS01")
    daemon.run_once(RunSummary(), tick=False)
    assert kept(db, node) == 2
    clock.advance(tracking.PENDING_EVENT_RETENTION - dt.timedelta(minutes=1))
    assert daemon.expire_kept() == 0 and kept(db, node) == 2
    clock.advance(dt.timedelta(minutes=2))
    assert daemon.expire_kept() == 2 and kept(db, node) == 0
