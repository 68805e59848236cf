"""The SMTP login file Dovecot reads first: what is in it, its mode, and how it is replaced."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.store.builders import Tenant
from txrelay.provisioning.credentials import hash_password
from txrelay.store.passdb_file import (
    PassdbFileError,
    render_passdb,
    sync_passdb_file,
    write_passdb_file,
)


@pytest.fixture()
def passdb(tmp_path: Path) -> Path:
    directory = tmp_path / "auth"
    directory.mkdir(mode=0o2750)
    return directory / "passwd"


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


def test_file_holds_each_enabled_connection_with_its_hash_from_sasl_passdb(
        conn: psycopg.Connection, db: psycopg.Connection[dict[str, Any]], passdb: Path,
        tenant_factory: Callable[..., Tenant]) -> None:
    live, disabled, deleted = tenant_factory(), tenant_factory(enabled=False), tenant_factory()
    hashed = hash_password("correct horse battery staple")
    db.execute("UPDATE credentials SET password_hash = %s WHERE username = %s",
               (hashed, live.username))
    db.execute("UPDATE connections SET deleted_at = now() WHERE id = %s",
               (deleted.connection_id,))
    assert sync_passdb_file(conn, passdb)
    lines = _lines(passdb)
    assert f"{live.username}:{hashed}" in lines
    assert hashed.startswith("{ARGON2ID}$argon2id$")
    users = {line.split(":", 1)[0] for line in lines}
    assert disabled.username not in users and deleted.username not in users
    in_sql = {row["username"]: row["password"] for row in
              db.execute("SELECT username, password FROM sasl_passdb").fetchall()}
    assert dict(line.split(":", 1) for line in lines) == in_sql


def test_file_is_0640_with_the_directory_group_and_nothing_else_left_behind(
        passdb: Path) -> None:
    os.chown(passdb.parent, -1, 1)  # a group of its own, as 'dovecot' in production
    assert write_passdb_file(passdb, render_passdb([("shop-a1b2c3", "{PLAIN}x")]))
    info = passdb.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert info.st_gid == 1
    assert sorted(p.name for p in passdb.parent.iterdir()) == ["passwd"]


def test_a_change_replaces_the_file_whole_and_moves_its_mtime_on(passdb: Path) -> None:
    """A reader of the old file keeps a complete old file (rename, not rewrite in place);
    the new one has another whole-second mtime even when written within the same second,
    so that Dovecot (which reloads when whole-second mtime or size differ) reads it."""
    write_passdb_file(passdb, render_passdb([("shop-a1b2c3", "{PLAIN}old")]))
    before = passdb.stat()
    with passdb.open() as reader:
        assert write_passdb_file(passdb, render_passdb([("shop-a1b2c3", "{PLAIN}new")]))
        assert "{PLAIN}old" in reader.read()
    after = passdb.stat()
    assert after.st_ino != before.st_ino
    assert int(after.st_mtime) > int(before.st_mtime)
    assert _lines(passdb) == ["shop-a1b2c3:{PLAIN}new"]


def test_unchanged_content_is_not_written_again(conn: psycopg.Connection, passdb: Path,
                                                tenant_factory: Callable[..., Tenant]) -> None:
    tenant_factory()
    assert sync_passdb_file(conn, passdb)
    before = passdb.stat()
    assert not sync_passdb_file(conn, passdb)
    after = passdb.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_value_that_would_break_the_format_is_left_out() -> None:
    text = render_passdb([("shop-a1b2c3", "{PLAIN}a:b"), ("shop-d4e5f6", "{PLAIN}x\ny"),
                          ("shop-g7h8i9", "{PLAIN}ok")])
    assert [line for line in text.splitlines() if not line.startswith("#")] == [
        "shop-g7h8i9:{PLAIN}ok"]


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PassdbFileError, match=r"cannot write it .*docs/deployment\.md"):
        write_passdb_file(tmp_path / "absent" / "passwd", render_passdb([]))
