"""Follows one log file through renames (postfix logrotate) and restarts, line by line.

The follower never decides what was applied: it hands out complete lines with the position
just after them, and moves on only when told (after the database committed that position).
A restart resumes from the stored position: the same file if it is still at the path, else
the rotated file with the same inode (or, once compressed, the same first line) in the same
directory, then every later rotated file, then the live file.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from txrelay.store.tracking import FileIdentity, Position

log = logging.getLogger("txrelay.tracker")

READ_SIZE = 1 << 20  # a line longer than this is consumed as one (unparsed) line
FINGERPRINT_BYTES = 1 << 16


@dataclass(frozen=True)
class Chunk:
    lines: list[str]
    start: Position
    end: Position


class Reader(Protocol):
    """Random reads from one log file by offset: PlainReader (a live or rotated file, readable
    after rename and unlink) or GzipReader (a compressed rotation)."""

    def read_at(self, offset: int, size: int) -> bytes: ...

    def close(self) -> None: ...


class PlainReader:
    """pread on an open descriptor: the data stays readable after rename and unlink."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)

    def read_at(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class GzipReader:
    """A rotated log that postfix logrotate compressed while the tracker was down."""

    def __init__(self, path: Path) -> None:
        self.file = gzip.open(path, "rb")  # noqa: SIM115 -- lives as long as the follower reads it

    def read_at(self, offset: int, size: int) -> bytes:
        self.file.seek(offset)
        return self.file.read(size)

    def close(self) -> None:
        self.file.close()


@dataclass
class Source:
    name: Path
    reader: Reader
    identity: FileIdentity
    live: bool  # the file at the log path; rotated files are drained, then dropped


def fingerprint_of(reader: Reader) -> str | None:
    head = reader.read_at(0, FINGERPRINT_BYTES)
    cut = head.find(b"\n")
    if cut < 0:
        return None
    return hashlib.sha256(head[: cut + 1]).hexdigest()[:32]


def _open_plain(path: Path, live: bool) -> Source:
    reader = PlainReader(path)
    info = reader.stat()
    identity = FileIdentity(info.st_dev, info.st_ino, fingerprint_of(reader))
    return Source(path, reader, identity, live)


class LogFollower:
    """Complete lines of the log at `path`, in order, across rotations."""

    def __init__(
        self,
        path: Path,
        rotation_grace: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.key = str(path)  # its row in tracker_positions
        self.rotation_grace = rotation_grace
        self.monotonic = monotonic
        self.sources: list[Source] = []
        self.offset = 0
        self.truncated = False  # resume() found the stored file shorter than the offset
        self._rotation_seen: float | None = None

    @property
    def position(self) -> Position | None:
        if not self.sources:
            return None
        return Position(self.sources[0].identity, self.offset)

    @property
    def rotation_pending(self) -> bool:
        """The live file was renamed away; the switch waits for the grace period."""
        return self._rotation_seen is not None

    def resume(self, stored: Position) -> bool:
        """Open what the stored position names; False while the log does not exist yet."""
        self.close()
        self.truncated = False
        if not self.path.exists():
            return False
        live = _open_plain(self.path, live=True)
        if stored.identity is None:
            self.sources, self.offset = [live], 0
        elif same_file(stored.identity, live.identity):
            self.sources, self.offset = [live], stored.offset
            if live.reader.stat().st_size < stored.offset:  # type: ignore[attr-defined]
                log.warning("event=log_truncated path=%s offset=%d", self.path, stored.offset)
                self.offset = 0
                self.truncated = True  # the stored position must follow, or no chunk fits
        else:
            self.sources = [*self._rotated_since(stored.identity), live]
            if len(self.sources) == 1:
                log.warning(
                    "event=log_position_lost path=%s inode=%d: the file of the "
                    "stored position is gone; reading the current log from its start",
                    self.path,
                    stored.identity.inode,
                )
                self.offset = 0
            else:
                self.offset = stored.offset
        return True

    def read_chunk(self, max_bytes: int = READ_SIZE) -> Chunk | None:
        """The next complete lines (None when there are none yet)."""
        while self.sources:
            source = self.sources[0]
            data = source.reader.read_at(self.offset, max_bytes)
            cut = data.rfind(b"\n")
            if cut < 0 and len(data) >= max_bytes:
                cut = len(data) - 1  # an endless line: consume it rather than stall
            if cut >= 0:
                return self._chunk(source, data[: cut + 1])
            if not self._next_source(source, partial=len(data)):
                return None
        return None

    def advance(self, chunk: Chunk) -> None:
        """The database committed chunk.end: continue after it."""
        if self.sources and chunk.end.identity is not None:
            self.sources[0].identity = chunk.end.identity
        self.offset = chunk.end.offset

    def close(self) -> None:
        for source in self.sources:
            source.reader.close()
        self.sources = []

    def _chunk(self, source: Source, data: bytes) -> Chunk:
        start = Position(source.identity, self.offset)
        if source.identity.fingerprint is None:
            fingerprint = fingerprint_of(source.reader)
            source.identity = FileIdentity(
                source.identity.device, source.identity.inode, fingerprint
            )
        lines = [raw.decode("utf-8", errors="replace") for raw in data.split(b"\n")[:-1]]
        if not data.endswith(b"\n"):
            lines.append(data.decode("utf-8", errors="replace"))
        return Chunk(lines, start, Position(source.identity, self.offset + len(data)))

    def _next_source(self, source: Source, partial: int) -> bool:
        """At the end of `source`: move to the next file if there is one. True if moved."""
        if not source.live:
            if partial:
                log.warning("event=rotated_log_partial_line path=%s bytes=%d", source.name, partial)
            self._drop_first()
            return True
        rotated = self._live_was_rotated(source)
        if not rotated:
            return False
        now = self.monotonic()
        if self._rotation_seen is None:
            self._rotation_seen = now  # postlogd may still write a line or two to the old file
            return False
        if now - self._rotation_seen < self.rotation_grace:
            return False
        self._rotation_seen = None
        source.live = False
        self.sources.append(_open_plain(self.path, live=True))
        log.info("event=log_rotated path=%s", self.path)
        return True

    def _live_was_rotated(self, source: Source) -> bool:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed, new file not created yet: keep draining the old one
        return (info.st_dev, info.st_ino) != (source.identity.device, source.identity.inode)

    def _drop_first(self) -> None:
        self.sources.pop(0).reader.close()
        self.offset = 0

    def _rotated_since(self, identity: FileIdentity) -> list[Source]:
        """The rotated file holding the stored position, then every later rotated file."""
        rotated = sorted(p for p in self.path.parent.glob(self.path.name + ".*") if p.is_file())
        for index, candidate in enumerate(rotated):
            found = _open_matching(candidate, identity)
            if found is not None:
                later = [_open_rotated(p) for p in rotated[index + 1 :]]
                return [found, *later]
        return []


def same_file(stored: FileIdentity, current: FileIdentity) -> bool:
    """The same log file: device and inode, and the first line's hash when both know it (an
    inode number is reused by a new file once the old one is deleted)."""
    if (stored.device, stored.inode) != (current.device, current.inode):
        return False
    return stored.fingerprint is None or stored.fingerprint == current.fingerprint


def _open_rotated(path: Path) -> Source:
    if path.suffix == ".gz":
        reader = GzipReader(path)
        info = path.stat()
        return Source(
            path, reader, FileIdentity(info.st_dev, info.st_ino, fingerprint_of(reader)), live=False
        )
    return _open_plain(path, live=False)


def _open_matching(path: Path, identity: FileIdentity) -> Source | None:
    """The rotated file if it is the one of the stored position (keeping that identity)."""
    try:
        source = _open_rotated(path)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    same_inode = (source.identity.device, source.identity.inode) == (
        identity.device,
        identity.inode,
    )
    same_first_line = (
        identity.fingerprint is not None and source.identity.fingerprint == identity.fingerprint
    )
    if (same_inode and (identity.fingerprint is None or same_first_line)) or (
        path.suffix == ".gz" and same_first_line
    ):
        source.identity = identity
        return source
    source.reader.close()
    return None
