"""The CLI's exit status tells the error class apart (docs/cli.md): 0 done, 1 another
txrelay error, 2 usage, 3 not found, 4 invalid input, 5 service unavailable. Each through
main(), exactly as the console script runs it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli.conftest import Txrelay, run_main
from txrelay.cli.main import (
    EXIT_INVALID_INPUT,
    EXIT_NOT_FOUND,
    EXIT_OTHER_ERROR,
    EXIT_SERVICE_UNAVAILABLE,
    EXIT_STATUS,
    EXIT_USAGE,
)
from txrelay.errors import InvalidInput, NotFound, ServiceUnavailable


def test_a_command_that_succeeds_exits_0(txrelay: Txrelay, account: str) -> None:
    result = txrelay("account", "show", account)
    assert result.exit_code == 0 and result.stderr == ""


def test_an_existing_name_is_another_error_exiting_1(txrelay: Txrelay, account: str) -> None:
    result = txrelay("account", "create", account, "--admin-email", "x@example.org")
    assert result.exit_code == 1 and "exists already" in result.error


def test_an_unreadable_configuration_file_exits_1(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    broken = tmp_path / "txrelay.toml"
    broken.write_text("[database\n")
    result = run_main(["--config", str(broken), "account", "list"], monkeypatch)
    assert result.exit_code == 1 and str(broken) in result.error


def test_a_mistyped_option_or_argument_is_a_usage_error_exiting_2(
        txrelay: Txrelay, account: str) -> None:
    assert txrelay("account", "show").exit_code == 2  # missing argument
    assert txrelay("account", "list", "--colour").exit_code == 2  # unknown option
    result = txrelay("quota", "book", account, "--amount", "lots")  # malformed value
    assert result.exit_code == 2 and "is not a number of mails" in result.stderr


def test_an_unknown_account_exits_3(txrelay: Txrelay, unique: str) -> None:
    result = txrelay("quota", "show", f"nobody {unique}")
    assert result.exit_code == 3 and "no account named" in result.error


def test_an_unknown_connection_in_stats_exits_3(txrelay: Txrelay, account: str) -> None:
    result = txrelay("stats", "--account", account, "--connection", "No such shop")
    assert result.exit_code == 3 and "no connection named" in result.error


def test_a_value_that_breaks_a_rule_is_invalid_input_exiting_4(
        txrelay: Txrelay, account: str) -> None:
    small = txrelay("quota", "book", account, "--amount", "24999")
    assert small.exit_code == 4 and "at least 25,000 mails" in small.error
    period = txrelay("billing", "report", account, "--period", "10/2026")
    assert period.exit_code == 4 and "YYYY-MM" in period.error


def test_postgresql_not_answering_is_service_unavailable_exiting_5(
        txrelay: Txrelay, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXRELAY_DATABASE_URL", "postgresql://txrelay@127.0.0.1:1/txrelay")
    result = txrelay("account", "list")
    assert result.exit_code == 5 and "cannot connect to PostgreSQL" in result.error


def test_docs_cli_md_lists_the_statuses_the_cli_uses() -> None:
    """The table in docs/cli.md is the contract: the same numbers, the same meanings."""
    table = (Path(__file__).parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")
    documented = {int(cells[1]): cells[2].strip() for cells in (
        line.split("|") for line in table.splitlines()
        if re.match(r"^\|\s*\d+\s*\|", line))}
    assert documented == {0: "done", 1: "another txrelay error, or a check found problems",
                          2: "usage error", 3: "not found", 4: "invalid input",
                          5: "service unavailable"}
    assert (EXIT_OTHER_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INVALID_INPUT,
            EXIT_SERVICE_UNAVAILABLE) == (1, 2, 3, 4, 5)
    assert dict(EXIT_STATUS) == {NotFound: 3, InvalidInput: 4, ServiceUnavailable: 5}
