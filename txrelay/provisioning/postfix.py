"""What txrelay needs from Postfix: its own master.cf services, and reading a Postfix's setup.

txrelay is a guest in an existing Postfix: every setting it needs is an -o override on a
master.cf service of its own (docs: postfix-conf/README.md). With a bounce domain ([bounce]
domain) main.cf gets one change: txrelay's own lookup table appended to relay_domains and
transport_maps, so that mail for the bounce domain reaches txrelay's pipe service.
Every postconf call carries -c DIR, so the main instance, a postmulti instance and any
config directory are handled alike.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from txrelay.config import Config
from txrelay.errors import ConfigError, InvalidInput
from txrelay.provisioning.postfix_listen import ListenAddress, parse_listen

SMTPD_COMMAND = ("inet", "n", "-", "n", "-", "-", "smtpd")
CLEANUP_SERVICE = "txrelay-cleanup"
CLEANUP_COMMAND = ("unix", "n", "-", "n", "-", "0", "cleanup")
# Envelope records (sender, recipients, timestamps) count against message_size_limit too.
ENVELOPE_SLACK_BYTES = 1024 * 1024
MILTER_MAIL_MACROS = (
    "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}"
)
# Appended to the instance's syslog_name: postfix/txrelay/smtpd[...] in the log, inside the
# instance's own name space (what the tracker and fail2ban's stock filter read).
STARTTLS_SYSLOG_SUFFIX = "txrelay"
IMPLICIT_TLS_SYSLOG_SUFFIX = "txrelay_tls"
POSTCONF_TIMEOUT = 30
# Postfix hands header values to milters as NUL-terminated strings: a NUL would hide the
# rest of a header from the milter (and its signature) while Postfix queues all of it.
REJECT_CHARACTERS = "\\0"
# What `postfix check` accepts as smtpd_client_auth_rate_limit (AUTH commands a minute).
MAX_AUTH_RATE = 120
# Mail for the bounce domain(s): txrelay's pipe service, and the table (one domain a line,
# texthash: so no postmap is needed) that main.cf's relay_domains and transport_maps name.
INBOUND_SERVICE = "txrelay-inbound"
INBOUND_COMMAND = ("unix", "-", "n", "n", "-", "10", "pipe")
INBOUND_TABLE_FILE = "txrelay-inbound-domains"
INBOUND_TABLE = f"texthash:${{config_directory}}/{INBOUND_TABLE_FILE}"
INBOUND_LISTS = ("relay_domains", "transport_maps")
DEFAULT_INBOUND_USER = "txrelay"


@dataclass(frozen=True)
class InboundPlan:
    """The pipe service that hands mail for the bounce domains to `txrelay inbound deliver`,
    and the domains its table lists."""

    domains: tuple[str, ...]
    executable: str
    config_file: str
    user: str

    @property
    def key(self) -> str:
        return f"{INBOUND_SERVICE}/unix"

    def entry(self) -> str:
        """${recipient} is one argument per recipient: pipe may hand several at once."""
        argv = (
            f"argv={self.executable} --config {self.config_file} inbound deliver "
            "--sender ${sender} -- ${recipient}"
        )
        return " ".join((INBOUND_SERVICE, *INBOUND_COMMAND, "flags=Rq", f"user={self.user}", argv))

    def table(self) -> str:
        """The texthash table: each bounce domain routed to txrelay's pipe service."""
        lines = [
            "# Written by `txrelay postfix configure`: the bounce domains, whose mail goes to",
            "# txrelay's pipe service. Run configure again when they change, then reload.",
            *(f"{domain}\t{INBOUND_SERVICE}:" for domain in self.domains),
        ]
        return "\n".join(lines) + "\n"


