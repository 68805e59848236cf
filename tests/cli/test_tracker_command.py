"""`txrelay tracker` refuses a log source that is not there with one line naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import DictConnection, Txrelay
from txrelay.tracker import journal


def test_source_journal_without_journald_is_one_line_naming_the_setting(
        txrelay: Txrelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "JOURNALD_SOCKET", tmp_path / "no-journald" / "socket")
    monkeypatch.setenv("TXRELAY_TRACKER_SOURCE", "journal")
    result = txrelay("tracker", "--once")
    assert result.exit_code == 1
    assert result.error == (f'[tracker] source = "journal" but systemd-journald does not run '
                            f"here ({tmp_path}/no-journald/socket is missing); set [tracker] "
                            'source = "file" and log_path to the file Postfix logs to')


def test_source_file_without_log_path_is_one_line_naming_the_setting(
        txrelay: Txrelay, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXRELAY_TRACKER_SOURCE", "file")
    monkeypatch.setenv("TXRELAY_TRACKER_LOG_PATH", "")
    result = txrelay("tracker", "--once")
    assert result.exit_code == 1
    assert result.error.startswith('[tracker] source = "file" needs [tracker] log_path')


def test_status_shows_a_journal_trackers_cursor(txrelay: Txrelay, db: DictConnection,
                                                unique: str) -> None:
    node = f"status-{unique}"
    db.execute("INSERT INTO tracker_positions (node, log_path, journal_cursor, lines_read) "
               "VALUES (%s, 'journal', 's=ab;i=1f', 7)", (node,))
    result = txrelay("tracker", "--status")
    assert result.exit_code == 0, result.stderr
    mine = [line for line in result.stdout.splitlines() if line.startswith(node + " ")]
    assert len(mine) == 1 and mine[0].startswith(f"{node} journal: cursor s=ab;i=1f, 7 lines")
    rows = [row for row in txrelay("tracker", "--status", "--json").json()
            if row["node"] == node]
    assert [(r["log_path"], r["journal_cursor"], r["lines_read"]) for r in rows] == [
        ("journal", "s=ab;i=1f", 7)]
