"""Loads, validates and freezes txrelay's configuration (TOML file + TXRELAY_* environment)."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from txrelay.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/txrelay/txrelay.toml")
ENV_PREFIX = "TXRELAY_"
# TXRELAY_* variables that are not settings: the file itself, and the tests' fixed clock.
# Variables of the same prefix that are not settings: the config file's path, the scripts'
# venv, and everything the test suite reads (TXRELAY_TEST_*).
NOT_SETTINGS = {"TXRELAY_CONFIG", "TXRELAY_VENV"}
NOT_SETTINGS_PREFIX = "TXRELAY_TEST_"


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "postgresql://postgres@127.0.0.1:5432/txrelay"
    pool_min: int = 1
    pool_max: int = 10
    timeout_ms: int = 3000


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    timeout_ms: int = 500
    key_prefix: str = "txrelay"
    # standalone: url names the server. sentinel: the sentinels name the master, url gives
    # its user, password, database and TLS. cluster: cluster_nodes are the seed nodes.
    mode: str = "standalone"
    sentinels: str = ""  # "host:port,host:port"
    sentinel_master: str = ""
    sentinel_password: str = ""
    cluster_nodes: str = ""  # "host:port,host:port"

    def addresses(self, key: str) -> list[tuple[str, int]]:
        """sentinels or cluster_nodes as (host, port) pairs (validated at load)."""
        text: str = getattr(self, key)
        return [(host, int(port)) for host, _, port in
                (item.strip().rpartition(":") for item in text.split(",") if item.strip())]


@dataclass(frozen=True)
class MilterConfig:
    socket: str = "unix:/run/txrelay/milter.sock"
    socket_group: str = "postfix"
    max_message_size: int = 30 * 1024 * 1024
    policy_refresh_seconds: float = 2.0
    reservation_ttl_seconds: int = 900
    log_level: str = "info"
    node_name: str = ""
    journal_dir: str = "/var/lib/txrelay/journal"
    journal_max_per_hour: int = 5000
    refusal_budget_per_hour: int = 50
    original_recipient: bool = True


@dataclass(frozen=True)
class SmtpConfig:
    host: str = "localhost"
    port: int = 587
    # txrelay's own service's certificate (an -o override on its master.cf service); empty:
    # the service uses main.cf's smtpd_tls_* certificate like every other smtpd.
    tls_cert_file: str = ""
    tls_key_file: str = ""


@dataclass(frozen=True)
class DovecotConfig:
    config_dir: str = "/etc/txrelay/dovecot"
    base_dir: str = "/run/txrelay/dovecot"
    auth_socket: str = "/var/spool/postfix/private/txrelay-auth"
    log_path: str = "/var/log/txrelay/dovecot.log"
    # The enabled connections' logins, Dovecot's passdb; the CLI and every milter
    # keep it current, so logins need no PostgreSQL (docs/failure-modes.md).
    passdb_file: str = "/var/lib/txrelay-auth/passwd"


@dataclass(frozen=True)
class QuotaConfig:
    demo_quota: int = 1000
    min_block: int = 25000
    block_validity_days: int = 30
    overage_price_eur: Decimal = Decimal("0.00095")
    demo_rate_limit: int = 25


@dataclass(frozen=True)
class TrackerConfig:
    # Where Postfix's log is (txrelay/tracker/sources.py): "auto" finds it; a log_path set
    # means that file.
    source: str = "auto"
    log_path: str = ""
    journal_identifier: str = ""  # "": Postfix's syslog_name (postconf), else "postfix"
    postfix_config_directory: str = ""  # "": postconf's default (/etc/postfix)
    poll_interval_seconds: float = 0.5
    confirm_timeout_seconds: int = 600
    tick_interval_seconds: float = 60.0
    active_window_days: int = 30


@dataclass(frozen=True)
class NotifyConfig:
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    from_address: str = "txrelay@localhost"


@dataclass(frozen=True)
class MetricsConfig:
    milter_listen: str = "127.0.0.1:9151"
    tracker_listen: str = "127.0.0.1:9152"


@dataclass(frozen=True)
class DnsConfig:
    # "" = the system's resolvers (/etc/resolv.conf); else "IP[:PORT]" entries separated by
    # commas ("[IPv6]:PORT" with a port). Every DNS lookup of txrelay goes there.
    resolver: str = ""
    # What a sending domain's SPF record must authorise: an include: the relay admin publishes
    # and/or the relay's outgoing addresses ("192.0.2.10, 2001:db8::10, 198.51.100.0/28").
    spf_include: str = ""
    relay_addresses: str = ""
    # rua= of the starting DMARC record `domain dns` prints ("" = none); {domain} = the domain.
    dmarc_rua: str = "mailto:dmarc-reports@{domain}"

    def resolver_addresses(self) -> list[tuple[str, int]]:
        """resolver as (IP, port) pairs (validated at load); [] = the system's resolvers."""
        return [_resolver_address(item) for item in _items(self.resolver)]

    def relay_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """relay_addresses as networks (a single address is a /32 or /128)."""
        return [ipaddress.ip_network(item, strict=False) for item in _items(self.relay_addresses)]


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _resolver_address(item: str) -> tuple[str, int]:
    """"192.0.2.53", "192.0.2.53:5353", "2001:db8::53" or "[2001:db8::53]:5353"; ValueError."""
    if item.startswith("["):
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":") or "53"
    elif item.count(":") == 1:
        host, _, port = item.partition(":")
    else:
        host, port = item, "53"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {item!r}")
    return str(ipaddress.ip_address(host)), int(port)


