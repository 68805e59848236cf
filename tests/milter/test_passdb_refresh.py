"""The milter's policy poll keeps this node's SMTP login file in step with PostgreSQL, and
leaves it alone while PostgreSQL is away."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.store.builders import make_tenant
from txrelay.milter.runtime import Runtime
from txrelay.store.policy import PolicyLoader
from txrelay.store.policy_cache import PolicyCache


def _loader(runtime: Runtime) -> PolicyLoader:
    """A loader as the milter makes it ([dkim] require_published as the run's config says)."""
    return PolicyLoader(runtime.config.quota,
                        require_published=runtime.config.dkim.require_published)


@pytest.fixture()
def passdb(tmp_path: Path) -> Path:
    (tmp_path / "auth").mkdir()
    return tmp_path / "auth" / "passwd"


def _users(path: Path) -> set[str]:
    return {line.split(":", 1)[0] for line in path.read_text().splitlines()
            if line and not line.startswith("#")}


def test_a_change_of_credentials_reaches_the_file_at_the_next_poll(
        runtime: Runtime, db: psycopg.Connection, unique: str, passdb: Path) -> None:
    cache = PolicyCache(runtime.ledger.pool, _loader(runtime), 60,
                        passdb_path=passdb)
    tenant = make_tenant(db, unique)
    assert cache.refresh()
    assert tenant.username in _users(passdb)
    written = passdb.stat()
    assert cache.refresh()  # version unchanged: not even compared again
    assert passdb.stat().st_mtime_ns == written.st_mtime_ns
    db.execute("UPDATE connections SET enabled = false WHERE id = %s", (tenant.connection_id,))
    assert cache.refresh()
    assert tenant.username not in _users(passdb)


def test_a_poll_while_postgresql_is_away_keeps_the_file(
        runtime: Runtime, db: psycopg.Connection, unique: str, passdb: Path,
        dead_pool: object) -> None:
    make_tenant(db, unique)
    assert PolicyCache(runtime.ledger.pool, _loader(runtime), 60,
                       passdb_path=passdb).refresh()
    before = passdb.read_text()
    away = PolicyCache(dead_pool, _loader(runtime), 60,  # type: ignore[arg-type]
                       passdb_path=passdb)
    assert away.refresh() is False
    assert passdb.read_text() == before


def test_an_unwritable_file_is_retried_at_every_poll_until_it_can_be_written(
        runtime: Runtime, db: psycopg.Connection, unique: str, passdb: Path) -> None:
    tenant = make_tenant(db, unique)
    missing = passdb.parent / "not-yet" / "passwd"
    cache = PolicyCache(runtime.ledger.pool, _loader(runtime), 60,
                        passdb_path=missing)
    assert cache.refresh()  # the snapshot is fine; only the file waits
    assert not missing.exists()
    missing.parent.mkdir()
    assert cache.refresh()
    assert tenant.username in _users(missing)
