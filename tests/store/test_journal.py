"""The local journal: fsync'd appends, idempotent replay into the real PostgreSQL, torn lines,
locks between milters, the hourly bound, and an unwritable directory."""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import logging
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.cli.conftest import run_main
from tests.store.builders import Tenant
from txrelay.config import DatabaseConfig
from txrelay.store import database
from txrelay.store.journal import (
    MAX_REPLAY_FAILURES,
    Journal,
    JournalEntry,
    JournalUnavailable,
    encode_entry,
)
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


def poisoned(tenant: Tenant, db: psycopg.Connection) -> AcceptedMessage:
    """A record for a connection that does not exist (deleted while PostgreSQL was away):
    its replay fails on the foreign key, every time, until the connection is back."""
    row = db.execute("SELECT coalesce(max(id), 0) + 100000 AS id FROM connections").fetchone()
    assert isinstance(row, dict)
    return dataclasses.replace(accepted(tenant, ["p1@x.example", "p2@x.example"]),
                               connection_id=int(row["id"]))


def test_an_entry_that_always_fails_is_set_aside_and_the_later_ones_replay(
        tmp_path: Path, database_url: str, db: psycopg.Connection, config_file: Path,
        tenant_factory: Callable[..., Tenant], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = tenant_factory()
    journal = Journal(tmp_path, database_url, 1000)
    bad = poisoned(tenant, db)
    journal.append(JournalEntry(bad))
    journal.append(JournalEntry(accepted(tenant, ["a@x.example"])))
    journal.close()  # the next entry in a later file
    journal.append(JournalEntry(accepted(tenant, ["b@x.example"])))
    with caplog.at_level(logging.INFO, logger="txrelay.milter.journal"):
        assert replay_into(journal, database_url) == 2  # both later entries, at once
        assert counts(db, tenant)[:2] == (2, 2) and journal.backlog() == 1
        assert replay_into(journal, database_url) == 0
        assert journal.quarantined() == 0 and len(journal.pending_files()) == 1
        assert replay_into(journal, database_url) == 0  # the third failure: set aside
    assert journal.pending_files() == [] and journal.backlog() == 0
    [aside] = tmp_path.glob("quarantine-*.json")
    assert stat.S_IMODE(aside.stat().st_mode) == 0o600 and journal.quarantined() == 1
    events = [(r.levelname, r.getMessage().split()[0]) for r in caplog.records
              if "journal_entry" in r.getMessage()]
    assert events == [("WARNING", "event=journal_entry_failed")] * 2 + [
        ("ERROR", "event=journal_entry_quarantined")]
    assert "ForeignKeyViolation" in caplog.text

    monkeypatch.setenv("TXRELAY_MILTER_JOURNAL_DIR", str(tmp_path))
    listed = run_main(["--config", str(config_file), "journal", "list", "--json"],
                      monkeypatch).json()
    assert [(e["txn_id"], e["connection_id"], e["recipients"], e["failures"])
            for e in listed] == [(str(bad.txn_id), bad.connection_id, 2, 3)]
    assert listed[0]["reason"].startswith("ForeignKeyViolation")
    shown = run_main(["--config", str(config_file), "journal", "show", str(bad.txn_id)[:8],
                      "--json"], monkeypatch).json()
    assert shown["record"]["recipients"] == ["p1@x.example", "p2@x.example"]

    # The cause fixed (the connection restored), the entry put back replays exactly once.
    db.execute("INSERT INTO connections (id, account_id, name, enabled, rate_limit) "
               "VALUES (%s, %s, 'restored', true, 10)", (bad.connection_id, tenant.account_id))
    db.commit()
    retried = run_main(["--config", str(config_file), "journal", "retry", str(bad.txn_id)],
                       monkeypatch)
    assert retried.exit_code == 0 and "put back for replay" in retried.stdout
    assert list(tmp_path.glob("quarantine-*.json")) == []
    assert replay_into(journal, database_url) == 1
    assert replay_into(journal, database_url) == 0
    assert counts(db, tenant)[:2] == (3, 4) and journal.quarantined() == 0


def test_journal_commands_name_an_unknown_entry_and_drop_forgets_one(
        tmp_path: Path, database_url: str, db: psycopg.Connection, config_file: Path,
        tenant_factory: Callable[..., Tenant], monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = tenant_factory()
    journal = Journal(tmp_path, database_url, 1000)
    bad = poisoned(tenant, db)
    journal.append(JournalEntry(bad))
    for _ in range(MAX_REPLAY_FAILURES):
        replay_into(journal, database_url)
    monkeypatch.setenv("TXRELAY_MILTER_JOURNAL_DIR", str(tmp_path))
    base = ["--config", str(config_file), "journal"]
    missing = run_main([*base, "retry", "0000dead"], monkeypatch)
    assert missing.exit_code == 3 and "no entry set aside" in missing.error
    human = run_main([*base, "list"], monkeypatch)
    assert str(bad.txn_id) in human.stdout and "ForeignKeyViolation" in human.stdout
    dropped = run_main([*base, "drop", str(bad.txn_id)], monkeypatch)
    assert dropped.exit_code == 0 and "stay out of the ledger" in dropped.stdout
    assert run_main([*base, "list", "--json"], monkeypatch).json() == []
    assert replay_into(journal, database_url) == 0 and counts(db, tenant)[:2] == (0, 0)


def test_an_undecodable_line_is_set_aside_at_once_and_shown_by_the_journal_commands(
        tmp_path: Path, database_url: str, db: psycopg.Connection, config_file: Path,
        tenant_factory: Callable[..., Tenant], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole line that does not decode was fsync'd and acknowledged: its mail was relayed.
    Deleting it would leave that mail unbilled unseen; it goes to quarantine like an entry
    that failed MAX_REPLAY_FAILURES times, and the lines around it replay."""
    tenant = tenant_factory()
    journal = Journal(tmp_path, database_url, 1000)
    journal.append(JournalEntry(accepted(tenant, ["a@x.example"])))
    journal.close()
    [path] = journal.pending_files()
    garbage = b'{"txn_id": "0f0f", "recipients": ["c@x.example"], "size": "\xff"}\n'
    with path.open("ab") as damaged:
        damaged.write(garbage)
        damaged.write(encode_entry(JournalEntry(accepted(tenant, ["b@x.example"]))))
    with caplog.at_level(logging.INFO, logger="txrelay.milter.journal"):
        assert replay_into(journal, database_url) == 2
    assert counts(db, tenant)[:2] == (2, 2)
    assert journal.pending_files() == [] and journal.quarantined() == 1
    [aside] = tmp_path.glob("quarantine-*-undecodable-*.json")
    assert stat.S_IMODE(aside.stat().st_mode) == 0o600
    assert [r.levelname for r in caplog.records
            if "event=journal_entry_quarantined" in r.getMessage()] == ["ERROR"]

    monkeypatch.setenv("TXRELAY_MILTER_JOURNAL_DIR", str(tmp_path))
    base = ["--config", str(config_file), "journal"]
    [listed] = run_main([*base, "list", "--json"], monkeypatch).json()
    assert listed["undecodable"] and listed["txn_id"].startswith("undecodable-")
    assert listed["reason"].startswith("undecodable journal line")
    assert "does not decode" in run_main([*base, "list"], monkeypatch).stdout
    shown = run_main([*base, "show", listed["txn_id"], "--json"], monkeypatch).json()
    assert shown["line"] == garbage.decode("utf-8", "backslashreplace")
    assert "c@x.example" in shown["line"] and shown["source_file"] == path.name
    retried = run_main([*base, "retry", listed["txn_id"]], monkeypatch)
    assert retried.exit_code == 4 and "bill its mail by hand" in retried.error
    assert run_main([*base, "drop", listed["txn_id"]], monkeypatch).exit_code == 0
    assert journal.quarantined() == 0


def test_postgresql_away_during_replay_counts_against_no_entry(
        tmp_path: Path, database_url: str, tenant_factory: Callable[..., Tenant]) -> None:
    tenant = tenant_factory()
    journal = Journal(tmp_path, database_url, 1000)
    journal.append(JournalEntry(accepted(tenant, ["a@x.example"])))

    def away(entry: JournalEntry) -> None:
        raise psycopg.OperationalError("connection refused")

    for _ in range(MAX_REPLAY_FAILURES + 2):
        with pytest.raises(psycopg.OperationalError):
            journal.replay(away)
    assert journal.quarantined() == 0 and journal.backlog() == 1
    assert len(journal.pending_files()) == 1
