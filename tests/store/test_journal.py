"""The local journal: fsync'd appends, idempotent replay into the real PostgreSQL, torn lines,
locks between milters, the hourly bound, and an unwritable directory."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.store.builders import Tenant
from txrelay.config import DatabaseConfig
from txrelay.store import database
from txrelay.store.journal import Journal, JournalEntry, JournalUnavailable
from txrelay.store.ledger import AcceptedMessage, Recorded, record_acceptance, settle


def accepted(tenant: Tenant, recipients: list[str]) -> AcceptedMessage:
    txn = uuid.uuid4()
    return AcceptedMessage(txn, "J" + txn.hex[:9], "test-node", f"<{txn.hex}@x>",
                           tenant.account_id, tenant.connection_id, f"o@{tenant.domain}",
                           f"o@{tenant.domain}", 1234, recipients, dt.datetime.now(dt.UTC))


def counts(db: psycopg.Connection, tenant: Tenant) -> tuple[int, int, int]:
    row = db.execute(
        "SELECT (SELECT count(*) FROM messages WHERE account_id = %(a)s) AS m, "
        "(SELECT count(*) FROM ledger WHERE account_id = %(a)s) AS l, "
        "(SELECT sum(used) FROM quota_blocks WHERE account_id = %(a)s) AS u",
        {"a": tenant.account_id}).fetchone()
    assert isinstance(row, dict)
    return int(row["m"]), int(row["l"]), int(row["u"])


def replay_into(journal: Journal, database_url: str) -> int:
    """Replay, then settle the accounts replayed for, as the milter's settler would."""
    with database.connect(DatabaseConfig(url=database_url)) as conn:
        accounts: set[int] = set()

        def record(entry: JournalEntry) -> Recorded:
            accounts.add(entry.message.account_id)
            return record_acceptance(conn, entry.message, entry.holds)

        replayed = journal.replay(record)
        for account_id in accounts:
            settle(conn, account_id)
        return replayed


def test_replaying_the_journal_twice_records_each_message_once(
        tmp_path: Path, database_url: str, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    journal = Journal(tmp_path / "state", database_url, 1000)
    old_umask = os.umask(0o117)  # the milter daemon's (for its socket)
    try:
        journal.append(JournalEntry(accepted(tenant, ["z@x.example"])))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    for recipients in (["a@x.example", "b@x.example"], ["c@x.example"]):
        journal.append(JournalEntry(accepted(tenant, recipients)))
    files = journal.pending_files()
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    copy = files[0].read_bytes()
    assert journal.backlog() == 3
    assert replay_into(journal, database_url) == 3
    assert counts(db, tenant) == (3, 4, 4) and journal.backlog() == 0
    assert journal.pending_files() == []
    files[0].write_bytes(copy)  # the same journal again (e.g. a restored backup)
    assert replay_into(Journal(tmp_path / "state", database_url, 1000), database_url) == 3
    assert counts(db, tenant) == (3, 4, 4)


def test_a_torn_last_line_was_never_acknowledged_and_is_skipped(
        tmp_path: Path, database_url: str, db: psycopg.Connection,
        tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    journal = Journal(tmp_path, database_url, 1000)
    journal.append(JournalEntry(accepted(tenant, ["a@x.example"])))
    journal.close()
    path = journal.pending_files()[0]
    with path.open("ab") as handle:
        handle.write(b'{"txn_id":"')  # the process died in the middle of a write
    assert replay_into(Journal(tmp_path, database_url, 1000), database_url) == 1
    assert counts(db, tenant)[:2] == (1, 1)


def test_a_file_another_milter_still_writes_is_left_alone(
        tmp_path: Path, database_url: str, tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    writer = Journal(tmp_path, database_url, 1000)
    writer.append(JournalEntry(accepted(tenant, ["a@x.example"])))
    path = writer.pending_files()[0]
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(BlockingIOError):  # the writer holds its file's lock
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    writer.close()
    fcntl.flock(fd, fcntl.LOCK_EX)  # now another milter, still writing, holds it
    try:
        assert replay_into(Journal(tmp_path, database_url, 1000), database_url) == 0
        assert path.exists()
    finally:
        os.close(fd)


def test_a_journal_is_only_replayed_into_its_own_database(
        tmp_path: Path, database_url: str, tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    Journal(tmp_path, "postgresql://postgres@127.0.0.1:5432/other", 1000).append(
        JournalEntry(accepted(tenant, ["a@x.example"])))
    mine = Journal(tmp_path, database_url, 1000)
    assert mine.backlog() == 0 and replay_into(mine, database_url) == 0


def test_the_hourly_bound_refuses_beyond_it(tmp_path: Path, database_url: str,
                                            tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    journal = Journal(tmp_path, database_url, 3)
    journal.append(JournalEntry(accepted(tenant, ["a@x.example", "b@x.example"])))
    with pytest.raises(JournalUnavailable, match="journal_max_per_hour"):
        journal.append(JournalEntry(accepted(tenant, ["c@x.example", "d@x.example"])))
    journal.append(JournalEntry(accepted(tenant, ["e@x.example"])))


def test_an_unwritable_journal_is_service_unavailable(
        tmp_path: Path, database_url: str, tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(JournalUnavailable, match="not writable"):
        Journal(blocker / "journal", database_url, 10).append(
            JournalEntry(accepted(tenant, ["a@x.example"])))


def test_a_full_disk_is_service_unavailable(
        database_url: str, tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    journal = Journal(Path("/dev/full").parent / "full-journal-does-not-exist", database_url, 10)
    journal._active = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
    with pytest.raises(JournalUnavailable, match="not writable"):
        journal.append(JournalEntry(accepted(tenant, ["a@x.example"])))
    assert journal.backlog() == 0
