"""The milter's local durable journal: ledger records written while PostgreSQL is down.

While PostgreSQL does not answer, each accepted message's ledger record (an AcceptedMessage)
is appended to a file in [milter] journal_dir as one JSON line and fsync'd before the milter
answers 250; when PostgreSQL answers again the lines are replayed through the same
record_acceptance() as live traffic. Replay is idempotent (messages.txn_id is UNIQUE and
record_acceptance does nothing for a known txn_id), so a crash half-way through a replay,
or two replays, change nothing.

Files: journal-<db>-<pid>-<start>.jsonl, <db> a digest of the database URL, so that a
journal is only ever replayed into the database it was meant for. A writer holds an
exclusive flock on its file for as long as it appends to it; a replayer takes the same lock
(non-blocking) before reading, so it never reads a file that is still growing, and files of
a dead milter (no lock) are replayed by the next milter to start. A new file is created under
a hidden name, locked, then renamed, so no replayer can take it first.

Only whole lines count: the milter replies after the fsync, so a line torn by a crash was
never acknowledged and is skipped.

An entry whose replay fails for a reason of its own (not PostgreSQL being away) never blocks
the others: it stays behind while they replay, and after MAX_REPLAY_FAILURES it is set aside
in quarantine-<db>-<txn>.json beside the journal, for `txrelay journal` (cli/journal.py). A
whole line that does not decode (a disk error, an edit by hand) was acknowledged all the
same: its mail was relayed, so it is set aside at once, as quarantine-<db>-undecodable-<digest>
.json holding the line as read, never deleted (its mail would go unbilled unseen).
"""

from __future__ import annotations

import collections
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from txrelay.atomic_file import write_atomically
from txrelay.errors import ServiceUnavailable
from txrelay.store.ledger import AcceptedMessage

log = logging.getLogger("txrelay.milter.journal")

HOUR = 3600.0
MAX_REPLAY_FAILURES = 3  # an entry that fails this often (not transiently) is set aside
# PostgreSQL away, a deadlock, a timeout: try the same entry again later, uncounted.
TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    ServiceUnavailable,
)


class JournalUnavailable(ServiceUnavailable):
    """The journal cannot take this message (unwritable, or the hourly bound is reached)."""


def private_directory(directory: Path) -> None:
    """Create the state directory owner-only (0700). Explicit chmod: the milter daemon runs
    with umask 0117 for its socket, which would leave a new directory without its x bit."""
    directory.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(directory.stat().st_mode) != 0o700:
        directory.chmod(0o700)


