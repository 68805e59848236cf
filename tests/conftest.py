"""Session fixtures shared by every ring: a fresh PostgreSQL database and an emptied Redis DB."""

from __future__ import annotations

import os
import secrets
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from hypothesis import settings

from tests.harness import artifacts
from txrelay.bounce_secret import write_bounce_secret
from txrelay.config import Config, DatabaseConfig, load_config
from txrelay.kek import KeyRing, generate_kek, write_kek_file
from txrelay.store import database

# Generated examples (hypothesis) are the same at every run, so a run fails only for what
# the code does, never for an example it happened to draw that day (a CI run must not fail
# at random). To look for new ones: scripts/test.sh tests/milter/test_malformed.py
# --hypothesis-profile=explore; add what it finds to tests/corpus/malformed.py.
settings.register_profile("txrelay", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("txrelay")

# The test command's own variables; the configuration loader refuses any other TXRELAY_*
# variable as an unknown setting, so CLI and daemon tests must not inherit them. They are
# kept as PYTEST_TXRELAY_* for pytest-xdist's workers, which start after this file ran.
for _name in ("TXRELAY_VENV", "TXRELAY_TEST_ADMIN_DSN", "TXRELAY_TEST_REDIS",
              "TXRELAY_TEST_REDIS_DB"):
    if _name in os.environ:
        os.environ[f"PYTEST_{_name}"] = os.environ.pop(_name)
ADMIN_DSN = os.environ.get("PYTEST_TXRELAY_TEST_ADMIN_DSN",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("PYTEST_TXRELAY_TEST_REDIS", "redis://127.0.0.1:6379")
# One Redis DB per pytest-xdist worker (gw0, gw1, ...): each flushes its own at start.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS_DB = int(os.environ.get("PYTEST_TXRELAY_TEST_REDIS_DB", "9")) + WORKER

# Test files that use what the machine has only once (marked machine_wide): the whole run of
# scripts/test.sh runs them alone after the others; a run of chosen files gives them to one
# pytest-xdist worker, one after the other (--dist loadgroup; every other file is a group of
# its own, so a module's fixtures start once). They use the real systemd journal
# (/run/systemd/journal, /dev/log), the fixed role names of the README install and the
# container, the image build, the bench, the documentation examples' /etc/txrelay sandbox.
MACHINE_WIDE = {
    "tests/e2e/test_readme_install.py",
    "tests/e2e/test_container.py",
    "tests/e2e/test_bench_smoke.py",
    "tests/e2e/test_tracking_journal.py",
    "tests/store/test_tracking_journal.py",
    "tests/cli/test_tracker_command.py",
    "tests/cli/test_init_database_and_tls.py",
    "tests/docs/test_examples.py",
    "tests/docs/test_example_reading.py",
}
_ring_seconds: dict[str, float] = {}  # tests/milter_fast test id -> setup + call + teardown


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if path in MACHINE_WIDE:
            item.add_marker(pytest.mark.machine_wide)
        item.add_marker(pytest.mark.xdist_group("machine-wide" if path in MACHINE_WIDE
                                                else path))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid.startswith("tests/milter_fast/"):
        _ring_seconds[report.nodeid] = _ring_seconds.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fast ring's own time, and the files the tests left for CI (the dashboard's
    screenshots), where CI's log shows them whatever pytest captured."""
    if _ring_seconds:
        terminalreporter.write_line(
            f"milter_fast ring: {len(_ring_seconds)} tests in "
            f"{sum(_ring_seconds.values()):.2f} s with in-memory stores")
    lines = artifacts.summary()
    if lines:
        terminalreporter.section("test artifacts")
        for line in lines:
            terminalreporter.write_line(line)

pytest_plugins = ["tests.harness.fixtures", "tests.harness.dns"]

# Several milters and trackers run at once in the suite: none may take the default metrics
# ports (tests that check metrics give their daemon a free port explicitly).
os.environ.setdefault("TXRELAY_METRICS_MILTER_LISTEN", "")
os.environ.setdefault("TXRELAY_METRICS_TRACKER_LISTEN", "")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database made for this run, migrated, dropped afterwards."""
    name = f"txrelay_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_DSN} ({exc}); "
                    "scripts/test.sh starts it", pytrace=False)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(url) as conn:
        database.migrate(conn)
    yield url
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def milter_url(database_url: str) -> Iterator[str]:
    """The run's database as a role like init's txrelay_milter: the milter and the tracker of
    every test connect with it (config_file's milter_url), so a right they lack fails."""
    role, password = f"txrelay_milter_{os.getpid()}_{secrets.token_hex(3)}", secrets.token_hex(12)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    parts = urlsplit(database_url)
    url = urlunsplit(parts._replace(
        netloc=f"{role}:{password}@{parts.hostname}:{parts.port or 5432}"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert database.grant_daemon_role(conn, DatabaseConfig(url=database_url,
                                                               milter_url=url)) == role
    yield url
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"DROP ROLE IF EXISTS {role}")
    except psycopg.Error as exc:  # still connected: the database's own teardown ends it
        warnings.warn(f"role {role} left behind: {exc}", stacklevel=1)


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = f"{REDIS_BASE}/{REDIS_DB}"
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at {url} ({exc}); scripts/test.sh starts it",
                    pytrace=False)
    return url


@pytest.fixture(scope="session")
def config_file(tmp_path_factory: pytest.TempPathFactory, database_url: str,
                milter_url: str, redis_url: str) -> Path:
    """A txrelay.toml pointing at the run's database and Redis DB (sockets in a temp dir)."""
    base = tmp_path_factory.mktemp("txrelay")
    path = base / "txrelay.toml"
    path.write_text(
        f'[database]\nurl = "{database_url}"\nmilter_url = "{milter_url}"\n'
        f'kek_file = "{base}/kek"\n\n'
        f'[redis]\nurl = "{redis_url}"\nkey_prefix = "txt{secrets.token_hex(2)}"\n\n'
        f'[milter]\nsocket = "unix:{base}/milter.sock"\npolicy_refresh_seconds = 0.5\n'
        f'journal_dir = "{base}/journal"\n'
        'reservation_ttl_seconds = 60\n'
        # The corpora send hundreds of refused messages through one connection: the refusal
        # budget is off here, and its own tests turn it on.
        'refusal_budget_per_hour = 0\n\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = 10587\n\n'
        # The stacks' milters run without a DNS server: a domain the harness adds could never
        # become published, so they sign unpublished domains. tests/e2e/test_dkim_publication
        # runs a milter with require_published = true against NSD.
        '[dkim]\nrequire_published = false\n\n'
        f'[dovecot]\nconfig_dir = "{base}/dovecot"\nbase_dir = "{base}/dovecot-run"\n'
        f'auth_socket = "{base}/dovecot-run/auth-postfix"\n'
        f'passdb_file = "{base}/passdb/passwd"\n\n'
        # The secret only: the e2e stacks add a bounce domain (tests/harness/stackconfig.py).
        f'[bounce]\nsecret_file = "{base}/bounce.key"\n'
        # No relay DKIM key (whatever /etc/txrelay holds): the stacks' mail of domains without
        # a return path of their own has no CFBL; tests/e2e/test_cfbl_relay.py adds the key.
        f'dkim_key_file = "{base}/bounce-dkim.pem"\n'
    )
    (base / "passdb").mkdir()
    write_kek_file(base / "kek", generate_kek())
    write_bounce_secret(base / "bounce.key")
    return path


@pytest.fixture(scope="session")
def config(config_file: Path) -> Config:
    return load_config(config_file, required=True, environ={})


@pytest.fixture(scope="session")
def kek_ring(config: Config) -> KeyRing:
    """The run's key-encryption key ([database] kek_file of the run's configuration)."""
    return KeyRing.load(Path(config.database.kek_file))


@pytest.fixture()
def db(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A connection to the run's database (autocommit), for assertions."""
    with psycopg.connect(database_url, autocommit=True,
                         row_factory=psycopg.rows.dict_row) as conn:
        yield conn


@pytest.fixture()
def unique() -> str:
    """A short unique token, so tests sharing the run's database never collide on names."""
    return uuid.uuid4().hex[:8]
