"""Configuration files for the e2e stacks: the run's settings with their own sockets/ports.

Every stack gives its messages the relay's return path ([bounce] domain BOUNCE_DOMAIN, the
run's bounce secret), as a production relay with a bounce domain does: the sink sees MAIL
FROM b-TOKEN@BOUNCE_DOMAIN, and tests/harness/return_path.py finds the shop's sender."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from txrelay.config import Config, render_toml

BOUNCE_DOMAIN = "bounces.relay.test"


def stack_config(base: Config, directory: Path, *, submission_port: int,
                 database_url: str | None = None, redis_url: str | None = None,
                 max_message_size: int | None = None,
                 bounce_domain: str = BOUNCE_DOMAIN) -> Config:
    """`base` with the milter socket, Dovecot directories and logs under `directory`."""
    milter = dataclasses.replace(
        base.milter, socket=f"unix:{directory}/milter/milter.sock",
        journal_dir=str(directory / "journal"),
        max_message_size=max_message_size or base.milter.max_message_size)
    dovecot = dataclasses.replace(
        base.dovecot, config_dir=str(directory / "dovecot"),
        base_dir=str(directory / "dovecot-run"),
        auth_socket=str(directory / "dovecot-run" / "auth-postfix"),
        log_path=str(directory / "dovecot.log"),
        passdb_file=str(directory / "dovecot-passdb" / "passwd"))
    tracker = dataclasses.replace(base.tracker, log_path=str(directory / "postfix" / "maillog"))
    return dataclasses.replace(
        base, milter=milter, dovecot=dovecot, tracker=tracker,
        smtp=dataclasses.replace(base.smtp, host="127.0.0.1", port=submission_port),
        # A stack with a PostgreSQL of its own: its daemons use that one's URL (the run's
        # restricted role exists only in the run's database).
        database=dataclasses.replace(base.database, url=database_url or base.database.url,
                                     milter_url="" if database_url else base.database.milter_url),
        redis=dataclasses.replace(base.redis, url=redis_url or base.redis.url),
        bounce=dataclasses.replace(base.bounce, domain=bounce_domain))


def write_stack_config(base: Config, directory: Path, **changes: object) -> Path:
    """Write stack_config(...) as TOML in `directory`; returns the file."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    (directory / "milter").mkdir(mode=0o755, exist_ok=True)
    config = stack_config(base, directory, **changes)  # type: ignore[arg-type]
    path = directory / "txrelay.toml"
    path.write_text(render_toml(config))
    path.chmod(0o640)  # as txrelay init writes it: it holds the database passwords
    return path
