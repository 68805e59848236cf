"""`txrelay db`: apply the schema migrations, show the schema version, prune old rows."""

from __future__ import annotations

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.policy.retention import retention_cutoff
from txrelay.provisioning.integrity import transaction, translated_errors
from txrelay.store import database, retention


@click.group()
def db() -> None:
    """The PostgreSQL schema: migrate it, see which version it is at, and delete ledger
    rows older than the retention.

    \b
    Example:
      txrelay db migrate
      txrelay db status
      txrelay db prune --dry-run
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


@db.command("prune")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@json_option
@pass_cli
def prune(cli: CliContext, dry_run: bool) -> None:
    """Delete the ledger's recipient rows and their messages accepted before the retention
    ([retention] ledger_months closed months before the open one; 13 by default). The open
    month and the previous one are never deleted, nor rows not billed yet. `stats` and
    `billing report` keep every month's figures (15-minute rollups); `messages search` and
    `messages show` no longer find the deleted mail. Safe to run again, e.g. monthly from
    cron after the invoices are made.

    \b
    Example:
      txrelay db prune --dry-run
      txrelay db prune --json
    """
    months = cli.config.retention.ledger_months
    cutoff = retention_cutoff(cli.clock.now(), months)
    conn = cli.db
    conn.rollback()  # no open transaction: each connection's rows are one transaction
    with translated_errors():
        pruned = retention.prune(conn, cutoff, dry_run=dry_run)
    data = {
        "dry_run": dry_run,
        "ledger_months": months,
        "cutoff": cutoff.isoformat(),
        "ledger_rows": pruned.ledger_rows,
        "messages": pruned.messages,
        "connections": pruned.connections,
    }

    def human() -> None:
        verb = "Would delete" if dry_run else "Deleted"
        click.echo(
            f"{verb} {pruned.ledger_rows} ledger rows and {pruned.messages} messages accepted "
            f"before {cutoff:%Y-%m-%d} (UTC; [retention] ledger_months = {months}); "
            "the rollups keep their figures."
        )

    cli.emit(data, human)


def _current_version(cli: CliContext) -> int:
    with transaction(cli.db):
        return max(database.applied_versions(cli.db), default=0)