def database_tag(database_url: str) -> str:
    """A short digest naming the database a journal belongs to (no secret in file names)."""
    return hashlib.sha256(database_url.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class JournalEntry:
    """One accepted message and its reservations held in PostgreSQL (degraded Redis mode),
    which the replay ends in the same transaction as the record."""

    message: AcceptedMessage
    holds: Sequence[str] = ()


def encode_entry(entry: JournalEntry) -> bytes:
    record = entry.message.json_fields() | {"holds": list(entry.holds)}
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def decode_entry(line: bytes) -> JournalEntry:
    """One journal line; ValueError/KeyError/TypeError/AttributeError when it is not a whole
    record."""
    r: dict[str, Any] = json.loads(line)
    accepted_at = dt.datetime.fromisoformat(r["accepted_at"])
    if accepted_at.tzinfo is None:
        raise ValueError("accepted_at without a time zone")
    message = AcceptedMessage(
        txn_id=uuid.UUID(r["txn_id"]),
        queue_id=str(r["queue_id"]),
        node=str(r["node"]),
        message_id=r["message_id"],
        account_id=int(r["account_id"]),
        connection_id=int(r["connection_id"]),
        envelope_sender=str(r["envelope_sender"]),
        header_from=str(r["header_from"]),
        size=int(r["size"]),
        recipients=[str(x) for x in r["recipients"]],
        accepted_at=accepted_at,
    )
    return JournalEntry(message, [str(x) for x in r.get("holds", [])])


class Journal:
    """Append (fsync'd), count, replay. Thread-safe: one lock around the active file."""

    def __init__(self, directory: Path, database_url: str, max_per_hour: int) -> None:
        self.directory = directory
        self.tag = database_tag(database_url)
        self.max_per_hour = max_per_hour
        self._lock = threading.Lock()
        self._active: int | None = None  # fd of the file this process appends to
        self._active_path: Path | None = None
        self._appended: collections.deque[tuple[float, int]] = collections.deque()
        self._failures: dict[str, int] = {}  # txn id -> failed replays (not transient)
        # Messages waiting for PostgreSQL: those left by an earlier process, then ours.
        self._backlog = sum(_count_lines(p) for p in self.pending_files())

    # -- writing ---------------------------------------------------------------------------

    def append(self, entry: JournalEntry) -> None:
        """Durably store one ledger record, or raise JournalUnavailable (answer 451)."""
        line = encode_entry(entry)
        units = len(entry.message.recipients)
        with self._lock:
            self._check_budget(units)
            try:
                fd = self._active_fd()
                _write_all(fd, line)
                os.fsync(fd)
            except OSError as exc:
                self._close_active()  # a fresh file next time (the disk may come back)
                raise JournalUnavailable(
                    f"the local journal {self.directory} is not writable ({exc.strerror or exc})"
                ) from exc
            self._appended.append((time.monotonic(), units))
            self._backlog += 1

    def room(self) -> int:
        """Recipients this milter may still journal this hour (what /healthz reports)."""
        with self._lock:
            return self.max_per_hour - self._used_this_hour()

    def _used_this_hour(self) -> int:
        horizon = time.monotonic() - HOUR
        while self._appended and self._appended[0][0] < horizon:
            self._appended.popleft()
        return sum(n for _, n in self._appended)

    def _check_budget(self, units: int) -> None:
        used = self._used_this_hour()
        if used + units > self.max_per_hour:
            raise JournalUnavailable(
                f"the local journal holds {used} unconfirmed recipients "
                f"this hour ([milter] journal_max_per_hour = "
                f"{self.max_per_hour})"
            )

    def _active_fd(self) -> int:
        if self._active is not None:
            return self._active
        private_directory(self.directory)
        name = f"journal-{self.tag}-{os.getpid()}-{time.time_ns()}.jsonl"
        hidden = self.directory / f".{name}"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, self.directory / name)
            _fsync_directory(self.directory)
        except OSError:
            os.close(fd)
            raise
        self._active, self._active_path = fd, self.directory / name
        return fd

    def _close_active(self) -> None:
        if self._active is not None:
            os.close(self._active)  # releases the flock: the file may now be replayed
        self._active = self._active_path = None

    def close(self) -> None:
        with self._lock:
            self._close_active()

    # -- reading ---------------------------------------------------------------------------

    def backlog(self) -> int:
        """Journaled messages not replayed yet (for the metric and the replay loop)."""
        return self._backlog

    def pending_files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"journal-{self.tag}-*.jsonl"))

    def replay(
        self,
        record: Callable[[JournalEntry], object],
        transient: tuple[type[BaseException], ...] = TRANSIENT,
    ) -> int:
        """Record every journaled message; returns how many lines were replayed.

        An exception of a `transient` class (PostgreSQL away again) stops the replay and
        leaves the file for later. Any other failure is the entry's own (a connection or
        account that no longer exists, a bug): the entry stays behind while the later
        entries replay, and after MAX_REPLAY_FAILURES failures it is set aside in a
        quarantine file (`txrelay journal list`) so that it never blocks the rest."""
        with self._lock:
            if self._active is not None:
                self._close_active()  # later appends go to a new file
        replayed = 0
        try:
            for path in self.pending_files():
                replayed += self._replay_file(path, record, transient)
        finally:
            with self._lock:  # appends hold the lock: the count and the files agree
                self._backlog = sum(_count_lines(p) for p in self.pending_files())
        return replayed

    def quarantined(self) -> int:
        """Entries of this database set aside (for the metric and /healthz)."""
        return len(quarantine_files(self.directory, self.tag))

    def _replay_file(
        self,
        path: Path,
        record: Callable[[JournalEntry], object],
        transient: tuple[type[BaseException], ...],
    ) -> int:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return 0  # another milter replayed it
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # still being written, or being replayed by another milter
            count, kept = 0, []
            for line in _read_lines(fd):
                entry = _parse(line, path)
                if isinstance(entry, Exception):
                    if not self._set_aside_undecodable(path, line, entry):
                        kept.append(line)
                    continue
                if entry is None:
                    continue
                try:
                    record(entry)
                except transient:
                    raise
                except Exception as exc:  # noqa: BLE001 - the entry's own failure, see replay
                    if not self._failed(path, line, entry, exc):
                        kept.append(line)
                    continue
                self._failures.pop(str(entry.message.txn_id), None)
                count += 1
            self._finish_file(path, kept)
            log.info(
                "event=journal_replayed file=%s messages=%d kept=%d", path.name, count, len(kept)
            )
            return count
        finally:
            os.close(fd)

    def _failed(self, path: Path, line: bytes, entry: JournalEntry, exc: Exception) -> bool:
        """Count one failure of the entry; True when it was set aside (quarantined)."""
        txn = str(entry.message.txn_id)
        failures = self._failures.get(txn, 0) + 1
        reason = f"{exc.__class__.__name__}: {_first_line(exc)}"
        if failures < MAX_REPLAY_FAILURES:
            self._failures[txn] = failures
            log.warning(
                "event=journal_entry_failed txn=%s file=%s failures=%d reason=%r "
                "(kept; the later entries replay)",
                txn,
                path.name,
                failures,
                reason,
            )
            return False
        self._failures.pop(txn, None)  # a retry gets its full count of attempts again
        target = _write_quarantine(
            self.directory, self.tag, line, entry, reason, failures, path.name
        )
        log.error(
            "event=journal_entry_quarantined txn=%s account=%d connection=%d "
            "recipients=%d failures=%d reason=%r file=%s: not in the ledger; see "
            "'txrelay journal show %s', fix the cause, then 'txrelay journal retry'",
            txn,
            entry.message.account_id,
            entry.message.connection_id,
            len(entry.message.recipients),
            failures,
            reason,
            target.name,
            txn,
        )
        return True

    def _set_aside_undecodable(self, path: Path, line: bytes, exc: Exception) -> bool:
        """Quarantine a whole line that does not decode: no retry can make it decode, and
        its mail was acknowledged. True when set aside; False (kept in the journal) when the
        quarantine file cannot be written."""
        reason = f"undecodable journal line: {exc.__class__.__name__}: {_first_line(exc)}"
        try:
            target = _write_undecodable(self.directory, self.tag, line, reason, path.name)
        except OSError as write_error:
            log.error(
                "event=journal_bad_line file=%s error=%r: kept, cannot be set aside (%s)",
                path.name,
                reason,
                write_error,
            )
            return False
        log.error(
            "event=journal_entry_quarantined file=%s bytes=%d reason=%r aside=%s: a relayed "
            "message is not in the ledger; see 'txrelay journal show %s' and bill it by hand",
            path.name,
            len(line),
            reason,
            target.name,
            target.stem.removeprefix(f"quarantine-{self.tag}-"),
        )
        return True

    def _finish_file(self, path: Path, kept: list[bytes]) -> None:
        """Remove a replayed file, or replace it by the entries still kept for a later try
        (written whole under a hidden name, then renamed over it)."""
        if not kept:
            path.unlink(missing_ok=True)
        else:
            _write_file(self.directory, path.name, b"".join(kept))
        _fsync_directory(self.directory)


