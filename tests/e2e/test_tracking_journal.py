"""The tracker with the systemd journal as Postfix's log: a real journald, a Postfix without
maillog_file logging through syslog(3) into it, the real milter and capture sink, and
`txrelay tracker` reading the journal (found by `auto`, or set) with its cursor stored in
PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_tracking import RCPT_DOMAIN, query, send, states
from tests.harness.fixtures import RelayStack
from tests.harness.journal import system_journal
from tests.harness.processes import TXRELAY, ManagedProcess, free_port, run, wait_until
from tests.harness.services import CaptureSink, DovecotService, MilterProcess, PostfixInstance
from txrelay.config import Config, load_config, render_toml
from txrelay.store.tracking import Position
from txrelay.tracker.journal import JournalReader, JournalUnreadable
from txrelay.tracker.sources import SYSLOG_FILES

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def journal_relay(e2e_config: Config, e2e_dir: Path, dovecot: DovecotService,
                  capture_sink: CaptureSink) -> Iterator[RelayStack]:
    """A second Postfix (own syslog_name, no maillog_file) and milter (own node name) on the
    run's Dovecot, sink and databases, logging into a journald started for the module.
    The tracker is left at its defaults but for the Postfix to ask: source = "auto"."""
    directory = e2e_dir / "journal"
    (directory / "milter").mkdir(mode=0o755, parents=True)
    port = free_port()
    tag = uuid.uuid4().hex[:8]
    syslog_name = f"postfix-jt{tag}"
    postfix_dir = directory / "postfix"
    config = dataclasses.replace(
        e2e_config,
        smtp=dataclasses.replace(e2e_config.smtp, port=port),
        milter=dataclasses.replace(e2e_config.milter,
                                   socket=f"unix:{directory}/milter/milter.sock",
                                   journal_dir=str(directory / "journal-dir"),
                                   node_name=f"journal-{tag}"),
        tracker=dataclasses.replace(e2e_config.tracker, source="auto", log_path="",
                                    journal_identifier="",
                                    postfix_config_directory=str(postfix_dir / "etc")))
    config_file = directory / "txrelay.toml"
    config_file.write_text(render_toml(config))
    config = load_config(config_file, required=True, environ={})
    with system_journal(directory):
        milter = MilterProcess(config, config_file, directory / "milter.log")
        postfix = PostfixInstance(postfix_dir, sink_port=capture_sink.port,
                                  submission_port=port, config_file=config_file,
                                  syslog_name=syslog_name)
        try:
            milter.start()
            postfix.prepare()
            assert postfix.postconf("-h", "maillog_file").strip() == ""
            postfix.start()
            yield RelayStack(config, config_file, config.database.url, dovecot, capture_sink,
                             postfix, milter)
        finally:
            postfix.stop()  # before journald goes: its last lines have somewhere to go
            milter.stop()


def tracker_cli(relay: RelayStack, *args: str, env: dict[str, str] | None = None) -> Any:
    done = run([TXRELAY, "--config", str(relay.config_file), "--json", "tracker", *args],
               env={**os.environ, **(env or {})}, timeout=120)
    return json.loads(done.stdout)


def journal_position(relay: RelayStack) -> dict[str, Any]:
    rows = query(relay, "SELECT * FROM tracker_positions WHERE node = %s",
                 relay.config.milter.node_name)
    assert [row["log_path"] for row in rows] == ["journal"], rows
    return rows[0]


def postfix_entries_up_to(cursor: str, syslog_name: str) -> int:
    """Entries of this Postfix in the journal, from its start to `cursor` inclusive: what a
    tracker that began with an empty position has read when it stored `cursor`."""
    done = run(["journalctl", "--output=json", "--no-pager", "--quiet",
                "--output-fields=SYSLOG_IDENTIFIER"], timeout=120)
    count = 0
    for raw in done.stdout.splitlines():
        entry = json.loads(raw)
        if str(entry.get("SYSLOG_IDENTIFIER", "")).startswith(syslog_name + "/"):
            count += 1
        if entry["__CURSOR"] == cursor:
            return count
    raise AssertionError(f"cursor {cursor} is not in the journal")


def test_auto_finds_the_journal_of_a_postfix_without_maillog_file(
        journal_relay: RelayStack) -> None:
    present = [str(path) for path in SYSLOG_FILES if path.exists()]
    assert not present, f"{present} exist here: auto would rightly read them, not the journal"
    shop = journal_relay.provision()
    ok = f"auto-ok@{RCPT_DOMAIN}"
    send(journal_relay, shop, [ok])
    journal_relay.sink.wait_for_recipient(ok)

    def tracked() -> bool:
        summary = tracker_cli(journal_relay, "--once")
        assert summary["log_path"] == "journal", summary
        assert "systemd-journald runs" in summary["source_reason"], summary
        return states(journal_relay, shop.account_id) == {ok: "delivered"}

    wait_until(tracked, 60, "the tracker to read the delivery from the journal",
               lambda: journal_relay.postfix.log(30))


@pytest.fixture()
def journal_tracker(journal_relay: RelayStack) -> Iterator[ManagedProcess]:
    """`txrelay tracker` with source = "journal" set, as the daemon runs."""
    directory = Path(journal_relay.config_file).parent
    process = ManagedProcess([TXRELAY, "--config", str(journal_relay.config_file), "tracker"],
                             directory / "tracker.log",
                             env={**os.environ, "TXRELAY_TRACKER_SOURCE": "journal"})
    try:
        yield process
    finally:
        process.stop()


def test_journal_tracker_killed_and_restarted_records_each_outcome_once(
        journal_relay: RelayStack, journal_tracker: ManagedProcess) -> None:
    shop = journal_relay.provision()
    first = [f"j1@{RCPT_DOMAIN}", f"bounce-j1@{RCPT_DOMAIN}"]
    second = [f"j2@{RCPT_DOMAIN}", f"bounce-j2@{RCPT_DOMAIN}"]
    expected_first = {first[0]: "delivered", first[1]: "bounced"}
    journal_tracker.start()
    send(journal_relay, shop, first)
    wait_until(lambda: states(journal_relay, shop.account_id) == expected_first, 60,
               "the running tracker to record the first outcomes",
               lambda: journal_tracker.log(20) + "\n" + journal_relay.postfix.log(20))
    journal_tracker.kill()
    send(journal_relay, shop, second)
    journal_relay.sink.wait_for_recipient(second[0])
    assert states(journal_relay, shop.account_id) == {
        **expected_first, second[0]: "accepted", second[1]: "accepted"}
    journal_tracker.start()
    expected = {**expected_first, second[0]: "delivered", second[1]: "bounced"}
    wait_until(lambda: states(journal_relay, shop.account_id) == expected, 60,
               "the restarted tracker to record the second outcomes",
               lambda: journal_tracker.log(20))
    journal_tracker.stop()
    assert "source=journal" in journal_tracker.log(200)

    tracker_cli(journal_relay, "--once", env={"TXRELAY_TRACKER_SOURCE": "journal"})
    position = journal_position(journal_relay)
    assert position["journal_cursor"] and position["inode"] is None
    assert position["lines_read"] == postfix_entries_up_to(
        position["journal_cursor"], journal_relay.postfix.syslog_name or "")
    rows = query(journal_relay, "SELECT recipient, state, dsn FROM ledger WHERE "
                 "account_id = %s ORDER BY recipient", shop.account_id)
    assert [(r["recipient"], r["state"], r["dsn"]) for r in rows] == sorted(
        (address, state, "2.0.0" if state == "delivered" else "5.1.1")
        for address, state in expected.items())
    stats = tracker_cli(journal_relay, "--status")
    mine = [row for row in stats if row["node"] == journal_relay.config.milter.node_name]
    assert [row["log_path"] for row in mine] == ["journal"]
    assert mine[0]["journal_cursor"] == position["journal_cursor"]


@pytest.mark.parametrize("groups", [["--groups", "systemd-journal"], ["--clear-groups"]],
                         ids=["in-systemd-journal", "no-group"])
def test_the_journal_reader_needs_only_the_systemd_journal_group(
        journal_relay: RelayStack, groups: list[str], tmp_path: Path) -> None:
    """What the unit gives user txrelay (SupplementaryGroups=systemd-journal) is enough to
    read Postfix's entries; without it the reader fails saying what to do. (journalctl runs
    as nobody; the test's venv lives under /root, so the whole CLI cannot.)"""
    wrapper = tmp_path / "journalctl"
    wrapper.write_text("#!/bin/sh\nexec setpriv --reuid nobody --regid nogroup "
                       f"{' '.join(groups)} journalctl \"$@\"\n")
    wrapper.chmod(0o755)
    reader = JournalReader(journal_relay.postfix.syslog_name or "", journalctl=str(wrapper))
    reader.resume(Position(None, 0))
    try:
        if groups[0] == "--groups":
            chunk = reader.read_chunk()
            assert chunk is not None and chunk.end.cursor
            assert any(f" {journal_relay.postfix.syslog_name}/qmgr[" in line
                       for line in chunk.lines), chunk.lines[:5]
        else:
            with pytest.raises(JournalUnreadable) as raised:
                reader.read_chunk()
            assert str(raised.value) == (
                "journalctl exited 1: No journal files were opened due to insufficient "
                "permissions.; run the tracker as root or in group systemd-journal")
    finally:
        reader.close()
