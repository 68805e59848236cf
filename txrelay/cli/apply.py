"""`txrelay apply -f FILE` and `txrelay export`: the relay's accounts, domains, connections,
webhooks and manual suppressions kept in a YAML file (docs/provisioning-as-code.md)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

import click
import redis
import yaml

from txrelay.cli.connection import update_login_file
from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.errors import Conflict, InvalidInput
from txrelay.policy.declarative import Step, describe, document
from txrelay.provisioning import declarative
from txrelay.provisioning.dns_lookup import DnsLookup
from txrelay.store.keys import AccountKeys

SECRETS_MODE = 0o600


@click.command("apply")
@click.option(
    "-f",
    "--file",
    "file",
    type=click.File("r", encoding="utf-8"),
    required=True,
    metavar="FILE",
    help="The YAML file ('-' reads standard input); schema: txrelay/schema/apply.schema.json.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan as a diff and change nothing.")
@click.option(
    "--prune",
    is_flag=True,
    help="Also delete the accounts, domains, connections, webhooks and manual suppressions "
    "the file does not name.",
)
@click.option("--yes", is_flag=True, help="Prune without asking (required when not on a terminal).")
@click.option(
    "--secrets-out",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Write the new connections' passwords and webhook secrets here (mode 0600; the "
    "file must not exist yet).",
)
@click.option(
    "--show-secrets", is_flag=True, help="Print the new passwords and webhook secrets instead."
)
@json_option
@pass_cli
def apply(
    cli: CliContext,
    file: IO[str],
    dry_run: bool,
    prune: bool,
    yes: bool,
    secrets_out: Path | None,
    show_secrets: bool,
) -> None:
    """Make the relay hold what FILE describes: create what is missing, change what
    differs, and with --prune delete what FILE does not name. All in one transaction: on
    any error nothing is changed. Applying the same file again says "no changes".

    FILE is checked first (unknown keys, wrong types, duplicates, a domain of another
    account, a key file that is not a key); each problem is printed as FILE:LINE: FIELD:
    problem and nothing is written (exit 4). New SMTP passwords and webhook secrets are
    shown once: written to --secrets-out, or printed with --show-secrets.

    \b
    Examples:
      txrelay apply -f relay.yaml --dry-run
      txrelay apply -f relay.yaml --secrets-out new-secrets.yaml
      txrelay export | txrelay apply -f - --dry-run
    """
    name = "<stdin>" if file.name in ("<stdin>", "-") else str(file.name)
    base = Path.cwd() if name == "<stdin>" else Path(name).resolve().parent
    wanted = declarative.load_file(file.read(), name, base)
    now = cli.clock.now()
    current = declarative.read_state(cli.db, now)
    steps = declarative.make_plan(wanted, current, prune=prune, filename=name)
    if dry_run or not steps:
        cli.emit(_view(steps, applied=False), lambda: _print_plan(steps, dry_run=dry_run))
        return
    deletions = sum(1 for s in steps if s.action == "delete")
    if deletions and not yes:
        if not sys.stdin.isatty() or name == "<stdin>":
            raise InvalidInput(
                f"--prune would delete {deletions} object(s); check with --dry-run, then give --yes"
            )
        _print_plan(steps, dry_run=True)
        click.confirm(f"Delete {deletions} object(s)?", abort=True)
    secrets_file = None
    if declarative.creates_secrets(steps):
        if secrets_out is None and not show_secrets:
            raise InvalidInput(
                "the plan makes new SMTP passwords or webhook secrets; give --secrets-out "
                "FILE to keep them (or --show-secrets to print them)"
            )
        if secrets_out is not None:
            secrets_file = _open_secrets_file(secrets_out)
    services = declarative.Services(
        cli.config.quota,
        lambda: cli.keys,
        cli.keys if Path(cli.config.database.kek_file).exists() else None,
        DnsLookup(cli.config.dns),
    )

    def write_secrets(found: declarative.Secrets) -> None:
        if secrets_file is not None:
            secrets_file.write(yaml.safe_dump(found.document(), sort_keys=False))
            secrets_file.flush()
            os.fsync(secrets_file.fileno())

    try:
        found = declarative.execute(cli.db, now, steps, services, write_secrets)
    except BaseException:
        if secrets_file is not None and secrets_out is not None:
            secrets_file.close()
            secrets_out.unlink(missing_ok=True)
        raise
    if secrets_file is not None:
        secrets_file.close()
    update_login_file(cli)
    _forget_live_state(cli, found.deleted_account_ids)
    data = _view(steps, applied=True)
    if secrets_out is not None:
        data["secrets_file"] = str(secrets_out)
    if show_secrets:
        data["secrets"] = found.document()

    def human() -> None:
        _print_plan(steps, dry_run=False)
        if secrets_out is not None and found:
            click.echo(f"New passwords and webhook secrets: {secrets_out} (mode 0600).")
        if show_secrets and found:
            click.echo(yaml.safe_dump(found.document(), sort_keys=False).rstrip())

    cli.emit(data, human)


def _open_secrets_file(path: Path) -> IO[str]:
    """Created now, before anything is written, so an existing file is refused first."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRETS_MODE)
    except FileExistsError:
        raise Conflict(
            f"{path} exists already; give a new file for the secrets (they are never overwritten)"
        ) from None
    except OSError as exc:
        raise InvalidInput(f"cannot create {path}: {exc.strerror}") from None
    return os.fdopen(fd, "w", encoding="utf-8")


