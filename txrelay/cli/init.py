"""`txrelay init`: first-time set-up of a relay node (config file, schema, Dovecot auth)."""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

from txrelay.atomic_file import write_atomically
from txrelay.bounce_dkim import read_bounce_dkim_key, write_bounce_dkim_key
from txrelay.bounce_secret import read_bounce_secret, write_bounce_secret
from txrelay.cli.context import CliContext, pass_cli
from txrelay.config import (
    DEFAULT_CONFIG_PATH,
    SECTIONS,
    Config,
    load_config,
    render_toml,
)
from txrelay.config import config_path as configured_path
from txrelay.errors import ConfigError, Conflict, InvalidInput
from txrelay.kek import generate_kek, read_kek_file, write_kek_file
from txrelay.provisioning import database_setup, tls
from txrelay.provisioning.integrity import transaction
from txrelay.store import database

CONFIG_MODE = 0o640  # readable by the txrelay group (the milter), never by everyone
CONFIG_DIR_MODE = 0o750


@click.command()
@click.option(
    "--config-path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Where to write the configuration (default: --config, "
    "$TXRELAY_CONFIG or /etc/txrelay/txrelay.toml).",
)
@click.option(
    "--database-url",
    metavar="URL",
    help="Use this database, made by your DBA, "
    "e.g. postgresql://txrelay:PASSWORD@db.example/txrelay (default: init creates "
    "the role and database, see --admin-url).",
)
@click.option(
    "--admin-url",
    metavar="URL",
    help="PostgreSQL URL of a role that may create "
    "roles and databases, used once to create role and database txrelay (default: "
    "the local superuser postgres through the unix socket, which works as root on "
    "Debian). Without the rights, init prints the SQL for your DBA.",
)
@click.option(
    "--database-name",
    default="txrelay",
    show_default=True,
    metavar="NAME",
    help="Name of the database and of its role that init creates.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PEM",
    help="Certificate (chain) of txrelay's SMTP service, e.g. "
    "/etc/letsencrypt/live/relay.example.com/fullchain.pem (default: a "
    "self-signed one made in the configuration's folder, tls/).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PEM",
    help="Its private key, e.g. .../privkey.pem.",
)
@click.option("--redis-url", metavar="URL", help="Redis URL, e.g. redis://127.0.0.1:6379/0.")
@click.option("--smtp-host", metavar="H", help="The host name shops connect to.")
@click.option(
    "--smtp-port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="The port of txrelay's SMTP service (default 587; next to a Postfix whose "
    "submission service has 587, e.g. 2587).",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Any other setting, e.g. --set dovecot.config_dir=/etc/txrelay/dovecot "
    "(repeatable; see docs/configuration.md).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing configuration file.")
