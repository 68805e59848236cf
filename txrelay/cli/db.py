"""`txrelay db`: apply the schema migrations and show the schema version."""

from __future__ import annotations

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.provisioning.integrity import transaction
from txrelay.store import database


@click.group()
def db() -> None:
    """The PostgreSQL schema: migrate it and see which version it is at.

    \b
    Example:
      txrelay db migrate
      txrelay db status
    """


@db.command("migrate")
@json_option
@pass_cli
def migrate(cli: CliContext) -> None:
    """Apply every migration not applied yet (safe to run again, and from several nodes),
    then grant the daemons' role ([database] milter_url) what it needs on every table.

    \b
    Example:
      txrelay db migrate
    """
    conn = cli.db
    with transaction(conn):
        applied = database.migrate(conn)
        granted = database.grant_daemon_role(conn, cli.config.database)
    version = _current_version(cli)
    data = {
        "applied": [{"version": m.version, "name": m.name} for m in applied],
        "version": version,
        "daemon_role": granted,
    }

    def human() -> None:
        if not applied:
            click.echo(f"Database is up to date (version {version}).")
        for migration in applied:
            click.echo(f"Applied migration {migration.version:04d} {migration.name}.")
        if granted:
            click.echo(
                f"Role {granted} ([database] milter_url) may read the policy and write the ledger."
            )

    cli.emit(data, human)


@db.command("status")
@json_option
@pass_cli
def status(cli: CliContext) -> None:
    """Show the schema version and the migrations still to apply.

    \b
    Example:
      txrelay db status --json
    """
    with transaction(cli.db):
        applied = set(database.applied_versions(cli.db))
    pending = [m for m in database.available_migrations() if m.version not in applied]
    version = max(applied, default=0)
    data = {
        "version": version,
        "applied": sorted(applied),
        "pending": [{"version": m.version, "name": m.name} for m in pending],
    }

    def human() -> None:
        click.echo(f"Schema version: {version}")
        if not pending:
            click.echo("No pending migrations.")
        for migration in pending:
            click.echo(
                f"Pending: {migration.version:04d} {migration.name} (run 'txrelay db migrate')"
            )

    cli.emit(data, human)


def _current_version(cli: CliContext) -> int:
    with transaction(cli.db):
        return max(database.applied_versions(cli.db), default=0)