def _forget_live_state(cli: CliContext, account_ids: list[int]) -> None:
    """As 'account delete' does: the deleted accounts' balance and overage keys go."""
    if not account_ids:
        return
    names = []
    for account_id in account_ids:
        keys = AccountKeys(cli.config.redis.key_prefix, account_id)
        names += [keys.balance, keys.overage]
    try:
        cli.redis.delete(*names)
    except redis.RedisError as exc:
        click.echo(
            f"note: Redis did not answer ({exc}); delete {' '.join(names)} once it is back "
            "to free their memory",
            err=True,
        )


def _view(steps: list[Step], *, applied: bool) -> dict[str, Any]:
    return {
        "applied": applied and bool(steps),
        "changes": [step.view() for step in steps],
        "summary": _counts(steps),
    }


def _counts(steps: list[Step]) -> dict[str, int]:
    return {
        action: sum(1 for s in steps if s.action == action)
        for action in ("create", "change", "delete")
    }


def _print_plan(steps: list[Step], *, dry_run: bool) -> None:
    if not steps:
        click.echo("No changes: the relay holds what the file describes.")
        return
    for step in steps:
        for line in describe(step):
            click.echo(line)
    counts = _counts(steps)
    verb = "Would" if dry_run else "Done:"
    click.echo(
        f"{verb} create {counts['create']}, change {counts['change']}, delete {counts['delete']}."
        if dry_run
        else f"{verb} {counts['create']} created, {counts['change']} changed, "
        f"{counts['delete']} deleted."
    )


@click.command("export")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Write to FILE instead of standard output.",
)
@json_option
@pass_cli
def export(cli: CliContext, output: Path | None) -> None:
    """Write the relay's accounts, domains, connections, webhooks and manual suppressions
    as an apply file, without any secret: 'txrelay export | txrelay apply -f - --dry-run'
    shows no change. With --json the same document as JSON (which apply reads too).

    \b
    Examples:
      txrelay export -o relay.yaml
      txrelay export | txrelay apply -f - --dry-run
    """
    state = declarative.read_state(cli.db, cli.clock.now())
    if cli.as_json:
        text = json.dumps(document(state), indent=2, ensure_ascii=False) + "\n"
    else:
        text = declarative.export_document(state)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"Wrote {output}.", err=True)