def inbound_domains(config: Config, return_paths: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The domains whose mail comes back to txrelay: [bounce] domain, then the sending
    domains' own return-path domains (`domain set --return-path`), each once."""
    wanted = ([config.bounce.domain] if config.bounce.domain else []) + list(return_paths)
    return tuple(dict.fromkeys(domain.lower() for domain in wanted))


@dataclass(frozen=True)
class PostfixTarget:
    """Which Postfix to change: its config directory, and how the admin named it."""

    config_directory: Path
    label: str


@dataclass(frozen=True)
class ServicePlan:
    """One master.cf inet service of txrelay's: where it listens and its -o overrides."""

    listen: ListenAddress
    implicit_tls: bool
    overrides: tuple[tuple[str, str], ...]

    @property
    def key(self) -> str:
        return f"{self.listen.service}/inet"

    @property
    def option(self) -> str:
        return "--implicit-tls" if self.implicit_tls else "--listen"

    def entry(self, extra: tuple[tuple[str, str], ...] = ()) -> str:
        """The whole master.cf entry, as postconf -M takes it."""
        return master_entry(self.listen.service, SMTPD_COMMAND, (*self.overrides, *extra))


@dataclass(frozen=True)
class PostfixPlan:
    """txrelay's services, and the values the check compares against."""

    services: tuple[ServicePlan, ...]
    milter: str
    auth_socket: str
    message_size_limit: int
    cleanup_overrides: tuple[tuple[str, str], ...] = ()
    milter_limits: tuple[tuple[str, int], ...] = ()  # enforced by the milter, not Postfix
    inbound: InboundPlan | None = None

    def as_dict(self) -> dict[str, object]:
        inbound = self.inbound
        return {
            "main.cf": dict.fromkeys(INBOUND_LISTS, f"append {INBOUND_TABLE}") if inbound else {},
            "master.cf": [
                {"service": s.key, "implicit_tls": s.implicit_tls, "overrides": dict(s.overrides)}
                for s in self.services
            ],
            "inbound": {
                "service": inbound.key,
                "entry": inbound.entry(),
                "domains": list(inbound.domains),
                "table": INBOUND_TABLE,
            }
            if inbound
            else None,
            "cleanup_service": {
                "service": f"{CLEANUP_SERVICE}/unix",
                "overrides": dict(self.cleanup_overrides),
            },
            "milter_limits": dict(self.milter_limits),
        }


def master_option(name: str, value: str) -> str:
    """One -o of master.cf; a value with spaces needs Postfix 3's `-o { name = value }`."""
    return f"-o {{ {name} = {value} }}" if any(c.isspace() for c in value) else f"-o {name}={value}"


def master_entry(
    name: str, command: tuple[str, ...], overrides: tuple[tuple[str, str], ...]
) -> str:
    return " ".join((name, *command, *(master_option(n, v) for n, v in overrides)))


def postfix_milter_socket(libmilter_socket: str) -> str:
    """libmilter's socket spec (unix:/p, local:/p, inet:PORT@HOST, inet6:PORT@HOST) in the
    syntax of Postfix's smtpd_milters (unix:/p, inet:HOST:PORT, inet:[V6]:PORT)."""
    kind, _, rest = libmilter_socket.partition(":")
    if kind in {"unix", "local"} and rest.startswith("/"):
        return f"unix:{rest}"
    if kind in {"inet", "inet6"} and "@" in rest:
        port, _, host = rest.partition("@")
        if port.isdigit():
            host = f"[{host}]" if kind == "inet6" else host
            return f"inet:{host}:{port}"
    raise InvalidInput(
        f"milter socket {libmilter_socket!r} is not unix:/ABSOLUTE/PATH, "
        "inet:PORT@HOST or inet6:PORT@HOST; fix [milter] socket or "
        "pass --milter-socket"
    )


def default_listen(config: Config) -> str:
    return "submission" if config.smtp.port == 587 else str(config.smtp.port)


def plan_postfix(
    config: Config,
    *,
    listen: str | None = None,
    implicit_tls: str | None = None,
    milter_socket: str | None = None,
    syslog_name: str = "postfix",
    executable: str = "/usr/local/bin/txrelay",
    config_file: str = "/etc/txrelay/txrelay.toml",
    inbound_user: str = DEFAULT_INBOUND_USER,
    return_paths: tuple[str, ...] = (),
    route_inbound: bool = True,
) -> PostfixPlan:
    """txrelay's services for this configuration: a STARTTLS service (--listen, default
    [smtp] port) and/or an implicit-TLS one (--implicit-tls); postfix-conf/README.md
    explains each override."""
    milter = milter_socket or postfix_milter_socket(config.milter.socket)
    if not milter.startswith(("unix:/", "inet:")):
        milter = postfix_milter_socket(milter)
    size_limit = config.milter.max_message_size + ENVELOPE_SLACK_BYTES
    wanted = []
    if listen is not None or implicit_tls is None:
        wanted.append((parse_listen(listen or default_listen(config)), False))
    if implicit_tls is not None:
        wanted.append((parse_listen(implicit_tls, "--implicit-tls"), True))
    if len(wanted) == 2 and wanted[0][0].service == wanted[1][0].service:
        raise InvalidInput(
            "--listen and --implicit-tls name the same service; give each "
            "its own port (e.g. --listen 2587 --implicit-tls 2465)"
        )
    services = tuple(
        ServicePlan(address, tls, _overrides(config, milter, size_limit, tls, syslog_name))
        for address, tls in wanted
    )
    cleanup = (
        ("message_size_limit", str(size_limit)),
        ("message_reject_characters", REJECT_CHARACTERS),
    )
    milter_limits = (
        ("max_headers", config.limits.max_headers),
        ("max_messages_per_session", config.limits.max_messages_per_session),
    )
    domains = inbound_domains(config, return_paths) if route_inbound else ()
    inbound = InboundPlan(domains, executable, config_file, inbound_user) if domains else None
    return PostfixPlan(
        services, milter, config.dovecot.auth_socket, size_limit, cleanup, milter_limits, inbound
    )


def _overrides(
    config: Config, milter: str, size_limit: int, implicit_tls: bool, syslog_name: str
) -> tuple[tuple[str, str], ...]:
    suffix = IMPLICIT_TLS_SYSLOG_SUFFIX if implicit_tls else STARTTLS_SYSLOG_SUFFIX
    tls: tuple[tuple[str, str], ...] = (
        ("syslog_name", f"{syslog_name}/{suffix}"),
        *((("smtpd_tls_wrappermode", "yes"),) if implicit_tls else ()),
        ("smtpd_tls_security_level", "encrypt"),
        ("smtpd_tls_auth_only", "yes"),
        ("smtpd_tls_protocols", ">=TLSv1.2"),
        ("smtpd_tls_mandatory_protocols", ">=TLSv1.2"),
    )
    if config.smtp.tls_cert_file:
        # The key first: chain_files wants each private key followed by its certificate
        # (without tls_key_file, the certificate file holds the key too).
        files = [config.smtp.tls_key_file] if config.smtp.tls_key_file else []
        tls += (("smtpd_tls_chain_files", ",".join([*files, config.smtp.tls_cert_file])),)
    return (
        *tls,
        ("smtpd_sasl_auth_enable", "yes"),
        ("smtpd_sasl_type", "dovecot"),
        ("smtpd_sasl_path", config.dovecot.auth_socket),
        ("smtpd_sasl_security_options", "noanonymous"),
        ("smtpd_sasl_local_domain", ""),
        ("smtpd_client_restrictions", "permit_sasl_authenticated,reject"),
        ("smtpd_relay_restrictions", "permit_sasl_authenticated,reject"),
        ("smtpd_recipient_restrictions", "permit_sasl_authenticated,reject"),
        ("smtpd_client_auth_rate_limit", str(config.limits.client_auth_rate_limit)),
        ("smtpd_client_message_rate_limit", str(config.limits.client_message_rate_limit)),
        ("smtpd_client_connection_rate_limit", str(config.limits.client_connection_rate_limit)),
        ("local_header_rewrite_clients", "static:none"),
        ("smtpd_milters", milter),
        ("smtpd_milter_maps", ""),
        ("milter_protocol", "6"),
        ("milter_default_action", "tempfail"),
        ("milter_connect_timeout", "30s"),
        ("milter_command_timeout", "30s"),
        ("milter_content_timeout", "300s"),
        ("milter_mail_macros", MILTER_MAIL_MACROS),
        ("milter_macro_defaults", ""),
        ("message_size_limit", str(size_limit)),
        ("content_filter", ""),
        ("receive_override_options", ""),
        ("cleanup_service_name", CLEANUP_SERVICE),
    )


def target_syslog_name(target: PostfixTarget) -> str:
    """The instance's syslog_name (postfix, postfix-NAME for a postmulti instance)."""
    return postconf(target, "-xh", "syslog_name").strip() or "postfix"


def require_certificate_files(config: Config) -> None:
    """[smtp] tls_cert_file/tls_key_file, when set, must be readable PEM files: Postfix would
    otherwise start the service and fail every TLS handshake."""
    if config.smtp.tls_key_file and not config.smtp.tls_cert_file:
        raise InvalidInput(
            "[smtp] tls_key_file is set but tls_cert_file is empty; set both, "
            "or neither to use main.cf's certificate"
        )
    for key, path in (
        ("tls_cert_file", config.smtp.tls_cert_file),
        ("tls_key_file", config.smtp.tls_key_file),
    ):
        if not path:
            continue
        try:
            head = Path(path).read_bytes()[:65536]
        except OSError as error:
            raise InvalidInput(
                f"[smtp] {key} = {path}: {error.strerror or error}; give a "
                "readable PEM file, or leave tls_cert_file empty to use "
                "main.cf's certificate"
            ) from None
        if b"-----BEGIN " not in head:
            raise InvalidInput(
                f"[smtp] {key} = {path} is not a PEM file; give the PEM "
                "certificate (chain) and its private key"
            )


def resolve_target(instance: str | None, config_directory: str | None) -> PostfixTarget:
    """The main instance, a postmulti instance (--instance) or a directory (--config-directory)."""
    if instance and config_directory:
        raise InvalidInput("give --instance or --config-directory, not both")
    if config_directory:
        directory = Path(config_directory)
        if not (directory / "main.cf").is_file():
            raise InvalidInput(
                f"{directory}/main.cf does not exist; pass the directory that "
                "holds Postfix's main.cf and master.cf"
            )
        return PostfixTarget(directory.resolve(), f"config directory {directory}")
    if instance:
        found = run_command(
            ["postmulti", "-i", instance, "-x", "postconf", "-h", "config_directory"],
            what=f"postmulti instance {instance!r}",
        )
        return PostfixTarget(Path(found.strip()), f"postmulti instance {instance}")
    found = run_command(["postconf", "-h", "config_directory"], what="the main Postfix instance")
    return PostfixTarget(Path(found.strip()), "main instance")


@dataclass(frozen=True)
class PostfixSettings:
    """What a config directory says: main.cf with defaults, and every master.cf service."""

    main: dict[str, str]
    services: dict[str, str]  # "name/type" -> command (8th field)
    overrides: dict[str, dict[str, str]]  # "name/type" -> -o settings

    def effective(self, service: str, name: str) -> str:
        return self.overrides.get(service, {}).get(name, self.main.get(name, ""))

    def inet_services(self) -> list[str]:
        return [key for key in self.services if key.endswith("/inet")]


def read_settings(directory: Path, label: str = "") -> PostfixSettings:
    """main.cf (postconf -x: defaults included, $names expanded), master.cf and its -o's."""
    target = PostfixTarget(directory, label or str(directory))
    main = parse_postconf(postconf(target, "-x"))
    services = {}
    for line in postconf(target, "-M").splitlines():
        fields = line.split()
        if len(fields) >= 8:
            services[f"{fields[0]}/{fields[1]}"] = fields[7]
    overrides: dict[str, dict[str, str]] = {}
    for name, value in parse_postconf(postconf(target, "-P")).items():
        service, _, parameter = name.rpartition("/")
        overrides.setdefault(service, {})[parameter] = value
    return PostfixSettings(main, services, overrides)


def parse_postconf(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" =")
        if sep:
            values[name.strip()] = value.strip()
    return values


def postconf(target: PostfixTarget, *args: str) -> str:
    return run_command(["postconf", "-c", str(target.config_directory), *args], what=target.label)


def run_command(argv: list[str], *, what: str) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=POSTCONF_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise ConfigError(
            f"{argv[0]} not found; install Postfix (apt-get install postfix)"
        ) from None
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"{' '.join(argv[:3])} did not answer within {POSTCONF_TIMEOUT}s"
        ) from None
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "fatal" in line or "error" in line]
        reason = errors[0] if errors else (done.stderr.strip() or f"exit {done.returncode}")
        raise ConfigError(f"{what}: {' '.join(argv[:4])} failed: {reason}")
    return done.stdout
