"""`txrelay init` and `txrelay db`, and what every command does when services or config fail."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import click
import psycopg
import pytest

from tests.cli.conftest import CliRun, run_main
from tests.conftest import ADMIN_DSN
from tests.harness.secret_files import secret_file_paths
from txrelay.cli.main import cli
from txrelay.config import load_config


@pytest.fixture()
def empty_database() -> Iterator[str]:
    """A database with no schema at all, to watch migrations being applied."""
    name = f"txrelay_cli_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _init(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str,
          *extra: str) -> CliRun:
    return run_main(["init", "--config-path", str(tmp_path / "etc" / "txrelay.toml"),
                     "--database-url", database_url, "--redis-url", "redis://127.0.0.1:6379/9",
                     "--smtp-host", "relay.example.com",
                     "--set", f"dovecot.config_dir={tmp_path / 'dovecot'}",
                     "--set", f"dovecot.base_dir={tmp_path / 'dovecot-run'}",
                     "--set", f"dovecot.auth_socket={tmp_path / 'dovecot-run' / 'auth'}",
                     "--set", f"dovecot.passdb_file={tmp_path / 'passdb' / 'passwd'}",
                     *extra], monkeypatch)


def test_init_writes_config_migrates_and_prints_next_steps(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, empty_database: str) -> None:
    result = _init(monkeypatch, tmp_path, empty_database, "--set", "quota.demo_rate_limit=10")
    assert result.exit_code == 0, result.stderr
    path = tmp_path / "etc" / "txrelay.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    config = load_config(path, required=True, environ={})
    # Every secret file init makes is readable by its owner and the txrelay group only.
    made = {name: p for name, p in secret_file_paths(config).items() if p.exists()}
    assert {"[database] kek_file", "[bounce] secret_file", "[bounce] dkim_key_file",
            "[smtp] tls_key_file"} <= set(made), sorted(made)
    for name, secret in made.items():
        mode = stat.S_IMODE(secret.stat().st_mode)
        assert not mode & 0o007, f"{name} {secret} is {oct(mode)}: readable by every user"
    assert config.database.url == empty_database
    assert config.smtp.host == "relay.example.com"
    assert config.quota.demo_rate_limit == 10
    assert "Database migrated: 0001 foundation" in result.stdout
    for step in ("postfix configure", "milter", "account create", "domain add",
                 "connection create", "dovecot -c"):
        assert step in result.stdout
    status = run_main(["--config", str(path), "db", "status", "--json"], monkeypatch).json()
    assert status["pending"] == [] and status["version"] >= 1


def test_init_refuses_to_overwrite_without_force(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "etc" / "txrelay.toml"
    path.parent.mkdir()
    path.write_text("# the admin's own file\n")
    refused = _init(monkeypatch, tmp_path, database_url)
    assert refused.exit_code == 1
    assert "exists already; pass --force" in refused.error
    assert path.read_text() == "# the admin's own file\n"
    forced = _init(monkeypatch, tmp_path, database_url, "--force")
    assert forced.exit_code == 0, forced.stderr
    assert "Database is up to date" in forced.stdout
    assert load_config(path, required=True, environ={}).database.url == database_url


def test_init_with_unreachable_database_writes_nothing(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    result = _init(monkeypatch, tmp_path, "postgresql://postgres@127.0.0.1:1/txrelay")
    assert result.exit_code == 5
    assert result.error.startswith("cannot connect to PostgreSQL at")
    assert not (tmp_path / "etc" / "txrelay.toml").exists()
    assert not (tmp_path / "dovecot").exists()


@pytest.mark.parametrize(("setting", "message"), [
    ("quota.no_such_key=1", "unknown key 'quota.no_such_key'"),
    ("smtp.port=many", "'smtp.port' = 'many' is not a whole number"),
    ("nonsense", "expected SECTION.KEY=VALUE"),
])
def test_init_with_bad_settings_writes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               database_url: str, setting: str,
                                               message: str) -> None:
    result = _init(monkeypatch, tmp_path, database_url, "--set", setting)
    assert result.exit_code == 1
    assert message in result.error
    assert not (tmp_path / "etc").exists()


def test_db_migrate_applies_then_is_up_to_date(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path, empty_database: str) -> None:
    config = tmp_path / "txrelay.toml"
    config.write_text(f'[database]\nurl = "{empty_database}"\n')

    def run(*args: str) -> CliRun:
        return run_main(["--config", str(config), *args], monkeypatch)

    before = run("db", "status", "--json").json()
    assert before["version"] == 0 and before["pending"][0] == {"version": 1,
                                                                "name": "foundation"}
    first = run("db", "migrate")
    assert first.exit_code == 0 and "Applied migration 0001 foundation." in first.stdout
    second = run("db", "migrate", "--json").json()
    assert second["applied"] == [] and second["version"] == before["pending"][-1]["version"]
    assert "up to date" in run("db", "migrate").stdout
    assert "No pending migrations." in run("db", "status").stdout


def test_db_migrate_grants_the_daemons_role_of_milter_url_and_says_so(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, empty_database: str) -> None:
    role = f"txrelay_milter_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    parts = urlsplit(empty_database)
    milter_url = urlunsplit(parts._replace(netloc=f"{role}:pw@{parts.hostname}:"
                                                  f"{parts.port or 5432}"))
    config = tmp_path / "txrelay.toml"
    config.write_text(f'[database]\nurl = "{empty_database}"\nmilter_url = "{milter_url}"\n')
    try:
        done = run_main(["--config", str(config), "db", "migrate"], monkeypatch)
        assert done.exit_code == 0, done.stderr
        assert f"Role {role} ([database] milter_url) may read the policy" in done.stdout
        again = run_main(["--config", str(config), "db", "migrate", "--json"], monkeypatch)
        assert again.json()["daemon_role"] == role
        with psycopg.connect(milter_url) as conn:
            assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (0,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO accounts (name, admin_email) VALUES ('x', 'a@b.c')")
    finally:
        with psycopg.connect(empty_database, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"DROP ROLE {role}")


def test_commands_on_an_unmigrated_database_say_to_migrate(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, empty_database: str) -> None:
    config = tmp_path / "txrelay.toml"
    config.write_text(f'[database]\nurl = "{empty_database}"\n')
    result = run_main(["--config", str(config), "account", "list"], monkeypatch)
    assert result.exit_code == 5 and "run 'txrelay db migrate'" in result.error


@pytest.mark.parametrize("args", [
    ("account", "list"), ("account", "create", "X", "--admin-email", "x@example.org"),
    ("domain", "list"), ("connection", "list"), ("quota", "show", "X"), ("db", "status"),
])
def test_unreachable_database_is_one_line_and_exit_5(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path,
                                                     args: tuple[str, ...]) -> None:
    config = tmp_path / "txrelay.toml"
    config.write_text('[database]\nurl = "postgresql://postgres@127.0.0.1:1/txrelay"\n')
    result = run_main(["--config", str(config), *args], monkeypatch)
    assert result.exit_code == 5
    assert "cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:1/txrelay" in \
        result.error
    assert result.stdout == ""


@pytest.mark.parametrize(("content", "message"), [
    ("[database\nurl = 1\n", "not valid TOML"),
    ('[databse]\nurl = "postgresql://x/y"\n', "unknown section [databse]"),
    ('[database]\nurl = "mysql://x/y"\n', "is not a postgresql:// URL"),
])
def test_malformed_config_file_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path, content: str,
                                                      message: str) -> None:
    config = tmp_path / "txrelay.toml"
    config.write_text(content)
    result = run_main(["--config", str(config), "account", "list"], monkeypatch)
    assert result.exit_code == 1
    assert message in result.error


def test_missing_config_file_says_to_run_init(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    result = run_main(["--config", str(tmp_path / "absent.toml"), "account", "list"],
                      monkeypatch)
    assert result.exit_code == 1 and "run 'txrelay init'" in result.error


WITHOUT_AN_EXAMPLE_YET: set[tuple[str, ...]] = set()


def _command_paths(command: click.Command, path: tuple[str, ...] = ()
                   ) -> Iterator[tuple[str, ...]]:
    """The path of every group and command under COMMAND, COMMAND's own first."""
    yield path
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _command_paths(sub, (*path, name))


def test_every_group_and_command_has_help_with_an_example(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Walks the whole click tree, so a new command without an example fails here; the
    example must run the command itself ("txrelay quota tick ...")."""
    paths = [path for path in _command_paths(cli) if path not in WITHOUT_AN_EXAMPLE_YET]
    assert ("quota", "tick") in paths and ("suppression", "show") in paths
    without = []
    for path in paths:
        result = run_main([*path, "--help"], monkeypatch)
        assert result.exit_code == 0, path
        _, heading, example = result.stdout.partition("Example")
        invocation = " ".join(("txrelay", *path))
        lines = [line.strip() for line in example.splitlines()]
        if not heading or not any(line == invocation or line.startswith(invocation + " ")
                                  for line in lines):
            without.append(invocation)
    assert without == []
