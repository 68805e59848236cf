"""`txrelay keys`: the key-encryption key (KEK) that seals the DKIM private keys at rest."""

from __future__ import annotations

from pathlib import Path

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.kek import OLD_SUFFIX
from txrelay.provisioning import key_sealing


@click.group()
def keys() -> None:
    """The key-encryption key ([database] kek_file, made by 'txrelay init') that seals
    every DKIM private key in the database: see how many keys are sealed, seal keys stored
    in clear by an older release, and replace the KEK.

    \b
    Examples:
      txrelay keys status
      txrelay keys encrypt
      txrelay keys rotate-kek
    """


@keys.command("status")
@json_option
@pass_cli
def status(cli: CliContext) -> None:
    """How many DKIM private keys are sealed, and which KEK file seals them. Exit status 1
    while a key is stored in clear (run 'txrelay keys encrypt').

    \b
    Example:
      txrelay keys status --json
    """
    clear, total = key_sealing.clear_key_count(cli.db)
    data = {
        "kek_file": cli.config.database.kek_file,
        "keys": total,
        "clear": clear,
        "sealed": total - clear,
    }

    def human() -> None:
        click.echo(
            f"{total - clear} of {total} DKIM private keys sealed with "
            f"{cli.config.database.kek_file}."
        )
        if clear:
            click.echo(f"{clear} stored in clear: run 'txrelay keys encrypt'.")

    cli.emit(data, human)
    if clear:
        click.get_current_context().exit(1)


@keys.command("encrypt")
@json_option
@pass_cli
def encrypt(cli: CliContext) -> None:
    """Seal every DKIM private key still stored in clear (keys added before this release)
    and every webhook secret added while this node had no KEK, in one transaction; run it
    once after upgrading ('txrelay db migrate' cannot: the KEK is a file on this node).
    Safe to run again.

    \b
    Example:
      txrelay keys encrypt
    """
    report = key_sealing.seal_clear_keys(cli.db, cli.keys)
    data = {"sealed_now": report.sealed, "keys": report.total, "kek_id": report.kek_id}

    def human() -> None:
        click.echo(
            f"Sealed {report.sealed} DKIM private keys stored in clear; all "
            f"{report.total} are sealed with {cli.config.database.kek_file}."
        )

    cli.emit(data, human)


@keys.command("rotate-kek")
@json_option
@pass_cli
def rotate_kek(cli: CliContext) -> None:
    """Make a new KEK and re-seal every DKIM private key and webhook secret with it, in one
    transaction.

    The current KEK is kept as KEK_FILE.old (running milters open keys with either, so
    nothing stops signing); delete it once no database backup you keep needs it. If the
    transaction fails, the KEK file is put back and nothing changes. Run it on the node
    whose kek_file the milters read (several nodes: copy the new file to each, then delete
    the .old files).

    \b
    Example:
      txrelay keys rotate-kek
    """
    path = Path(cli.config.database.kek_file)
    report = key_sealing.rotate_kek(cli.db, path)
    data = {
        "resealed": report.sealed,
        "kek_id": report.kek_id,
        "kek_file": str(path),
        "previous_kek_file": f"{path}{OLD_SUFFIX}",
    }

    def human() -> None:
        click.echo(
            f"Re-sealed {report.sealed} DKIM private keys with a new KEK in {path} "
            f"(id {report.kek_id}). The previous KEK is in {path}{OLD_SUFFIX}: "
            "delete it once no backup you keep needs it."
        )

    cli.emit(data, human)
