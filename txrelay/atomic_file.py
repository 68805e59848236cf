"""Replaces a file atomically: a temp file beside it, mode set before the first byte, fsync,
rename; a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def write_atomically(
    path: Path,
    content: str | bytes,
    *,
    mode: int,
    before_write: Callable[[int], None] | None = None,
    mtime_after: float | None = None,
    sync_directory: bool = False,
    sync_file: bool = True,
    like_existing: bool = False,
) -> None:
    """Write `content` (text as UTF-8, or bytes as they are) to `path` with permissions `mode`.

    before_write(fd) runs once the mode is set and before any byte is written (e.g. to
    change the group). mtime_after: the new file's mtime is later than this (readers that
    look at whole-second mtimes see the change). sync_directory: fsync the directory after
    the rename too, so the rename itself survives a crash. sync_file: fsync the data before
    the rename (False: the writers that never did, TLS files and configs an admin rewrites).
    like_existing: when `path` exists, the new file takes its mode and, run as root, its
    owner and group (a file of someone else's, such as Postfix's main.cf); `mode` is then
    only for a file that is new.
    """
    owner: tuple[int, int] | None = None
    if like_existing:
        try:
            info = path.stat()
        except FileNotFoundError:
            pass
        else:
            mode = stat.S_IMODE(info.st_mode)
            owner = (info.st_uid, info.st_gid) if os.geteuid() == 0 else None
    data = content.encode("utf-8") if isinstance(content, str) else content
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            if before_write is not None:
                before_write(handle.fileno())
            handle.write(data)
            handle.flush()
            if sync_file:
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
