"""`txrelay dovecot`: (re)write the configuration of txrelay's auth-only Dovecot."""

from __future__ import annotations

from pathlib import Path

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.errors import ConfigError
from txrelay.provisioning.dovecot import write_dovecot_config
from txrelay.store.passdb_file import sync_passdb_file


@click.group("dovecot")
def dovecot() -> None:
    """txrelay's auth-only Dovecot, which checks SMTP logins for Postfix.

    \b
    Example:
      txrelay dovecot configure     # after an upgrade or a [dovecot] change
    """


@dovecot.command("configure")
@json_option
@pass_cli
def configure(cli: CliContext) -> None:
    """Write Dovecot's configuration from txrelay.toml and bring this node's SMTP login
    file up to date, without touching txrelay.toml (what `txrelay init` also does).

    Run it after upgrading txrelay or changing a [dovecot] setting, then reload Dovecot.

    \b
    Example:
      txrelay dovecot configure
      doveadm -c /etc/txrelay/dovecot/dovecot.conf reload
    """
    try:
        conf_path, passdb_path = write_dovecot_config(cli.config)
    except OSError as exc:
        raise ConfigError(
            f"cannot write Dovecot's configuration in "
            f"{cli.config.dovecot.config_dir} ({exc.strerror}); run this as "
            "root, or fix [dovecot] config_dir"
        ) from exc
    changed = sync_passdb_file(cli.db, Path(passdb_path))
    reload = f"doveadm -c {conf_path} reload"
    cli.emit(
        {
            "config": str(conf_path),
            "login_file": str(passdb_path),
            "login_file_changed": changed,
            "reload": reload,
        },
        lambda: click.echo(
            f"Dovecot configuration: {conf_path}\n"
            f"SMTP login file:       {passdb_path} "
            f"({'updated' if changed else 'already up to date'})\n"
            f"Reload a running Dovecot: {reload}\n"
            f"(not running yet: dovecot -c {conf_path})"
        ),
    )
