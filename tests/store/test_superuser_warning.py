"""Nothing should run as the PostgreSQL superuser: a milter or tracker whose role is one
(rolsuper) says so at start, once, with the fix (a warning, not a refusal: it still relays)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.store.tracking_fixtures import MailLog, RecordingMailer
from txrelay.clock import SystemClock
from txrelay.config import Config
from txrelay.milter.runtime import open_runtime
from txrelay.tracker.daemon import TrackerDaemon


def superuser_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "event=database_superuser" in r.getMessage()]


def own_state(config: Config, directory: Path, *, as_superuser: bool) -> Config:
    """The run's configuration with its own journal and login file; as_superuser: the
    daemons connect with [database] url (the run's superuser), as with no milter_url."""
    (directory / "passdb").mkdir(parents=True)
    return dataclasses.replace(
        config,
        database=dataclasses.replace(
            config.database, milter_url="" if as_superuser else config.database.milter_url),
        milter=dataclasses.replace(config.milter, journal_dir=str(directory / "journal"),
                                   node_name="superuser-check"),
        dovecot=dataclasses.replace(config.dovecot,
                                    passdb_file=str(directory / "passdb" / "passwd")))


@pytest.mark.parametrize("as_superuser", [True, False])
def test_a_milter_connecting_as_a_superuser_warns_once_naming_the_fix(
        config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        as_superuser: bool) -> None:
    superuser = urlsplit(config.database.url).username
    with caplog.at_level(logging.WARNING, logger="txrelay.database"):
        runtime = open_runtime(own_state(config, tmp_path, as_superuser=as_superuser),
                               SystemClock())
        try:
            runtime.policy.refresh()  # connections of the pool have answered
            for _ in range(3):
                with runtime.ledger.pool.connection() as conn:
                    conn.execute("SELECT 1")
        finally:
            runtime.close()
    warnings = superuser_warnings(caplog)
    if not as_superuser:
        assert warnings == []
        return
    assert len(warnings) == 1, warnings
    assert f"daemon=milter role={superuser}:" in warnings[0]
    assert "txrelay_milter" in warnings[0] and "milter_url" in warnings[0]
    assert f"ALTER ROLE {superuser} NOSUPERUSER" in warnings[0]


@pytest.mark.parametrize("as_superuser", [True, False])
def test_a_tracker_connecting_as_a_superuser_warns_naming_the_fix(
        config: Config, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture,
        as_superuser: bool) -> None:
    daemon = TrackerDaemon(own_state(config, tmp_path, as_superuser=as_superuser),
                           SystemClock(), log_path=MailLog(tmp_path / "postfix.log").path,
                           node=f"node-{unique}", mailer=RecordingMailer(), rotation_grace=0.0)
    with caplog.at_level(logging.WARNING, logger="txrelay.database"):
        daemon.connect()
        daemon.disconnect()
        daemon.connect()  # a reconnection says nothing new
        daemon.disconnect()
    warnings = superuser_warnings(caplog)
    assert len(warnings) == (1 if as_superuser else 0), warnings
    if as_superuser:
        assert "daemon=tracker" in warnings[0] and "NOSUPERUSER" in warnings[0]
