"""Writes the configuration of txrelay's own auth-only Dovecot (Postfix's SASL service)."""

from __future__ import annotations

import grp
import os
from importlib import resources
from pathlib import Path
from string import Template

from txrelay.atomic_file import write_atomically
from txrelay.config import Config
from txrelay.errors import ConfigError
from txrelay.store.passdb_file import HEADER, write_passdb_file

CONFIG_NAME = "dovecot.conf"
DOVECOT_GROUP = "dovecot"


OBSOLETE_SQL_CONF = "dovecot-sql.conf.ext"


def dovecot_config_path(config: Config) -> Path:
    """The file to start Dovecot with: dovecot -c <this>."""
    return Path(config.dovecot.config_dir) / CONFIG_NAME


def write_dovecot_config(config: Config) -> list[Path]:
    """Write dovecot.conf atomically, and make the SMTP login file it reads if there is none
    yet; returns both paths."""
    config_dir = Path(config.dovecot.config_dir)
    config_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    for directory in (
        Path(config.dovecot.log_path).parent,
        Path(config.dovecot.base_dir).parent,
        Path(config.dovecot.auth_socket).parent,
    ):
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    conf_path = dovecot_config_path(config)
    passdb_path = _prepare_passdb_file(config)
    conf_text = _render(
        CONFIG_NAME,
        config_file=str(conf_path),
        base_dir=config.dovecot.base_dir,
        log_path=config.dovecot.log_path,
        passdb_file=str(passdb_path),
        auth_socket=_listener_path(config),
    )
    write_atomically(conf_path, conf_text, mode=0o644)
    # Versions before the login file had Dovecot query PostgreSQL through this file, which
    # holds the database URL (and its password, if any): nothing reads it any more.
    (config_dir / OBSOLETE_SQL_CONF).unlink(missing_ok=True)
    return [conf_path, passdb_path]


def _prepare_passdb_file(config: Config) -> Path:
    """The passdb file's directory (group dovecot, set-group-ID, mode 2750, when this makes
    it; an existing one is left as the admin or tmpfiles.d set it), and an empty file in it
    if there is none yet, since Dovecot will not start without it. The CLI and the milters
    fill it."""
    path = Path(config.dovecot.passdb_file)
    if not path.is_absolute() or any(c.isspace() or c in '%"#' for c in str(path)):
        raise ConfigError(
            f"[dovecot] passdb_file = {str(path)!r}: give an absolute path "
            "without spaces, quotes, '#' or '%'"
        )
    if not path.parent.exists():
        try:
            path.parent.mkdir(mode=0o750, parents=True)
            os.chown(path.parent, -1, _dovecot_gid())
            path.parent.chmod(0o2750)
        except PermissionError:
            raise ConfigError(
                f"{path.parent}: cannot create it for group {DOVECOT_GROUP}; run this as root"
            ) from None
    if not path.exists():
        write_passdb_file(path, HEADER)
    return path


def _listener_path(config: Config) -> str:
    """Dovecot wants listeners inside base_dir named relative to it (it warns otherwise)."""
    socket = Path(config.dovecot.auth_socket)
    base = Path(config.dovecot.base_dir)
    return str(socket.relative_to(base)) if socket.is_relative_to(base) else str(socket)


def _render(name: str, **values: str) -> str:
    text = (resources.files("txrelay") / "templates" / name).read_text(encoding="utf-8")
    return Template(text).substitute(values)


def _dovecot_gid() -> int:
    try:
        return grp.getgrnam(DOVECOT_GROUP).gr_gid
    except KeyError:
        raise ConfigError(
            f"group '{DOVECOT_GROUP}' does not exist; install Dovecot "
            "(apt-get install dovecot-core)"
        ) from None
