"""The tracker on a journal: the cursor is stored with the ledger updates of its entries, so
a restart (or a second tracker) applies every entry exactly once. journalctl is a stand-in
here that prints stored entries after a cursor, as journalctl does; the e2e test
(tests/e2e/test_tracking_journal.py) reads a real journald."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import psycopg
import pytest

from tests.store.tracking_fixtures import add_message, make_sender, states
from txrelay.clock import FixedClock
from txrelay.store import database, tracking
from txrelay.tracker.engine import Tracker
from txrelay.tracker.journal import JournalReader, JournalUnreadable

NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)

FAKE_JOURNALCTL = """#!{python}
import json, sys
entries = [json.loads(line) for line in open({entries!r})]
after = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--after-cursor=")]
if after and after[0] not in [e["__CURSOR"] for e in entries]:
    sys.stderr.write("Failed to seek to cursor: Invalid argument\\n")
    sys.exit(1)
start = [e["__CURSOR"] for e in entries].index(after[0]) + 1 if after else 0
for entry in entries[start:]:
    print(json.dumps(entry))
"""


class FakeJournal:
    """Entries the stand-in journalctl prints; cursors are s=1;i=N."""

    def __init__(self, directory: Path) -> None:
        self.entries = directory / "entries.jsonl"
        self.entries.write_text("")
        self.journalctl = directory / "journalctl"
        self.journalctl.write_text(FAKE_JOURNALCTL.format(python=sys.executable,
                                                          entries=str(self.entries)))
        self.journalctl.chmod(0o755)
        self.count = 0

    def add(self, identifier: str, message: str) -> str:
        self.count += 1
        cursor = f"s=1;i={self.count}"
        entry = {"__CURSOR": cursor, "__REALTIME_TIMESTAMP": "1796398464317382",
                 "SYSLOG_IDENTIFIER": identifier, "SYSLOG_PID": "42", "_HOSTNAME": "relay1",
                 "MESSAGE": message}
        with self.entries.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        return cursor

    def queued(self, queue_id: str, nrcpt: int) -> str:
        return self.add("postfix/qmgr", f"{queue_id}: from=<shop@acme.example>, size=1000, "
                                        f"nrcpt={nrcpt} (queue active)")

    def delivery(self, queue_id: str, recipient: str, status: str, dsn: str) -> str:
        return self.add("postfix/smtp", f"{queue_id}: to=<{recipient}>, relay=127.0.0.1"
                                        f"[127.0.0.1]:2525, delay=0.1, delays=0/0/0/0.1, "
                                        f"dsn={dsn}, status={status} (reply)")


@pytest.fixture()
def fake_journal(tmp_path: Path) -> FakeJournal:
    return FakeJournal(tmp_path)


@pytest.fixture()
def node(unique: str) -> str:
    return f"jnode-{unique}"


def journal_tracker(store_conn: psycopg.Connection, node: str, journal: FakeJournal) -> Tracker:
    return Tracker(store_conn, node, JournalReader("postfix", journalctl=str(journal.journalctl)),
                   FixedClock(NOW))


def stored(db: psycopg.Connection, node: str) -> dict:
    row = db.execute("SELECT log_path, journal_cursor, inode, lines_read FROM "
                     "tracker_positions WHERE node = %s", (node,)).fetchone()
    assert row is not None
    return row  # type: ignore[return-value]


def test_cursor_is_stored_with_the_outcomes_and_a_restart_applies_only_newer_entries(
        db, store_conn, node, fake_journal, unique):
    sender = make_sender(db, unique)
    first = add_message(db, sender, "J1AAAA", ["a@x.test", "b@x.test"], node=node)
    fake_journal.queued("J1AAAA", 2)
    fake_journal.delivery("J1AAAA", "a@x.test", "sent", "2.0.0")
    fake_journal.add("postfix-other/smtp", "J1AAAA: to=<b@x.test>, relay=x[1.2.3.4]:25, "
                     "delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (other instance)")
    last = fake_journal.add("sshd", "Accepted publickey for root")
    result = journal_tracker(store_conn, node, fake_journal).run_pass()
    assert result.caught_up and result.counters.lines_read == 2
    assert states(db, first) == {"a@x.test": "delivered", "b@x.test": "queued"}
    assert stored(db, node) == {"log_path": "journal", "journal_cursor": last, "inode": None,
                                "lines_read": 2}

    fake_journal.delivery("J1AAAA", "b@x.test", "bounced", "5.1.1")
    restarted = journal_tracker(store_conn, node, fake_journal)
    assert restarted.run_pass().counters.lines_read == 1
    assert restarted.run_pass().counters.lines_read == 0
    assert states(db, first) == {"a@x.test": "delivered", "b@x.test": "bounced"}
    assert stored(db, node)["lines_read"] == 3
    assert tracking.load_position(store_conn, node,
                                  "journal").cursor == f"s=1;i={fake_journal.count}"


def test_two_trackers_on_one_journal_never_apply_an_entry_twice(db, store_conn, config, node,
                                                               fake_journal, unique):
    sender = make_sender(db, unique)
    message = add_message(db, sender, "J2AAAA", ["a@x.test"], node=node)
    fake_journal.queued("J2AAAA", 1)
    other = database.connect(config.database, autocommit=True)
    try:
        first = journal_tracker(store_conn, node, fake_journal)
        second = journal_tracker(other, node, fake_journal)
        first.resume()
        second.resume()  # both start before the first entry
        first.run_pass()
        second.run_pass()  # finds the cursor moved, resumes after it, applies nothing
        fake_journal.delivery("J2AAAA", "a@x.test", "sent", "2.0.0")
        second.run_pass()
        first.run_pass()
    finally:
        other.close()
    assert stored(db, node)["lines_read"] == 2
    assert states(db, message) == {"a@x.test": "delivered"}


def test_journalctl_failing_is_an_error_with_its_message(store_conn, node, fake_journal):
    fake_journal.add("postfix/qmgr", "J3AAAA: removed")
    with store_conn.transaction():
        tracking.lock_position(store_conn, node, "journal")
        tracking.save_position(store_conn, node, "journal",
                               tracking.Position(None, 0, "s=9;i=404"), tracking.Counters(),
                               NOW)
    with pytest.raises(JournalUnreadable, match="journalctl exited 1: Failed to seek to "
                                                "cursor: Invalid argument"):
        journal_tracker(store_conn, node, fake_journal).run_pass()