@pass_cli
def init(
    cli: CliContext,
    config_path: Path | None,
    database_url: str | None,
    admin_url: str | None,
    database_name: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    redis_url: str | None,
    smtp_host: str | None,
    smtp_port: int | None,
    settings: tuple[str, ...],
    force: bool,
) -> None:
    """Set up this node: create the database, its own role and the daemons' role (neither a
    superuser), migrate it, make the key-encryption key that seals DKIM private keys, check
    the TLS certificate or make a self-signed one, write the configuration and Dovecot's auth
    configuration, and print the next steps.

    The roles' generated passwords are written only into the configuration file (mode 0640);
    the key-encryption key goes next to it (kek, mode 0640): back both up. So does the
    bounce secret (bounce.key, mode 0640) that authenticates return paths: copy it to every
    relay node.
    Running it again with --force keeps the role, its password and the database. Nothing is
    written when the options are invalid, the certificate does not fit its key, or the
    database cannot be made or reached.

    \b
    Examples:
      txrelay init --smtp-host relay.example.com
      txrelay init --smtp-host relay.example.com \\
          --tls-cert /etc/letsencrypt/live/relay.example.com/fullchain.pem \\
          --tls-key /etc/letsencrypt/live/relay.example.com/privkey.pem
      txrelay init --database-url postgresql://txrelay:PASSWORD@db.example/txrelay \\
          --redis-url redis://127.0.0.1:6379/0 --smtp-host relay.example.com
    """
    target = config_path or configured_path(cli.config_file)
    if target.exists() and not force:
        raise Conflict(
            f"{target} exists already; pass --force to overwrite it, or use "
            "'txrelay db migrate' to only update the database"
        )
    values: dict[str, dict[str, str]] = {name: {} for name in SECTIONS}
    port = None if smtp_port is None else str(smtp_port)
    for section, key, value in (
        ("database", "url", database_url),
        ("redis", "url", redis_url),
        ("smtp", "host", smtp_host),
        ("smtp", "port", port),
    ):
        if value is not None:
            values[section][key] = value
    for setting in settings:
        section, key, value = _parse_setting(setting)
        values[section][key] = value
    values["database"].setdefault("url", database_url or "")
    tls_request = _tls_request(target, values["smtp"], tls_cert, tls_key)
    values["database"].setdefault("kek_file", str(target.absolute().parent / "kek"))
    values["bounce"].setdefault("secret_file", str(target.absolute().parent / "bounce.key"))
    values["bounce"].setdefault("dkim_key_file", str(target.absolute().parent / "bounce-dkim.pem"))
    dedicated = None
    own_milter_role = False
    if not values["database"]["url"]:
        dedicated = database_setup.plan(database_name, admin_url)
        values["database"]["url"] = dedicated.url("validated-before-use")
        own_milter_role = "milter_url" not in values["database"]
        values["database"].setdefault(
            "milter_url", dedicated.url("validated-before-use", dedicated.milter_role)
        )
    _validated(_overlay(render_toml(Config()).splitlines(), values))  # before any write
    certificate = tls_request() if tls_cert else None  # an existing pair: checked now
    if dedicated is not None:
        url, milter_url = database_setup.ensure_role_and_database(
            dedicated,
            _previous_password(target, dedicated),
            _previous_password(target, dedicated, dedicated.milter_role),
        )
        values["database"]["url"] = url
        if own_milter_role:
            values["database"]["milter_url"] = milter_url
    config = _validated(_overlay(render_toml(Config()).splitlines(), values))
    applied, granted = _migrate(config)
    kek_created = _ensure_kek(target, Path(config.database.kek_file))
    bounce_created = _ensure_bounce_secret(target, Path(config.bounce.secret_file))
    relay_key_created = _ensure_bounce_dkim_key(target, Path(config.bounce.dkim_key_file))
    certificate = certificate or tls_request()
    _write_config(target, render_toml(config))  # typed values, in the loader's own form
    dovecot_files = _write_dovecot(config)
    _print_summary(target, config, applied, dovecot_files)
    _print_database_and_tls(dedicated, certificate)
    _print_secrets(config, granted, kek_created, bounce_created, relay_key_created)
    _print_next_steps(target, config, dovecot_files)


def _tls_request(
    target: Path, smtp: dict[str, str], tls_cert: Path | None, tls_key: Path | None
) -> Callable[[], tls.Certificate]:
    """Puts the certificate's paths into the [smtp] values; returns what checks the given
    pair or makes the self-signed one (called once nothing else can fail before it)."""
    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput(
            "give both --tls-cert and --tls-key, or neither (then init makes "
            "a self-signed certificate)"
        )
    if tls_cert is not None and tls_key is not None:
        cert_file, key_file = tls_cert.absolute(), tls_key.absolute()
        smtp["tls_cert_file"], smtp["tls_key_file"] = str(cert_file), str(key_file)
        return lambda: tls.checked(cert_file, key_file)
    folder = target.absolute().parent / "tls"
    smtp["tls_cert_file"] = str(folder / tls.SELF_SIGNED_CERT)
    smtp["tls_key_file"] = str(folder / tls.SELF_SIGNED_KEY)
    host = smtp.get("host") or Config().smtp.host

    def make_self_signed() -> tls.Certificate:
        _make_config_directory(target)  # tls/ goes inside it: make it with its own mode first
        return tls.self_signed(folder, host)

    return make_self_signed


def _previous_password(
    target: Path, dedicated: database_setup.DatabasePlan, role: str | None = None
) -> str | None:
    """The role's password from the configuration being replaced (init --force): the
    owner's from url, or the daemons' (role) from milter_url."""
    if not target.exists():
        return None
    try:
        previous = load_config(target, required=True, environ={})
    except ConfigError:
        return None
    url = previous.database.url if role is None else previous.database.milter_url
    return database_setup.existing_password(url, dedicated, role)