@dataclass(frozen=True)
class LimitsConfig:
    """Limits on txrelay's own service: Postfix's per-client counters (anvil, per minute;
    0 turns one off) and the milter's per-message and per-session caps."""

    client_message_rate_limit: int = 6000
    client_connection_rate_limit: int = 600
    # Counts every AUTH command, successful or not: at most this many logins per client
    # and minute, so at most this many failures.
    client_auth_rate_limit: int = 10
    max_headers: int = 1000
    max_messages_per_session: int = 1000


@dataclass(frozen=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    milter: MilterConfig = field(default_factory=MilterConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    dovecot: DovecotConfig = field(default_factory=DovecotConfig)
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    source: str = "(defaults)"


SECTIONS: dict[str, type] = {
    "database": DatabaseConfig,
    "redis": RedisConfig,
    "milter": MilterConfig,
    "smtp": SmtpConfig,
    "dovecot": DovecotConfig,
    "quota": QuotaConfig,
    "tracker": TrackerConfig,
    "notify": NotifyConfig,
    "metrics": MetricsConfig,
    "dns": DnsConfig,
    "limits": LimitsConfig,
}

_POSITIVE = {
    "database.pool_min", "database.pool_max", "database.timeout_ms", "redis.timeout_ms",
    "milter.max_message_size", "milter.reservation_ttl_seconds",
    "milter.journal_max_per_hour", "smtp.port",
    "quota.demo_quota", "quota.min_block", "quota.block_validity_days",
    "tracker.poll_interval_seconds", "tracker.confirm_timeout_seconds",
    "tracker.tick_interval_seconds", "tracker.active_window_days", "notify.smtp_port",
    "limits.max_headers", "limits.max_messages_per_session",
}
_NON_NEGATIVE = {"quota.demo_rate_limit", "milter.policy_refresh_seconds",
                 "limits.client_message_rate_limit", "limits.client_connection_rate_limit",
                 "limits.client_auth_rate_limit"}
_LOG_LEVELS = {"debug", "info", "warning", "error"}
_REDIS_MODES = ("standalone", "sentinel", "cluster")
_TRACKER_SOURCES = ("auto", "file", "journal")
_HOST_NAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                        r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?")
_DMARC_URI = re.compile(r"mailto:[^\s;,!@]+@(\{domain\}|[A-Za-z0-9.-]+)(![0-9]+[kmgt]?)?")


def config_path(explicit: str | None) -> Path:
    """The file to read: --config, else $TXRELAY_CONFIG, else the system default."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(ENV_PREFIX + "CONFIG")
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


def load_config(path: Path | None = None, *, required: bool = False,
                environ: typing.Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if present), apply environment overrides, validate, freeze."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = "(defaults)"
    if path is not None and path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file or run "
                              "'txrelay init' to write a fresh one") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
        source = str(path)
    elif path is not None and required:
        raise ConfigError(f"{path}: no such configuration file; run 'txrelay init' or pass "
                          "--config")
    _apply_environment(raw, environ)
    return _build(raw, source)


def _apply_environment(raw: dict[str, Any], environ: typing.Mapping[str, str]) -> None:
    """TXRELAY_<SECTION>_<KEY>=value overrides one key; TXRELAY_CONFIG is the file itself."""
    for name, value in environ.items():
        if (not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS
                or name.startswith(NOT_SETTINGS_PREFIX)):
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section not in SECTIONS or not key:
            raise ConfigError(f"environment variable {name}: unknown setting; expected "
                              f"{ENV_PREFIX}<SECTION>_<KEY> with a section of "
                              f"{', '.join(SECTIONS)}")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"[{section}] must be a table")
        raw[section][key] = value


def _build(raw: dict[str, Any], source: str) -> Config:
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{name}]; known sections: "
                              f"{', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{name}' must be a table ([{name}])")
        sections[name] = _build_section(name, SECTIONS[name], value, source)
    config = Config(**sections, source=source)
    _check_redis_topology(config.redis, source)
    return config


def _build_section(section: str, cls: type, values: dict[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        qualified = f"{section}.{key}"
        if key not in known:
            raise ConfigError(f"{source}: unknown key '{qualified}'; see "
                              "docs/configuration.md for the keys of "
                              f"[{section}]: {', '.join(sorted(known))}")
        kwargs[key] = _coerce(qualified, hints[key], value, source)
    return cls(**kwargs)


def _coerce(qualified: str, kind: Any, value: Any, source: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: '{qualified}' = {value!r} is not {expected}")

    if kind is bool:
        if isinstance(value, bool):
            result: Any = value
        elif isinstance(value, str) and value.lower() in {"true", "yes", "1", "false", "no", "0"}:
            result = value.lower() in {"true", "yes", "1"}
        else:
            raise bad("true or false")
    elif kind is int:
        if isinstance(value, bool):
            raise bad("a whole number")
        try:
            result = int(value)
        except (TypeError, ValueError):
            raise bad("a whole number") from None
    elif kind is float:
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    elif kind is Decimal:
        try:
            result = Decimal(str(value))
        except InvalidOperation:
            raise bad("a decimal amount such as \"0.00095\"") from None
        if result < 0:
            raise bad("a non-negative amount")
    else:
        if not isinstance(value, str):
            raise bad("a string")
        result = value
    if qualified in _POSITIVE and result <= 0:
        raise bad("greater than zero")
    if qualified in _NON_NEGATIVE and result < 0:
        raise bad("zero or more")
    if qualified == "milter.log_level" and result not in _LOG_LEVELS:
        raise bad(f"one of {', '.join(sorted(_LOG_LEVELS))}")
    if qualified == "tracker.source" and result not in _TRACKER_SOURCES:
        raise bad(f"one of {', '.join(_TRACKER_SOURCES)}")
    if qualified == "tracker.journal_identifier" and any(c.isspace() for c in result):
        raise bad("a syslog_name such as postfix or postfix-txrelay (no spaces)")
    if qualified == "milter.socket" and not result.startswith(("unix:", "inet:", "inet6:")):
        raise bad("a milter socket such as unix:/run/txrelay/milter.sock or inet:9900@127.0.0.1")
    if qualified.startswith("metrics.") and result and not _is_host_port(result):
        raise bad("HOST:PORT such as 127.0.0.1:9151, or \"\" to turn it off")
    if qualified == "database.url" and not result.startswith(("postgresql://", "postgres://")):
        raise bad("a postgresql:// URL")
    if qualified == "redis.url" and not result.startswith(("redis://", "rediss://", "unix://")):
        raise bad("a redis:// URL")
    if qualified.startswith("dns."):
        _check_dns_setting(qualified, result, bad)
    return result


def _check_dns_setting(qualified: str, value: str, bad: Callable[[str], ConfigError]) -> None:
    """The [dns] values a lookup or a printed record would otherwise trip over later."""
    try:
        if qualified == "dns.resolver":
            DnsConfig(resolver=value).resolver_addresses()
        elif qualified == "dns.relay_addresses":
            DnsConfig(relay_addresses=value).relay_networks()
    except ValueError:
        if qualified == "dns.resolver":
            raise bad("resolver addresses such as \"127.0.0.1:5353\" or "
                      "\"192.0.2.53, [2001:db8::53]:53\", or \"\" for the system's") from None
        raise bad("IP addresses or networks such as \"192.0.2.10, 2001:db8::10, "
                  "198.51.100.0/28\"") from None
    if qualified == "dns.spf_include" and value and not _HOST_NAME.fullmatch(value):
        raise bad("a host name such as _spf.relay.example")
    if qualified == "dns.dmarc_rua" and value and not all(
            _DMARC_URI.fullmatch(uri.strip()) for uri in value.split(",")):
        raise bad("mailto: addresses separated by commas, such as "
                  "\"mailto:dmarc-reports@{domain}\" ({domain}: the sending domain)")


def _check_redis_topology(redis: RedisConfig, source: str) -> None:
    """The [redis] keys a mode needs are there, and none of another mode is left over."""
    needed = {"standalone": (), "sentinel": ("sentinels", "sentinel_master"),
              "cluster": ("cluster_nodes",)}
    if redis.mode not in needed:
        raise ConfigError(f"{source}: 'redis.mode' = {redis.mode!r} is not one of "
                          f"{', '.join(_REDIS_MODES)}")
    for key in ("sentinels", "sentinel_master", "cluster_nodes"):
        value = getattr(redis, key)
        if key in needed[redis.mode] and not value:
            raise ConfigError(f"{source}: redis.mode = \"{redis.mode}\" needs 'redis.{key}'; "
                              "see docs/configuration.md")
        if key not in needed[redis.mode] and value:
            raise ConfigError(f"{source}: 'redis.{key}' is set but redis.mode is "
                              f"\"{redis.mode}\"; set the mode it belongs to or remove it")
    for key in ("sentinels", "cluster_nodes"):
        for item in getattr(redis, key).split(","):
            if getattr(redis, key) and not _is_host_port(item.strip()):
                raise ConfigError(f"{source}: 'redis.{key}' has {item.strip()!r}; give "
                                  "HOST:PORT entries separated by commas, such as "
                                  "\"10.0.0.1:26379,10.0.0.2:26379\"")
    if redis.mode == "cluster" and urlsplit(redis.url).path.strip("/") not in {"", "0"}:
        raise ConfigError(f"{source}: 'redis.url' selects a database other than 0; Redis "
                          "Cluster has only database 0")


def _is_host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def render_toml(config: Config) -> str:
    """The configuration as a TOML document (used by 'txrelay init')."""
    lines: list[str] = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for f in dataclasses.fields(getattr(config, section)):
            value = getattr(getattr(config, section), f.name)
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Decimal):
        return f'"{value}"'
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
