"""`txrelay milter` as a process with a poisoned journal entry: the later entry replays, the
bad one is set aside, /healthz, /metrics and `txrelay journal` show it, and a retry after the
cause is fixed replays it exactly once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.harness.metrics import http_get, samples
from tests.harness.processes import TXRELAY, free_port
from tests.store.builders import Tenant
from tests.store.test_journal import accepted, poisoned
from txrelay.config import Config
from txrelay.store.journal import Journal, JournalEntry


def wait_for(condition: Callable[[], bool], seconds: float, what: str,
             log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
        assert time.monotonic() < deadline, f"{what} did not happen in time\n{tail}"
        time.sleep(0.1)


def messages_of(db: psycopg.Connection, txn: uuid.UUID) -> int:
    row = db.execute("SELECT count(*) AS n FROM messages WHERE txn_id = %s", (txn,)).fetchone()
    db.commit()
    assert isinstance(row, dict)
    return int(row["n"])


@pytest.fixture()
def node_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """This test's journal directory, metrics port and a Dovecot auth socket that answers."""
    auth = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    auth.bind(str(tmp_path / "auth"))
    auth.listen(8)
    yield {**os.environ, "TXRELAY_MILTER_JOURNAL_DIR": str(tmp_path / "journal"),
           "TXRELAY_METRICS_MILTER_LISTEN": f"127.0.0.1:{free_port()}",
           "TXRELAY_DOVECOT_AUTH_SOCKET": str(tmp_path / "auth")}
    auth.close()


def test_a_running_milter_sets_a_poisoned_entry_aside_and_replays_it_once_after_retry(
        tenant: Tenant, db: psycopg.Connection, config: Config, config_file: Path,
        tmp_path: Path, node_env: dict[str, str]) -> None:
    journal = Journal(tmp_path / "journal", config.database.url, 1000)
    bad, good = poisoned(tenant, db), accepted(tenant, ["later@x.example"])
    journal.append(JournalEntry(bad))
    journal.append(JournalEntry(good))
    journal.close()  # as a milter that died during the outage leaves it
    log = tmp_path / "milter.log"
    txrelay = [str(TXRELAY), "--config", str(config_file)]
    with log.open("wb") as out:
        milter = subprocess.Popen([*txrelay, "milter", "--socket",
                                   f"unix:{tmp_path}/milter.sock"], stderr=out, env=node_env)
    try:
        wait_for(lambda: messages_of(db, good.txn_id) == 1, 15, "the later entry replayed",
                 log)
        wait_for(lambda: any((tmp_path / "journal").glob("quarantine-*.json")), 15,
                 "the poisoned entry set aside", log)
        assert not list((tmp_path / "journal").glob("journal-*.jsonl"))
        assert messages_of(db, bad.txn_id) == 0
        listen = node_env["TXRELAY_METRICS_MILTER_LISTEN"]
        status, body = http_get(f"http://{listen}/healthz")
        assert (status, body.splitlines()[0]) == (200, "degraded"), body
        assert "journal: 1 entries set aside" in body
        scraped = http_get(f"http://{listen}/metrics")[1]
        assert samples(scraped, "txrelay_journal_quarantined") == {(): 1.0}
        quarantined = [line for line in log.read_text().splitlines()
                       if "event=journal_entry_quarantined" in line]
        assert len(quarantined) == 1 and "ERROR" in quarantined[0]

        listed = subprocess.run([*txrelay, "journal", "list", "--json"], env=node_env,
                                capture_output=True, text=True, check=True)
        assert [e["txn_id"] for e in json.loads(listed.stdout)] == [str(bad.txn_id)]
        db.execute("INSERT INTO connections (id, account_id, name, enabled, rate_limit) "
                   "VALUES (%s, %s, 'restored', true, 10)",
                   (bad.connection_id, tenant.account_id))
        db.commit()
        subprocess.run([*txrelay, "journal", "retry", str(bad.txn_id)[:13]], env=node_env,
                       capture_output=True, text=True, check=True)
        wait_for(lambda: messages_of(db, bad.txn_id) == 1, 15, "the retried entry replayed",
                 log)
        wait_for(lambda: "journal: " not in http_get(f"http://{listen}/healthz")[1], 5,
                 "/healthz without the line")
        assert http_get(f"http://{listen}/healthz")[0] == 200
        time.sleep(1.5)  # a further replay round changes nothing
        assert messages_of(db, bad.txn_id) == 1
        assert not list((tmp_path / "journal").glob("journal-*.jsonl"))
    finally:
        milter.terminate()
        milter.wait(timeout=15)

