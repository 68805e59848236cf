"""One milter connection (one SMTP session) across a credential change: the next MAIL is
refused with 421 4.7.0 (issue 12 item 5), other sessions are not."""

from __future__ import annotations

import time
from collections.abc import Callable

import Milter
import psycopg

from tests.milter.conftest import Driver, Outcome
from tests.store.builders import Tenant
from txrelay.milter.runtime import Runtime
from txrelay.store.passdb_file import DOVECOT_READ_LAG_SECONDS


def assert_log_in_again(outcome: Outcome) -> None:
    assert outcome.mail == Milter.TEMPFAIL
    assert outcome.mail_reply is not None and outcome.mail_reply[:2] == ("421", "4.7.0")
    assert "log in again" in outcome.mail_reply[2]


def test_next_mail_after_a_rotation_is_refused_and_a_new_session_sends(
        driver: Driver, tenant: Tenant, db: psycopg.Connection, runtime: Runtime) -> None:
    assert driver.send(tenant).eom == Milter.ACCEPT
    db.execute("UPDATE credentials SET password_hash = '{ARGON2ID}rotated' "
               "WHERE connection_id = %s", (tenant.connection_id,))
    runtime.policy.refresh()
    assert_log_in_again(driver.send(tenant))
    assert_log_in_again(driver.send(tenant))  # a client that ignores the 421 gets it again
    # A session that starts once this node's Dovecot checks the new password may send.
    snapshot = runtime.policy.snapshot_for_login(tenant.username)
    assert snapshot is not None
    in_effect = snapshot.connections[tenant.username.lower()].credential_since
    # The login file's mtime is never more than a second ahead of the clock, however many
    # versions the suite wrote before (txrelay/store/passdb_file.py).
    assert in_effect <= time.time() + 2 * DOVECOT_READ_LAG_SECONDS + 0.1
    time.sleep(max(0.0, in_effect - time.time()))
    assert Driver(runtime).send(tenant).eom == Milter.ACCEPT


def test_session_begun_before_a_rotation_is_refused_at_its_first_mail(
        tenant: Tenant, db: psycopg.Connection, runtime: Runtime) -> None:
    session = Driver(runtime)  # connected (and, say, logged in with the old password)
    db.execute("UPDATE credentials SET password_hash = '{ARGON2ID}rotated' "
               "WHERE connection_id = %s", (tenant.connection_id,))
    runtime.policy.refresh()
    assert_log_in_again(session.send(tenant))


def test_disable_ends_the_session_and_another_connection_is_untouched(
        driver: Driver, tenant_factory: Callable[..., Tenant], db: psycopg.Connection,
        runtime: Runtime) -> None:
    disabled, other = tenant_factory(), tenant_factory()
    other_session = Driver(runtime)
    assert driver.send(disabled).eom == Milter.ACCEPT
    assert other_session.send(other).eom == Milter.ACCEPT
    db.execute("UPDATE connections SET enabled = false WHERE id = %s",
               (disabled.connection_id,))
    runtime.policy.refresh()
    assert_log_in_again(driver.send(disabled))
    assert other_session.send(other).eom == Milter.ACCEPT
