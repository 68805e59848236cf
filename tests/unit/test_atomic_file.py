"""The one atomic-write helper: mode before content, old-or-new only, nothing left behind."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from txrelay.atomic_file import write_atomically


def test_the_new_file_has_its_mode_and_text_and_no_temp_file_is_left(tmp_path: Path) -> None:
    path = tmp_path / "copy.json"
    path.write_text("old")
    write_atomically(path, "new ✓", mode=0o600, sync_directory=True)
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.json"]


def test_before_write_sees_the_mode_already_set_and_an_empty_file(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    def before_write(fd: int) -> None:
        info = os.fstat(fd)
        seen.append((stat.S_IMODE(info.st_mode), info.st_size))

    write_atomically(tmp_path / "passwd", "user:{X}hash\n", mode=0o640,
                     before_write=before_write)
    assert seen == [(0o640, 0)]


def test_a_failure_before_the_rename_keeps_the_old_file_and_leaves_no_temp_file(
        tmp_path: Path) -> None:
    path = tmp_path / "dovecot.conf"
    path.write_text("old")

    def refuse(_fd: int) -> None:
        raise PermissionError("chown refused")

    with pytest.raises(PermissionError):
        write_atomically(path, "new", mode=0o644, before_write=refuse)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dovecot.conf"]


def test_mtime_after_moves_the_mtime_past_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    later = time.time() + 5
    write_atomically(path, "x", mode=0o640, mtime_after=later)
    assert path.stat().st_mtime >= later


def test_bytes_are_written_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "relay.key"
    data = b"\x00\xff-----BEGIN\r\n"
    write_atomically(path, data, mode=0o600)
    assert path.read_bytes() == data


def test_like_existing_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    path = tmp_path / "main.cf"
    path.write_text("old")
    path.chmod(0o604)
    write_atomically(path, b"new", mode=0o600, like_existing=True)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o604
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main.cf"]


def test_like_existing_gives_a_new_file_the_mode_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "master.cf"
    write_atomically(path, b"new", mode=0o640, like_existing=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another owner")
def test_like_existing_keeps_owner_and_group_when_run_as_root(tmp_path: Path) -> None:
    path = tmp_path / "main.cf"
    path.write_text("old")
    os.chown(path, 65534, 65534)
    write_atomically(path, "new", mode=0o644, like_existing=True)
    assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534)


@pytest.mark.parametrize("sync_file", [True, False])
def test_sync_file_decides_whether_the_data_is_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_file: bool
) -> None:
    synced: list[bool] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(stat.S_ISREG(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_atomically(tmp_path / "cert.pem", b"x", mode=0o644, sync_file=sync_file,
                     sync_directory=True)
    assert synced == ([True, False] if sync_file else [False])