def _parse_setting(setting: str) -> tuple[str, str, str]:
    name, sep, value = setting.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or section not in SECTIONS or not key.strip():
        raise ConfigError(
            f"--set {setting!r}: expected SECTION.KEY=VALUE with a section of {', '.join(SECTIONS)}"
        )
    return section, key.strip(), value.strip()


def _overlay(lines: list[str], values: dict[str, dict[str, str]]) -> str:
    """The rendered defaults with the given values put in (as strings: the loader coerces
    and validates every key exactly as at start-up); unknown keys are appended, so the
    loader names them."""
    out: list[str] = []
    section = ""
    pending = {name: dict(keys) for name, keys in values.items()}
    for line in [*lines, "[end]"]:
        if line.startswith("["):
            out.extend(
                f"{key} = {_toml_string(value)}" for key, value in pending.get(section, {}).items()
            )
            section = line.strip("[]")
            if section == "end":
                break
        else:
            key = line.partition("=")[0].strip()
            if key and key in pending.get(section, {}):
                line = f"{key} = {_toml_string(pending[section].pop(key))}"
        out.append(line)
    return "\n".join(out).rstrip() + "\n"


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _validated(text: str) -> Config:
    with tempfile.TemporaryDirectory(prefix="txrelay-init-") as folder:
        candidate = Path(folder) / "txrelay.toml"
        candidate.write_text(text, encoding="utf-8")
        try:
            return load_config(candidate, required=True, environ={})
        except ConfigError as exc:
            raise ConfigError(
                str(exc)
                .replace(f"{candidate}: ", "")
                .replace(str(candidate), "the new configuration")
            ) from exc


def _migrate(config: Config) -> tuple[list[database.Migration], str | None]:
    """The migrations applied, and the daemons' role granted its rights (or None)."""
    conn = database.connect(config.database)
    try:
        with transaction(conn):
            return database.migrate(conn), database.grant_daemon_role(conn, config.database)
    finally:
        conn.close()


def _ensure_kek(target: Path, path: Path) -> bool:
    """Make the key-encryption key unless there is one (a re-run keeps it: the keys in the
    database are sealed with it); True when made."""
    if path.exists():
        read_kek_file(path)  # one that cannot be read is an error now, not at the milter
        return False
    _make_config_directory(target)
    write_kek_file(path, generate_kek())
    return True


def _ensure_bounce_secret(target: Path, path: Path) -> bool:
    """Make the bounce secret unless there is one (bounces of mail already sent carry tokens
    made with it); True when made."""
    if path.exists():
        read_bounce_secret(path)  # one that cannot be read is an error now, not at the milter
        return False
    _make_config_directory(target)
    path.parent.mkdir(mode=CONFIG_DIR_MODE, parents=True, exist_ok=True)
    write_bounce_secret(path)
    return True


def _ensure_bounce_dkim_key(target: Path, path: Path) -> bool:
    """Make the relay's own DKIM key unless there is one (its public half may be published
    already); True when made."""
    if path.exists():
        read_bounce_dkim_key(path)  # one that cannot be read is an error now
        return False
    _make_config_directory(target)
    path.parent.mkdir(mode=CONFIG_DIR_MODE, parents=True, exist_ok=True)
    write_bounce_dkim_key(path)
    return True


def _print_relay_key(config: Config, created: bool) -> None:
    state = "Made" if created else "Kept"
    click.echo(
        f"CFBL: {state} the relay's DKIM key {config.bounce.dkim_key_file} (mode 0640); the "
        "complaint address of mail without a return path of its own aligns with its "
        "signature. Copy it to every relay node; 'txrelay bounce dns' prints its record."
    )


def _write_config(target: Path, text: str) -> None:
    """Atomically: a half-written config would stop every txrelay process on the node."""
    _make_config_directory(target)
    try:
        write_atomically(target, text, mode=CONFIG_MODE, sync_file=False)
    except OSError as exc:
        raise ConfigError(
            f"cannot write {target}: {exc.strerror}; run as a user that may, or pass --config-path"
        ) from exc


def _make_config_directory(target: Path) -> None:
    try:
        target.parent.mkdir(mode=CONFIG_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {target.parent}: {exc.strerror}; run as a user "
            "that may, or pass --config-path"
        ) from exc


