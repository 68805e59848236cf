"""Where Postfix's log is: the source the tracker reads ([tracker] source), found or as set.

`auto` looks where the admin has the log, in this order: Postfix's own `maillog_file`, a
syslog file that receives mail lines (/var/log/mail.log with rsyslog on Debian,
/var/log/maillog elsewhere), the systemd journal. An explicit `log_path` means that file.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from txrelay.config import TrackerConfig
from txrelay.errors import ConfigError
from txrelay.store.tracking import Position
from txrelay.tracker import journal
from txrelay.tracker.follower import Chunk, LogFollower

log = logging.getLogger("txrelay.tracker")

SYSLOG_FILES = (Path("/var/log/mail.log"), Path("/var/log/maillog"))


class LogSource(Protocol):
    """What the tracker reads lines from: a file through rotations, or the journal."""

    key: str  # its row in tracker_positions (log_path column)
    truncated: bool

    @property
    def rotation_pending(self) -> bool: ...

    def resume(self, stored: Position) -> bool: ...

    def read_chunk(self, max_bytes: int = ...) -> Chunk | None: ...

    def advance(self, chunk: Chunk) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceChoice:
    """The source to read and why it was chosen (logged at start)."""

    kind: str  # "file" or "journal"
    log_path: Path | None  # the file (kind file)
    identifier: str  # Postfix's syslog_name (kind journal)
    reason: str

    def open(self, rotation_grace: float) -> LogSource:
        if self.kind == "journal":
            return journal.JournalReader(self.identifier)
        assert self.log_path is not None
        return LogFollower(self.log_path, rotation_grace=rotation_grace)

    def describe(self) -> str:
        return str(self.log_path) if self.kind == "file" else journal.JOURNAL_KEY


Postconf = Callable[[str], str | None]


def postconf_reader(config_directory: str) -> Postconf:
    """`postconf -h NAME` of the configured Postfix (None when postconf is missing or
    fails: the tracker may run where Postfix is not installed). A configuration directory
    that was set but postconf cannot read is the admin's mistake: ConfigError."""

    def read(name: str) -> str | None:
        argv = ["postconf", "-h"]
        if config_directory:
            argv += ["-c", config_directory]
        try:
            done = subprocess.run(
                [*argv, name], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0 and config_directory:
            reason = (done.stderr.strip().splitlines() or ["failed"])[-1]
            raise ConfigError(
                f"[tracker] postfix_config_directory = {config_directory!r}: "
                f"postconf cannot read it ({reason}); set the directory that "
                'holds the Postfix instance\'s main.cf, or "" for /etc/postfix'
            )
        return done.stdout.strip() if done.returncode == 0 else None

    return read


def choose_source(
    tracker: TrackerConfig,
    *,
    postconf: Postconf | None = None,
    syslog_files: Sequence[Path] = SYSLOG_FILES,
    journal_available: Callable[[], bool] = journal.journal_available,
) -> SourceChoice:
    """The source [tracker] names, or the one `auto` finds; ConfigError if none."""
    postconf = postconf or postconf_reader(tracker.postfix_config_directory)
    identifier = tracker.journal_identifier or postconf("syslog_name") or "postfix"
    if tracker.source == "file" or (tracker.source == "auto" and tracker.log_path):
        if not tracker.log_path:
            raise ConfigError(
                '[tracker] source = "file" needs [tracker] log_path, the file '
                "Postfix logs to (such as /var/log/mail.log)"
            )
        return SourceChoice("file", Path(tracker.log_path), identifier, "[tracker] log_path is set")
    if tracker.source == "journal":
        journal.require_journal()
        return SourceChoice("journal", None, identifier, '[tracker] source = "journal"')
    maillog_file = postconf("maillog_file")
    if maillog_file:
        return SourceChoice(
            "file", Path(maillog_file), identifier, f"Postfix's maillog_file is {maillog_file}"
        )
    for candidate in syslog_files:
        if candidate.is_file():
            return SourceChoice(
                "file",
                candidate,
                identifier,
                f"Postfix has no maillog_file and syslog writes {candidate}",
            )
    if journal_available():
        return SourceChoice(
            "journal",
            None,
            identifier,
            "Postfix has no maillog_file, there is no syslog mail file "
            f"({', '.join(map(str, syslog_files))}) and systemd-journald runs",
        )
    raise ConfigError(
        '[tracker] source = "auto" found no Postfix log: no maillog_file in '
        f"Postfix, no {' or '.join(map(str, syslog_files))}, no systemd journal; "
        "set [tracker] source and log_path (see docs/configuration.md)"
    )
