"""The milter's current policy snapshot, kept fresh from PostgreSQL (with a local copy for a
start during an outage, and this node's SMTP login file brought up to date on each change)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Protocol

import psycopg
import psycopg_pool

from txrelay.policy.snapshot import PolicySnapshot
from txrelay.store.passdb_file import PassdbFileError, in_effect_since, sync_passdb_file
from txrelay.store.policy import (
    PolicyLoader,
    current_version,
    fetch_policy_rows,
    read_policy_rows,
    save_policy_rows,
)
from txrelay.supervised import SupervisedLoop

log = logging.getLogger("txrelay.milter")
UNKNOWN_LOGIN_RECHECK = 0.25  # seconds between on-demand policy checks for unknown logins
UNKNOWN_LOGIN_WAIT = 3.0  # most an unknown login waits for a policy reload in progress


class PolicySource(Protocol):
    """Where the milter gets the policy snapshot it decides with (who may send what).

    A snapshot is never changed, only replaced, so a transaction that pinned one keeps
    deciding with it."""

    def snapshot_for_login(self, login: str | None) -> PolicySnapshot | None:
        """The current snapshot, newer if there is one that knows this SASL login; None
        while no policy could be loaded at all."""
        ...

    def refresh(self) -> bool:
        """Load the policy now if it changed; True when a snapshot is usable afterwards."""
        ...


class PolicyCache:
    """Holds the current snapshot; a daemon thread polls policy_version and reloads on change.

    With a `passdb_path`, each change of the version also brings this node's SMTP login file
    (Dovecot's passdb) up to date, so that a change made by the CLI on another node
    reaches this node's logins within one poll; while PostgreSQL is down the file stays."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        loader: PolicyLoader,
        interval: float,
        copy_path: Path | None = None,
        passdb_path: Path | None = None,
    ) -> None:
        self.pool = pool
        self.loader = loader
        self.interval = max(interval, 0.1)
        self.copy_path = copy_path  # the local copy for a start during a PostgreSQL outage
        self.passdb_path = passdb_path
        self._passdb_due = passdb_path is not None
        self._passdb_failing = False
        self.current: PolicySnapshot | None = None
        # Critical: a frozen snapshot would keep accepting a connection disabled since.
        self.loop = SupervisedLoop("policy-refresh", self.interval, self._poll, critical=True)
        self._failing = False
        self._refresh_lock = threading.Lock()
        self._last_refresh = 0.0

    def snapshot_for_login(self, login: str | None) -> PolicySnapshot | None:
        """The current snapshot; when it does not know this SASL login, look for a newer one
        first. Dovecot sees a new connection at once, so without this a shop connected a
        second ago would be refused until the next poll. At most one such check runs per
        UNKNOWN_LOGIN_RECHECK seconds, so a stream of bad logins costs PostgreSQL nothing."""
        current = self.current
        if not login or current is None or login.strip().lower() in current.connections:
            return current
        # Wait for a reload already running (the poll, or another connection's check): the
        # login is likely what it is loading. Then check ourselves if none ran just now.
        if not self._refresh_lock.acquire(timeout=UNKNOWN_LOGIN_WAIT):
            return self.current
        try:
            current = self.current
            if current is not None and login.strip().lower() in current.connections:
                return current
            now = time.monotonic()
            if now - self._last_refresh >= UNKNOWN_LOGIN_RECHECK:
                self._last_refresh = now
                self._reload()
        finally:
            self._refresh_lock.release()
        return self.current

    def refresh(self) -> bool:
        """Reload when the version moved; True when the snapshot is usable afterwards.

        One reload at a time: two at once read their rows at different moments, and the one
        that finished last, not the one that read last, would be kept, so a slow poll could
        put back a snapshot without a connection made a moment ago (and the loader's record
        of credentials would be raced the same way)."""
        with self._refresh_lock:
            return self._reload()

    def _reload(self) -> bool:
        """refresh(), with the refresh lock held by the caller."""
        try:
            with self.pool.connection() as conn:
                version = current_version(conn)
                conn.rollback()
                if self.current is None or self.current.version != version:
                    rows = fetch_policy_rows(conn)
                    # The login file first: a changed credential counts from when this
                    # node's Dovecot checks it (the CLI may have written it already).
                    self._passdb_due = self.passdb_path is not None
                    if self._passdb_due:
                        self._sync_passdb(conn)
                    self.current = self.loader.build(rows, self._credentials_since())
                    log.info(
                        "event=policy_loaded version=%d connections=%d domains=%d",
                        self.current.version,
                        len(self.current.connections),
                        len(self.current.domains),
                    )
                    self._save_copy(rows)
                elif self._passdb_due:
                    self._sync_passdb(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            if not self._failing:
                log.warning(
                    "event=policy_refresh_failed error=%r (keeping version %s)",
                    exc.__class__.__name__,
                    self.current.version if self.current else "none",
                )
            self._failing = True
            if self.current is None:
                self._load_copy()
            return self.current is not None
        if self._failing:
            log.info("event=policy_refresh_recovered version=%d", self.current.version)
        self._failing = False
        return True

    def _save_copy(self, rows: dict[str, object]) -> None:
        if self.copy_path is None:
            return
        try:
            save_policy_rows(self.copy_path, rows)
        except OSError as exc:
            log.warning(
                "event=policy_copy_not_saved path=%s error=%r (a restart during a "
                "PostgreSQL outage could not authorise)",
                self.copy_path,
                str(exc),
            )

    def _credentials_since(self) -> float:
        """When this node's Dovecot checks logins against the file just brought up to date;
        now when there is no file or it could not be written (then the old version may
        still be in use, and sessions are judged from now)."""
        since = None
        if self.passdb_path is not None and not self._passdb_failing:
            since = in_effect_since(self.passdb_path)
        return time.time() if since is None else since

    def _sync_passdb(self, conn: psycopg.Connection) -> None:
        """Rewrite the login file when its content changed; when it cannot be written, say
        so once and try again at every poll until it can."""
        assert self.passdb_path is not None
        try:
            written = sync_passdb_file(conn, self.passdb_path)
        except PassdbFileError as exc:
            if not self._passdb_failing:
                log.error(
                    "event=passdb_file_not_written error=%r (SMTP logins on this node "
                    "miss the latest changes, and fail while PostgreSQL is down)",
                    str(exc),
                )
            self._passdb_failing = True
            return
        if written:
            log.info("event=passdb_file_written path=%s", self.passdb_path)
        self._passdb_due = False
        self._passdb_failing = False

    def _load_copy(self) -> None:
        """PostgreSQL is away and this process has no snapshot yet: use the local copy."""
        rows = None if self.copy_path is None else read_policy_rows(self.copy_path)
        if rows is None:
            return
        self.current = self.loader.build(rows)
        log.warning(
            "event=policy_loaded_from_copy version=%d path=%s connections=%d",
            self.current.version,
            self.copy_path,
            len(self.current.connections),
        )

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()

    def _poll(self) -> None:
        self.refresh()  # connections meeting an unknown login wait for it on its lock
