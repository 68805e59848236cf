"""Replaces a file atomically: a temp file beside it, mode set before the first byte, fsync,
rename; a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def write_atomically(
    path: Path,
    text: str,
    *,
    mode: int,
    before_write: Callable[[int], None] | None = None,
    mtime_after: float | None = None,
    sync_directory: bool = False,
) -> None:
    """Write `text` (UTF-8) to `path` with permissions `mode`.

    before_write(fd) runs once the mode is set and before any byte is written (e.g. to
    change the group). mtime_after: the new file's mtime is later than this (readers that
    look at whole-second mtimes see the change). sync_directory: fsync the directory after
    the rename too, so the rename itself survives a crash.
    """
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            if before_write is not None:
                before_write(handle.fileno())
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if mtime_after is not None:
            now = time.time()
            os.utime(temp_name, (now, max(now, mtime_after)))
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    if sync_directory:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
