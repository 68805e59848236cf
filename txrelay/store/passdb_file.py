"""The local passdb file: the enabled connections' SMTP credentials (user name and hash, as
PostgreSQL's `sasl_passdb` view gives them) in Dovecot's passwd-file format, so that SMTP
logins keep working on this node while PostgreSQL is down.

Written by the connection CLI right after a change of credentials or state, and by every
milter when its policy snapshot moves (docs/failure-modes.md). Never logged: it holds the
Argon2id hashes. Mode 0640, group of its directory (Dovecot's auth process reads it through
that group); replaced atomically, so Dovecot never reads half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from txrelay.atomic_file import write_atomically
from txrelay.errors import TxRelayError

log = logging.getLogger("txrelay.passdb_file")

SELECT_PASSDB = "SELECT username, password FROM sasl_passdb ORDER BY username"

FILE_MODE = 0o640
HEADER = (
    "# txrelay: SMTP logins of the enabled connections (passwd-file for txrelay's\n"
    "# Dovecot). Rewritten by the txrelay CLI and milter; edits here are lost.\n"
)
# What a line may hold: Dovecot splits at ':' and at line ends, so neither may be in a value.
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{2,63}$")
_PASSWORD = re.compile(r"^\{[A-Z0-9.-]+\}[^:\s]+$")


class PassdbFileError(TxRelayError):
    """The passdb file (or its directory) cannot be read or written."""


def fetch_passdb_entries(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(username, {SCHEME}hash) of every connection that may log in, in one transaction."""
    with conn.transaction():
        rows: list[Any] = conn.execute(SELECT_PASSDB).fetchall()
    return [(_field(row, "username", 0), _field(row, "password", 1)) for row in rows]


def render_passdb(entries: list[tuple[str, str]]) -> str:
    """The file's text: `username:{SCHEME}hash` per line. A row that would break the format
    (impossible through the CLI: the schema checks both columns) is left out and logged by
    user name only."""
    lines = [HEADER]
    for username, password in entries:
        if not _USERNAME.match(username) or not _PASSWORD.match(password):
            log.error(
                "event=passdb_entry_skipped username=%r reason='not a user name and "
                "{SCHEME}hash Dovecot can read'",
                username,
            )
            continue
        lines.append(f"{username}:{password}\n")
    return "".join(lines)


def sync_passdb_file(conn: psycopg.Connection, path: Path) -> bool:
    """Bring the file up to date with PostgreSQL; True when it was rewritten.

    The CLI on this node and the milter may sync at the same moment: the directory stays
    locked from the read to the rename, so rows read before a change committed can never
    replace a file written from rows read after it."""
    try:
        with _locked(path.parent):
            return write_passdb_file(path, render_passdb(fetch_passdb_entries(conn)))
    except OSError as exc:
        raise PassdbFileError(
            f"{path.parent}: cannot lock it ({exc.strerror}); it must "
            "exist (see docs/deployment.md)"
        ) from None


def write_passdb_file(path: Path, text: str) -> bool:
    """Replace the file with `text` unless it holds exactly that already (False then).

    Dovecot re-reads a passwd-file when its mtime (whole seconds) or size changed, so a new
    version always gets an mtime later than the old one's, even within the same second.
    """
    try:
        old = _stat(path)
        if old is not None and _current_text(path) == text:
            return False
        _replace(path, text, None if old is None else int(old.st_mtime))
    except OSError as exc:
        raise PassdbFileError(
            f"{path}: cannot write it ({exc.strerror}); its directory must "
            "be writable by this user (see docs/deployment.md)"
        ) from None
    return True


# Dovecot looks at the file's mtime at most once a second, and every new version's mtime is
# at or after the moment it was written (at most a second ahead of the clock): a login that
# starts this long after the file's mtime is checked against that version.
DOVECOT_READ_LAG_SECONDS = 1.0


def in_effect_since(path: Path) -> float | None:
    """When (this machine's wall clock) the file's current version is certain to be what
    Dovecot checks logins against; None when the file cannot be looked at."""
    found = _stat(path)
    return None if found is None else found.st_mtime + DOVECOT_READ_LAG_SECONDS


def wait_until_dovecot_sees_it(path: Path) -> None:
    """Return once a login that starts now is checked against the file's current version."""
    since = in_effect_since(path)
    if since is not None:
        time.sleep(max(0.0, since - time.time()))


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the directory itself: every writer can open it, root or not."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _current_text(path: Path) -> str | None:
    """The file's text, or None when this user may not read it (then it is rewritten)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _replace(path: Path, text: str, old_mtime: int | None) -> None:
    """Mode and group set before any byte is written, fsync, rename, fsync of the directory
    (write_atomically): never half-written, never world-readable. Dovecot reloads when the
    whole-second mtime differs from the one it read (`!=`, not `>`): the new file keeps
    the clock's time unless that is the old one's second, then it takes the next second. So
    the mtime never runs more than a second ahead of the clock, however many versions a
    burst of changes writes (credential changes count from it: txrelay/policy/session.py)."""
    parent = path.parent.stat()
    same_second = old_mtime is not None and int(time.time()) == old_mtime
    write_atomically(
        path,
        text,
        mode=FILE_MODE,
        before_write=lambda fd: _give_to_directory_group(fd, parent),
        mtime_after=old_mtime + 1.0 if same_second and old_mtime is not None else None,
        sync_directory=True,
    )


def _give_to_directory_group(fd: int, parent: os.stat_result) -> None:
    """The file takes the directory's group (Dovecot's, docs/deployment.md). Written as root
    (the CLI), it also takes the directory's owner, so that the milter, which owns the
    directory, can still compare and replace it."""
    current = os.fstat(fd)
    owner = parent.st_uid if os.geteuid() == 0 else -1
    if current.st_gid == parent.st_gid and (owner == -1 or current.st_uid == owner):
        return
    os.fchown(fd, owner, parent.st_gid)


def _field(row: Any, name: str, index: int) -> str:
    return str(row[name] if isinstance(row, dict) else row[index])
