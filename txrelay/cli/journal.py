"""`txrelay journal`: the local journal's entries set aside after failing to replay."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.errors import InvalidInput, NotFound, TxRelayError
from txrelay.store.journal import (
    QuarantinedEntry,
    drop_quarantined,
    list_quarantined,
    release_quarantined,
)

T = TypeVar("T")


@click.group("journal")
def journal() -> None:
    """Journal entries set aside: ledger records that the milter accepted mail for while
    PostgreSQL was down, and that then failed to replay 3 times for a reason of their own
    (for example a connection or account deleted meanwhile), or journal lines that do not
    decode (set aside at once, listed as undecodable-DIGEST: bill their mail by hand from
    `show`, then drop them). Such mail was delivered but is not in the ledger yet. Reads the
    directory [milter] journal_dir on this node; run it as the milter's user or root.

    \b
    Example:
      txrelay journal list
      txrelay journal show 3f2c     (a transaction id, or its first characters)
      ... fix the cause the entry shows ...
      txrelay journal retry 3f2c    (the running milter replays it within a second)
      txrelay journal drop 3f2c     (or: give up on it; the mail stays unbilled)
    """


@journal.command("list")
@json_option
@pass_cli
def list_command(cli: CliContext) -> None:
    """Every entry set aside: transaction, account, connection, recipients, why it failed.

    \b
    Example:
      txrelay journal list
      txrelay journal list --json
    """
    entries = _entries(cli)
    cli.emit([e.summary() for e in entries], lambda: _print_list(entries))


@journal.command("show")
@click.argument("txn_id")
@json_option
@pass_cli
def show_command(cli: CliContext, txn_id: str) -> None:
    """One entry set aside, whole: the journaled ledger record and why it failed. TXN_ID is
    its transaction id or the first characters of it.

    \b
    Example:
      txrelay journal show 3f2c9a1e
    """
    entry = _find(cli, txn_id)
    data = {
        **entry.summary(),
        "record": entry.record["entry"],
        "source_file": entry.record.get("source_file"),
    }
    if entry.undecodable:
        data["line"] = entry.record["line"]
    cli.emit(data, lambda: click.echo(json.dumps(data, indent=2, sort_keys=True)))


@journal.command("retry")
@click.argument("txn_id")
@pass_cli
def retry_command(cli: CliContext, txn_id: str) -> None:
    """Put an entry back for replay, once its cause is fixed: a running milter on this node
    replays it within a second (else the next one at start). If it fails again 3 times, it
    is set aside again.

    \b
    Example:
      txrelay db migrate          (say it failed with UndefinedColumn: schema behind)
      txrelay journal retry 3f2c9a1e
    """
    entry = _find(cli, txn_id)
    if entry.undecodable:
        raise InvalidInput(
            f"entry {entry.txn_id} is a journal line that does not decode, so it cannot be "
            f"replayed: bill its mail by hand from 'txrelay journal show {entry.txn_id}', "
            f"then 'txrelay journal drop {entry.txn_id}'"
        )
    path = _guarded(lambda: release_quarantined(entry))
    click.echo(f"entry {entry.txn_id} put back for replay as {path.name}")


@journal.command("drop")
@click.argument("txn_id")
@pass_cli
def drop_command(cli: CliContext, txn_id: str) -> None:
    """Delete an entry set aside for good: its mail was delivered and stays unbilled.

    \b
    Example:
      txrelay journal drop 3f2c9a1e
    """
    entry = _find(cli, txn_id)
    _guarded(lambda: drop_quarantined(entry))
    if entry.undecodable:
        click.echo(f"entry {entry.txn_id} (a line that did not decode) dropped")
        return
    click.echo(
        f"entry {entry.txn_id} dropped; its {entry.summary()['recipients']} "
        "recipient(s) stay out of the ledger"
    )


def _directory(cli: CliContext) -> Path:
    return Path(cli.config.milter.journal_dir)


def _entries(cli: CliContext) -> list[QuarantinedEntry]:
    directory = _directory(cli)
    try:
        return list_quarantined(directory)
    except PermissionError as exc:
        raise TxRelayError(
            f"cannot read the journal directory {directory} ({exc.strerror}); "
            "run this as the user the milter runs as (txrelay) or root"
        ) from exc
    except ValueError as exc:
        raise TxRelayError(f"{exc}; move that file out of {directory}") from exc


def _find(cli: CliContext, txn_id: str) -> QuarantinedEntry:
    wanted = txn_id.strip().lower()
    if not wanted:
        raise InvalidInput("give a transaction id (see txrelay journal list)")
    matches = [e for e in _entries(cli) if e.txn_id.startswith(wanted)]
    if not matches:
        raise NotFound(
            f"no entry set aside has transaction id {txn_id!r} in "
            f"{_directory(cli)} (see txrelay journal list)"
        )
    if len(matches) > 1:
        raise InvalidInput(
            f"{txn_id!r} matches {len(matches)} entries; give more of the transaction id"
        )
    return matches[0]


def _guarded(action: Callable[[], T]) -> T:
    try:
        return action()
    except OSError as exc:
        raise TxRelayError(
            f"the journal directory cannot be changed ({exc.strerror or exc}); "
            "run this as the user the milter runs as (txrelay) or root"
        ) from exc


def _print_list(entries: list[QuarantinedEntry]) -> None:
    if not entries:
        click.echo("no journal entries set aside")
        return
    for entry in entries:
        s = entry.summary()
        if entry.undecodable:
            click.echo(
                f"{s['txn_id']}  a journal line that does not decode (from "
                f"{entry.record.get('source_file')}, set aside {s['quarantined_at']}): "
                f"{s['reason']}"
            )
            continue
        click.echo(
            f"{s['txn_id']}  account {s['account_id']}  connection "
            f"{s['connection_id']}  {s['recipients']} recipient(s)  accepted "
            f"{s['accepted_at']}  failed {s['failures']}x: {s['reason']}"
        )
