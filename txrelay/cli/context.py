"""The object every command receives: configuration, output mode, and lazy service handles."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg

from txrelay.clock import Clock, default_clock
from txrelay.config import Config, config_path, load_config
from txrelay.kek import KeyRing
from txrelay.store import database

F = TypeVar("F", bound=Callable[..., Any])


class CliContext:
    """Opens the configuration, the database and Redis only when a command asks for them."""

    def __init__(self, config_file: str | None, as_json: bool) -> None:
        self.config_file = config_file
        self.as_json = as_json
        self.clock: Clock = default_clock()
        self._config: Config | None = None
        self._db: psycopg.Connection | None = None
        self._redis: Any = None
        self._keys: KeyRing | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            path = config_path(self.config_file)
            explicit = self.config_file is not None
            self._config = load_config(path, required=explicit)
        return self._config

    @property
    def db(self) -> psycopg.Connection:
        """A connection in manual-commit mode: wrap each command's writes in one transaction."""
        if self._db is None:
            self._db = database.connect(self.config.database)
        return self._db

    @property
    def keys(self) -> KeyRing:
        """The key-encryption keys ([database] kek_file) that seal DKIM private keys."""
        if self._keys is None:
            self._keys = KeyRing.load(Path(self.config.database.kek_file))
        return self._keys

    @property
    def redis(self) -> Any:
        if self._redis is None:
            from txrelay.store.redis_client import open_redis

            self._redis = open_redis(self.config.redis)
        return self._redis

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def emit(self, data: Any, human: Callable[[], None]) -> None:
        """--json prints data as JSON; otherwise the human form is printed by `human`."""
        if self.as_json:
            click.echo(json.dumps(data, indent=2, default=str, sort_keys=True))
        else:
            human()


def pass_cli(func: F) -> F:
    """Hand the command its CliContext (rq's pass_cli_config, in spirit)."""

    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        return ctx.invoke(func, ctx.find_object(CliContext), *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def json_option(func: F) -> F:
    """--json on a reporting command (it may also be given before the command name)."""

    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.find_object(CliContext).as_json = True  # type: ignore[union-attr]
        return value

    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        callback=callback,
        help="Print machine-readable JSON.",
    )(func)
