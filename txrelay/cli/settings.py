"""`txrelay config show`: the effective configuration and where each value came from."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click

from txrelay.cli.context import CliContext, json_option, pass_cli
from txrelay.config import SECTIONS, Config

REDACTED = "****"


@click.group("config")
def config_group() -> None:
    """The configuration this node runs with (txrelay.toml plus TXRELAY_* overrides).

    \b
    Example:
      txrelay config show
    """


@config_group.command("show")
@json_option
@pass_cli
def show(cli: CliContext) -> None:
    """Print every setting's effective value and its source: default, the file, or the
    environment variable that overrides it. Secrets (passwords in URLs, the sentinels'
    password) are shown as ****.

    \b
    Example:
      txrelay config show
      txrelay config show --json | jq '.settings["database.url"]'
    """
    config = cli.config
    rows = effective_settings(config)
    data = {
        "file": config.source,
        "settings": {name: {"value": value, "source": source} for name, value, source in rows},
    }

    def human() -> None:
        click.echo(f"# {config.source}")
        width = max(len(name) for name, _, _ in rows)
        for name, value, source in rows:
            click.echo(f"{name.ljust(width)} = {_shown(value)}    # {source}")

    cli.emit(data, human)


def effective_settings(config: Config) -> list[tuple[str, Any, str]]:
    """(section.key, value with secrets redacted, source) for every setting, in file order."""
    rows = []
    for section in SECTIONS:
        values = getattr(config, section)
        for declared in dataclasses.fields(values):
            qualified = f"{section}.{declared.name}"
            value = getattr(values, declared.name)
            if declared.metadata.get("secret"):
                value = redact(value)
            rows.append((qualified, value, config.origin(qualified)))
    return rows


def redact(value: Any) -> Any:
    """A URL keeps everything but its password; any other secret is **** when set."""
    if not isinstance(value, str) or not value:
        return value
    if "://" not in value:
        return REDACTED
    parts = urlsplit(value)
    if parts.password is None:
        return value
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