# -- entries set aside ---------------------------------------------------------------------
# quarantine-<db>-<txn id>.json (mode 0600) in the journal directory: the entry's journal
# line as it was, why it failed, how often, when and from which file. Never replayed by
# itself; `txrelay journal retry` writes the line back as a journal file of its own.


@dataclass(frozen=True)
class QuarantinedEntry:
    """One entry set aside: its file, its database tag and what the file records."""

    path: Path
    tag: str
    record: dict[str, Any]

    @property
    def undecodable(self) -> bool:
        """A journal line that did not decode: only its text is known (record["line"])."""
        return self.record.get("entry") is None

    @property
    def txn_id(self) -> str:
        """The transaction id; for an undecodable line, `undecodable-` and a digest."""
        if self.undecodable:
            return str(self.record["id"])
        return str(self.record["entry"]["txn_id"])

    def summary(self) -> dict[str, Any]:
        entry = self.record["entry"] or {}
        return {
            "txn_id": self.txn_id,
            "undecodable": self.undecodable,
            "database": self.tag,
            "account_id": entry.get("account_id"),
            "connection_id": entry.get("connection_id"),
            "queue_id": entry.get("queue_id"),
            "recipients": len(entry.get("recipients", [])),
            "accepted_at": entry.get("accepted_at"),
            "quarantined_at": self.record.get("quarantined_at"),
            "failures": self.record.get("failures"),
            "reason": self.record.get("reason"),
            "file": self.path.name,
        }