def _write_dovecot(config: Config) -> list[Path] | None:
    try:
        from txrelay.provisioning.dovecot import write_dovecot_config
    except ImportError:
        return None  # a build without the Dovecot module; the summary says so
    try:
        return list(write_dovecot_config(config))
    except OSError as exc:
        raise ConfigError(
            f"the configuration is written, but not Dovecot's in "
            f"{config.dovecot.config_dir} ({exc.strerror}); fix that and run "
            "'txrelay init --force' again"
        ) from exc


def _print_summary(
    target: Path,
    config: Config,
    applied: list[database.Migration],
    dovecot_files: list[Path] | None,
) -> None:
    click.echo(f"Wrote {target} (mode {CONFIG_MODE:04o}).")
    if applied:
        names = ", ".join(f"{m.version:04d} {m.name}" for m in applied)
        click.echo(f"Database migrated: {names}.")
    else:
        click.echo("Database is up to date.")
    if dovecot_files is None:
        click.echo("Dovecot configuration NOT written: this build has no Dovecot module.")
    else:
        click.echo("Dovecot auth configuration: " + ", ".join(map(str, dovecot_files)))


def _print_database_and_tls(
    dedicated: database_setup.DatabasePlan | None, certificate: tls.Certificate
) -> None:
    if dedicated is not None:
        click.echo(
            f"Database {dedicated.name} owned by role {dedicated.name} (not a "
            f"superuser) on {dedicated.host}:{dedicated.port}; its password is only "
            "in the configuration file."
        )
    if certificate.self_signed:
        made = "Made a" if certificate.created else "Kept the"
        click.echo(
            f"TLS: {made} SELF-SIGNED certificate {certificate.cert_file} (key "
            f"{certificate.key_file}, mode 0600). Shops must accept it or pin it; "
            "use a real one with --tls-cert/--tls-key (e.g. Let's Encrypt)."
        )
    else:
        click.echo(
            f"TLS: certificate {certificate.cert_file}, key {certificate.key_file} "
            "(checked: they belong together)."
        )


def _print_secrets(
    config: Config,
    granted: str | None,
    kek_created: bool,
    bounce_created: bool,
    relay_key_created: bool,
) -> None:
    state = "Made" if kek_created else "Kept"
    click.echo(
        f"DKIM keys: {state} the key-encryption key {config.database.kek_file} (mode "
        "0640); every private key in the database is sealed with it. Back it up apart "
        "from database dumps: without it the keys cannot be read."
    )
    state = "Made" if bounce_created else "Kept"
    click.echo(
        f"Bounces: {state} the bounce secret {config.bounce.secret_file} (mode 0640); "
        "return paths and complaint ids are checked with it. Copy it to every relay node."
    )
    _print_relay_key(config, relay_key_created)
    if granted:
        click.echo(
            f"The milter and the tracker connect as role {granted} ([database] "
            "milter_url): it reads the policy and writes the ledger only."
        )
    elif not config.database.milter_url:
        click.echo(
            "The milter and the tracker connect with [database] url: set [database] "
            "milter_url to a role with fewer rights (docs/security.md)."
        )


def _print_next_steps(target: Path, config: Config, dovecot_files: list[Path] | None) -> None:
    cfg = "" if target == DEFAULT_CONFIG_PATH else f" --config {shlex.quote(str(target))}"
    main_conf = next((p for p in dovecot_files or [] if p.name == "dovecot.conf"), None)
    start = f"dovecot -c {main_conf}" if main_conf else "dovecot -c <the dovecot.conf above>"
    click.echo(
        "\nNext steps:\n"
        f"  1. Configure Postfix:              txrelay{cfg} postfix configure "
        "--dry-run, then without --dry-run\n"
        "  2. Reload Postfix:                 postfix reload\n"
        "  3. Start txrelay's services:       bash scripts/install-systemd.sh\n"
        f"     (without systemd: {start}; txrelay{cfg} milter; txrelay{cfg} tracker)\n"
        f'  4. Create an account:              txrelay{cfg} account create "Acme" '
        "--admin-email ops@acme.example\n"
        f'  5. Add a sending domain:           txrelay{cfg} domain add "Acme" '
        "acme.example --list-help https://acme.example/help\n"
        f'  6. Connect a sending system:       txrelay{cfg} connection create "Acme" '
        '"Web shop" --domain acme.example\n'
        f"  (smtp host in the access data: {config.smtp.host}:{config.smtp.port})"
    )
