"""Writes the configuration of txrelay's own auth-only Dovecot (Postfix's SASL service)."""

from __future__ import annotations

import grp
import os
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from string import Template

import psycopg
from psycopg.conninfo import conninfo_to_dict

from txrelay.config import Config
from txrelay.errors import ConfigError

CONFIG_NAME = "dovecot.conf"
# auth_cache_ttl in templates/dovecot.conf: how long another node may still use the
# credentials a CLI change replaced (this node's entry is flushed at once).
AUTH_CACHE_TTL_SECONDS = 60
_DOVEADM_TIMEOUT_SECONDS = 10
SQL_NAME = "dovecot-sql.conf.ext"
DOVECOT_GROUP = "dovecot"

# libpq parameters Dovecot's pgsql driver passes through; anything else in the URL is refused
# so that a typo never silently changes where the passwords come from.
_CONNINFO_KEYS = (
    "host", "hostaddr", "port", "dbname", "user", "password", "sslmode", "sslrootcert",
    "sslcert", "sslkey", "connect_timeout", "application_name", "target_session_attrs",
)


def dovecot_config_path(config: Config) -> Path:
    """The file to start Dovecot with: dovecot -c <this>."""
    return Path(config.dovecot.config_dir) / CONFIG_NAME


def write_dovecot_config(config: Config) -> list[Path]:
    """Write dovecot.conf and its SQL passdb file atomically; returns the paths written."""
    config_dir = Path(config.dovecot.config_dir)
    config_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    for directory in (Path(config.dovecot.log_path).parent,
                      Path(config.dovecot.base_dir).parent,
                      Path(config.dovecot.auth_socket).parent):
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    sql_path = config_dir / SQL_NAME
    conf_path = dovecot_config_path(config)
    sql_text = _render(SQL_NAME, connect=pgsql_connect_string(config.database.url))
    conf_text = _render(
        CONFIG_NAME,
        config_file=str(conf_path),
        base_dir=config.dovecot.base_dir,
        log_path=config.dovecot.log_path,
        sql_file=str(sql_path),
        auth_socket=_listener_path(config),
    )
    _write_atomically(sql_path, sql_text, mode=0o640, group=_dovecot_gid())
    _write_atomically(conf_path, conf_text, mode=0o644, group=None)
    return [conf_path, sql_path]


def flush_auth_cache(config: Config, username: str) -> str | None:
    """Drop the cached credentials of `username` in this machine's txrelay Dovecot, so that
    a disable, enable, rotation or deletion takes effect at its next login here (other relay
    nodes: within AUTH_CACHE_TTL_SECONDS). None when flushed, else why it could not be."""
    conf_path = dovecot_config_path(config)
    if not conf_path.exists():
        return f"no txrelay Dovecot is configured on this machine ({conf_path} is missing)"
    try:
        done = subprocess.run(["doveadm", "-c", str(conf_path), "auth", "cache", "flush",
                               username], capture_output=True, text=True, check=False,
                              timeout=_DOVEADM_TIMEOUT_SECONDS)
    except FileNotFoundError:
        return "doveadm is not installed"
    except subprocess.TimeoutExpired:
        return f"doveadm did not answer within {_DOVEADM_TIMEOUT_SECONDS} s"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return f"doveadm auth cache flush failed: {lines[-1] if lines else done.returncode}"
    return None


def pgsql_connect_string(url: str) -> str:
    """Dovecot's pgsql `connect =` value (a libpq conninfo) for a postgresql:// URL.

    Every value is single-quoted: Dovecot's settings reader treats an unquoted '#' as the
    start of a comment, and libpq reads 'quoted' values with \\' and \\\\ escapes.
    """
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise ConfigError(f"[database] url is not a valid PostgreSQL URL ({exc})") from exc
    unknown = sorted(set(params) - set(_CONNINFO_KEYS))
    if unknown:
        raise ConfigError(f"[database] url: parameter(s) {', '.join(unknown)} cannot be passed "
                          "to Dovecot's SQL passdb; remove them from the URL")
    parts = []
    for key in _CONNINFO_KEYS:
        value = params.get(key)
        if value is None or value == "":
            continue
        if "\n" in str(value) or "\r" in str(value):
            raise ConfigError(f"[database] url: {key} contains a line break")
        escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
        parts.append(f"{key}='{escaped}'")
    return " ".join(parts)


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
        raise ConfigError(f"group '{DOVECOT_GROUP}' does not exist; install dovecot-core and "
                          "dovecot-pgsql (apt-get install dovecot-core dovecot-pgsql)") from None


def _write_atomically(path: Path, text: str, *, mode: int, group: int | None) -> None:
    """Temp file in the same directory, owner/mode set before rename: never half-written,
    never briefly world-readable."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            if group is not None:
                try:
                    os.fchown(handle.fileno(), 0, group)
                except PermissionError:
                    raise ConfigError(f"{path}: cannot give it to root:{DOVECOT_GROUP}; run "
                                      "this as root") from None
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