def quarantine_files(directory: Path, tag: str = "*") -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"quarantine-{tag}-*.json"))


def read_quarantined(path: Path) -> QuarantinedEntry:
    """One quarantine file; ValueError when it is not one this module wrote."""
    try:
        record = json.loads(path.read_bytes())
        if record["entry"] is None:
            if not isinstance(record["line"], str) or not isinstance(record["id"], str):
                raise TypeError("an undecodable line's record needs its line and id")
        else:
            decode_entry(json.dumps(record["entry"]).encode())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a quarantined journal entry ({exc})") from exc
    tag = path.name.removeprefix("quarantine-").split("-", 1)[0]
    return QuarantinedEntry(path, tag, record)


def list_quarantined(directory: Path) -> list[QuarantinedEntry]:
    return [read_quarantined(path) for path in quarantine_files(directory)]


def release_quarantined(entry: QuarantinedEntry) -> Path:
    """Put the entry back for replay: its line as a journal file of its own (the running
    milter replays it within a second, or the next one at start), then the quarantine file
    goes. Returns the journal file. An undecodable line cannot be put back (ValueError)."""
    if entry.undecodable:
        raise ValueError(
            f"entry {entry.txn_id} is a journal line that does not decode: it cannot be "
            "replayed; bill its mail by hand from 'txrelay journal show', then drop it"
        )
    line = (
        json.dumps(entry.record["entry"], separators=(",", ":"), ensure_ascii=True).encode() + b"\n"
    )
    decode_entry(line)
    name = f"journal-{entry.tag}-retry-{time.time_ns()}.jsonl"
    _write_file(entry.path.parent, name, line)
    entry.path.unlink(missing_ok=True)
    _fsync_directory(entry.path.parent)
    return entry.path.parent / name


def drop_quarantined(entry: QuarantinedEntry) -> None:
    """Forget the entry for good: the message stays out of the ledger."""
    entry.path.unlink(missing_ok=True)
    _fsync_directory(entry.path.parent)


def _write_quarantine(
    directory: Path,
    tag: str,
    line: bytes,
    entry: JournalEntry,
    reason: str,
    failures: int,
    source: str,
) -> Path:
    record = {
        "entry": json.loads(line),
        "reason": reason,
        "failures": failures,
        "quarantined_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source_file": source,
    }
    name = f"quarantine-{tag}-{entry.message.txn_id}.json"
    _write_file(directory, name, json.dumps(record, indent=2, sort_keys=True).encode() + b"\n")
    return directory / name


def _write_undecodable(directory: Path, tag: str, line: bytes, reason: str, source: str) -> Path:
    ident = f"undecodable-{hashlib.sha256(line).hexdigest()[:16]}"
    record = {
        "entry": None,
        "id": ident,
        "line": line.decode("utf-8", "backslashreplace"),
        "reason": reason,
        "failures": 1,
        "quarantined_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source_file": source,
    }
    name = f"quarantine-{tag}-{ident}.json"
    _write_file(directory, name, json.dumps(record, indent=2, sort_keys=True).encode() + b"\n")
    return directory / name


def _write_file(directory: Path, name: str, data: bytes) -> None:
    """A whole file, mode 0600, under a hidden name first: the journal's globs never see it
    half-written."""
    write_atomically(directory / name, data, mode=0o600, sync_directory=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _parse(line: bytes, path: Path) -> JournalEntry | Exception | None:
    """The line's entry; None for a torn last line (never acknowledged); the decoding error
    for a whole line that does not decode (acknowledged: it must be set aside)."""
    if not line.endswith(b"\n"):
        log.warning(
            "event=journal_torn_line file=%s bytes=%d (never acknowledged: skipped)",
            path.name,
            len(line),
        )
        return None
    try:
        return decode_entry(line)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return exc


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def _read_lines(fd: int) -> list[bytes]:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    data = b"".join(chunks)
    return data.splitlines(keepends=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
