"""Reads Postfix's entries from the systemd journal, after a stored cursor, as log lines.

`journalctl --output=json --after-cursor=C` runs until it has printed what the journal holds
and exits: its end is the tracker's "caught up" (voiding unconfirmed mail depends on it, and
a `--follow` process never says when it has caught up). A pass that finds nothing new costs
one short journalctl run. Like the file follower, the reader hands out complete entries with
the cursor after them and moves on only when told that the database committed that cursor.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import IO, Any

from txrelay.errors import ConfigError, TxRelayError
from txrelay.store.tracking import Position
from txrelay.tracker.follower import Chunk

log = logging.getLogger("txrelay.tracker")

JOURNAL_KEY = "journal"  # the tracker_positions row of a journal reader (log_path column)
JOURNALD_SOCKET = Path("/run/systemd/journal/socket")
# Only what a log line needs: journalctl then writes about a fifth of the JSON.
OUTPUT_FIELDS = "MESSAGE,SYSLOG_IDENTIFIER,SYSLOG_PID,_PID,_HOSTNAME"


class JournalUnreadable(TxRelayError):
    """journalctl failed (no journal files, no permission, a cursor it rejects)."""


def journal_available() -> bool:
    """journald runs here (its socket exists) and journalctl is installed."""
    return JOURNALD_SOCKET.exists() and shutil.which("journalctl") is not None


def require_journal() -> None:
    """The one-line error of `[tracker] source = "journal"` without a journal."""
    if shutil.which("journalctl") is None:
        raise ConfigError(
            '[tracker] source = "journal" but journalctl is not installed; '
            'install systemd, or set [tracker] source = "file" and log_path'
        )
    if not JOURNALD_SOCKET.exists():
        raise ConfigError(
            f'[tracker] source = "journal" but systemd-journald does not run '
            f"here ({JOURNALD_SOCKET} is missing); set [tracker] source = "
            '"file" and log_path to the file Postfix logs to'
        )


def entry_line(entry: dict[str, Any]) -> str:
    """The entry as the syslog line rsyslog would have written (RFC 3339 stamp, UTC), so
    one parser reads files and the journal alike."""
    stamp = dt.datetime.fromtimestamp(int(entry["__REALTIME_TIMESTAMP"]) / 1e6, dt.UTC)
    host = _text(entry.get("_HOSTNAME")) or "localhost"
    pid = _text(entry.get("SYSLOG_PID")) or _text(entry.get("_PID")) or "0"
    message = _text(entry.get("MESSAGE")).replace("\n", " ")
    return (
        f"{stamp.isoformat(timespec='microseconds')} {host} "
        f"{_text(entry.get('SYSLOG_IDENTIFIER'))}[{pid}]: {message}"
    )


def _text(value: Any) -> str:
    """journalctl writes a field that is not valid UTF-8 as a list of byte values."""
    if value is None:
        return ""
    if isinstance(value, list):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def is_postfix_entry(entry: dict[str, Any], identifier: str) -> bool:
    """SYSLOG_IDENTIFIER is `identifier/daemon` (or deeper, e.g. postfix/submission/smtpd):
    the instance whose syslog_name is `identifier`, not `identifier-other/...`."""
    name = _text(entry.get("SYSLOG_IDENTIFIER"))
    return name.startswith(identifier + "/")


class JournalReader:
    """Postfix's journal entries as chunks of log lines; the position is the cursor."""

    key = JOURNAL_KEY
    truncated = False  # a cursor cannot point past the end of anything
    rotation_pending = False

    def __init__(self, identifier: str, journalctl: str = "journalctl") -> None:
        self.identifier = identifier
        self.journalctl = journalctl
        self.cursor: str | None = None  # committed: the last entry applied
        self._process: subprocess.Popen[bytes] | None = None
        self._unapplied: Chunk | None = None

    def resume(self, stored: Position) -> bool:
        """Continue after the stored cursor (from the journal's start without one)."""
        self.close()
        self.cursor = stored.cursor
        return True

    def read_chunk(self, max_bytes: int = 1 << 20) -> Chunk | None:
        """The next entries of Postfix (None when the journal has no newer entry now). The
        chunk ends at the last entry read, Postfix's or not, so a quiet Postfix on a busy
        journal still moves on."""
        if self._unapplied is not None:
            return self._unapplied  # not committed: the same chunk again
        stream = self._stream()
        lines: list[str] = []
        last: str | None = None
        size = 0
        while size < max_bytes:
            raw = stream.readline()
            if not raw:
                self._finish()
                break
            size += len(raw)
            entry = json.loads(raw)
            last = entry["__CURSOR"]
            if is_postfix_entry(entry, self.identifier):
                lines.append(entry_line(entry))
        if last is None:
            return None
        self._unapplied = Chunk(lines, Position(None, 0, self.cursor), Position(None, 0, last))
        return self._unapplied

    def advance(self, chunk: Chunk) -> None:
        """The database committed chunk.end: continue after it."""
        self.cursor = chunk.end.cursor
        self._unapplied = None

    def close(self) -> None:
        self._unapplied = None
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._close_pipes(self._process)
            self._process = None

    def _stream(self) -> IO[bytes]:
        if self._process is None:
            # Not --quiet: it would hide that the user may not read the system journal.
            argv = [
                self.journalctl,
                "--output=json",
                "--no-pager",
                f"--output-fields={OUTPUT_FIELDS}",
            ]
            argv.append(f"--after-cursor={self.cursor}" if self.cursor else "--lines=all")
            self._process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_c_locale()
            )
        assert self._process.stdout is not None
        return self._process.stdout

    def _finish(self) -> None:
        """journalctl printed everything: its exit status says whether that was all."""
        process = self._process
        assert process is not None
        self._process = None
        returncode = process.wait()
        error = process.stderr.read().decode(errors="replace") if process.stderr else ""
        self._close_pipes(process)
        # Without the right, journalctl exits 1 ("No journal files were opened due to
        # insufficient permissions"), or 0 with only the user's own journal and a hint.
        partial = "not seeing messages from other users and the system" in error
        if returncode != 0 or partial:
            last = error.strip().splitlines()[0] if error.strip() else ""
            hint = (
                "; run the tracker as root or in group systemd-journal"
                if partial or "permission" in error
                else ""
            )
            raise JournalUnreadable(f"journalctl exited {returncode}: {last}{hint}")

    @staticmethod
    def _close_pipes(process: subprocess.Popen[bytes]) -> None:
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def _c_locale() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C", "SYSTEMD_COLORS": "0"}
