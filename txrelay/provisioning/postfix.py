"""Plans and applies txrelay's settings to an existing Postfix through postconf.

Works on the main instance, a postmulti instance or any config directory: every postconf
call carries -c DIR, so nothing assumes /etc/postfix. Each change is listed before it is
made; main.cf and master.cf are backed up (timestamped copies) before the first write.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from txrelay.config import Config
from txrelay.errors import ConfigError, InvalidInput

SUBMISSION_COMMAND = ("inet", "n", "-", "n", "-", "-", "smtpd")
POSTLOG_SERVICE = ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd")
# Envelope records (sender, recipients, timestamps) count against message_size_limit too.
ENVELOPE_SLACK_BYTES = 1024 * 1024
MILTER_MAIL_MACROS = ("i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} "
                      "{mail_mailer}")
# Parameters that change a message after the milter signed it (the smtp client applies them).
SIGNATURE_BREAKERS = ("smtp_header_checks", "smtp_mime_header_checks", "smtp_body_checks",
                      "smtp_generic_maps")
POSTCONF_TIMEOUT = 30


@dataclass(frozen=True)
class PostfixTarget:
    """Which Postfix to change: its config directory, and how the admin named it."""

    config_directory: Path
    label: str


@dataclass(frozen=True)
class PostfixPlan:
    """What txrelay wants: main.cf values and the submission service of master.cf."""

    main: tuple[tuple[str, str], ...]
    main_if_unset: tuple[tuple[str, str], ...]
    service: str
    service_overrides: tuple[tuple[str, str], ...]

    @property
    def service_key(self) -> str:
        return f"{self.service}/inet"

    @property
    def service_entry(self) -> str:
        return " ".join((self.service, *SUBMISSION_COMMAND))

    def as_dict(self) -> dict[str, object]:
        return {
            "main.cf": dict(self.main),
            "main.cf (only when unset)": dict(self.main_if_unset),
            "master.cf": {"service": self.service_entry,
                          "overrides": dict(self.service_overrides)},
        }


@dataclass(frozen=True)
class Change:
    """One setting that configure changes (old is None when it was not set)."""

    where: str
    name: str
    old: str | None
    new: str

    def describe(self) -> str:
        before = "(unset)" if self.old is None else repr(self.old)
        return f"{self.where}: {self.name}: {before} -> {self.new!r}"


@dataclass
class ConfigureResult:
    target: PostfixTarget
    changes: list[Change] = field(default_factory=list)
    backups: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False


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
    raise InvalidInput(f"milter socket {libmilter_socket!r} is not unix:/ABSOLUTE/PATH, "
                       "inet:PORT@HOST or inet6:PORT@HOST; fix [milter] socket or "
                       "pass --milter-socket")


def plan_postfix(config: Config, *, listen: str | None = None,
                 milter_socket: str | None = None) -> PostfixPlan:
    """The settings for this configuration; the README in postfix-conf/ explains each."""
    milter = milter_socket or postfix_milter_socket(config.milter.socket)
    if not milter.startswith(("unix:/", "inet:")):
        milter = postfix_milter_socket(milter)
    service = listen or ("submission" if config.smtp.port == 587 else str(config.smtp.port))
    main = (
        ("milter_protocol", "6"),
        ("milter_default_action", "tempfail"),
        ("milter_connect_timeout", "30s"),
        ("milter_command_timeout", "30s"),
        ("milter_content_timeout", "300s"),
        ("milter_mail_macros", MILTER_MAIL_MACROS),
        ("non_smtpd_milters", ""),
        ("message_size_limit", str(config.milter.max_message_size + ENVELOPE_SLACK_BYTES)),
        ("disable_mime_output_conversion", "yes"),
        ("smtputf8_enable", "yes"),
        ("enable_long_queue_ids", "yes"),
    )
    overrides = (
        ("syslog_name", "postfix/submission"),
        ("smtpd_tls_security_level", "encrypt"),
        ("smtpd_tls_auth_only", "yes"),
        ("smtpd_tls_protocols", ">=TLSv1.2"),
        ("smtpd_tls_mandatory_protocols", ">=TLSv1.2"),
        ("smtpd_sasl_auth_enable", "yes"),
        ("smtpd_sasl_type", "dovecot"),
        ("smtpd_sasl_path", config.dovecot.auth_socket),
        ("smtpd_sasl_security_options", "noanonymous"),
        ("smtpd_sasl_local_domain", ""),
        ("smtpd_client_restrictions", "permit_sasl_authenticated,reject"),
        ("smtpd_relay_restrictions", "permit_sasl_authenticated,reject"),
        ("smtpd_recipient_restrictions", "permit_sasl_authenticated,reject"),
        ("smtpd_client_auth_rate_limit", "120"),
        ("local_header_rewrite_clients", "static:none"),
        ("smtpd_milters", milter),
        ("milter_default_action", "tempfail"),
        ("milter_macro_defaults", ""),
    )
    # Only a log_path the admin set is offered as maillog_file; by default the tracker finds
    # Postfix's log where it is ([tracker] source) and Postfix's logging stays as it was.
    if_unset = (("maillog_file", config.tracker.log_path),) if config.tracker.log_path else ()
    return PostfixPlan(main=main, main_if_unset=if_unset,
                       service=service, service_overrides=overrides)


def resolve_target(instance: str | None, config_directory: str | None) -> PostfixTarget:
    """The main instance, a postmulti instance (--instance) or a directory (--config-directory)."""
    if instance and config_directory:
        raise InvalidInput("give --instance or --config-directory, not both")
    if config_directory:
        directory = Path(config_directory)
        if not (directory / "main.cf").is_file():
            raise InvalidInput(f"{directory}/main.cf does not exist; pass the directory that "
                               "holds Postfix's main.cf and master.cf")
        return PostfixTarget(directory.resolve(), f"config directory {directory}")
    if instance:
        found = _run(["postmulti", "-i", instance, "-x", "postconf", "-h",
                      "config_directory"], what=f"postmulti instance {instance!r}")
        return PostfixTarget(Path(found.strip()), f"postmulti instance {instance}")
    found = _run(["postconf", "-h", "config_directory"], what="the main Postfix instance")
    return PostfixTarget(Path(found.strip()), "main instance")


def configure_postfix(target: PostfixTarget, plan: PostfixPlan, *, dry_run: bool = False,
                      now: datetime | None = None) -> ConfigureResult:
    """Apply the plan: compute the changes, back up, postconf -e / -M / -P; idempotent."""
    result = ConfigureResult(target=target, dry_run=dry_run)
    current_main = read_main(target)
    result.changes.extend(_main_changes(plan, current_main))
    old_service, old_overrides = read_service(target, plan.service_key)
    result.changes.extend(_service_changes(plan, old_service, old_overrides))
    has_postlog = bool(_postconf(target, "-M", "postlog/unix-dgram").strip())
    if not has_postlog:
        result.changes.append(Change("master.cf", "postlog/unix-dgram", None,
                                     " ".join(POSTLOG_SERVICE)))
    result.warnings.extend(_warnings(current_main, plan))
    if dry_run or not result.changes:
        return result
    result.backups.extend(_backup(target, now or datetime.now()))
    maillog = _maillog_file(current_main, plan)
    if maillog.startswith("/") and not maillog.startswith("/dev/"):
        Path(maillog).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    _apply(target, plan, result.changes, has_postlog)
    return result


def read_main(target: PostfixTarget) -> dict[str, str]:
    """main.cf's explicit settings (postconf -n)."""
    return _parse_postconf(_postconf(target, "-n"))


def read_service(target: PostfixTarget, key: str) -> tuple[str | None, dict[str, str]]:
    """A master.cf entry (name/type) and its -o overrides; (None, {}) when absent."""
    entry = _postconf(target, "-M", key).strip()
    if not entry:
        return None, {}
    fields = entry.split()
    command = " ".join(fields[:8])
    overrides = {name.removeprefix(f"{key}/"): value for name, value in
                 _parse_postconf(_postconf(target, "-P", key)).items()}
    return command, overrides


def _main_changes(plan: PostfixPlan, current: dict[str, str]) -> list[Change]:
    changes = [Change("main.cf", name, current.get(name), value)
               for name, value in plan.main if current.get(name) != value]
    changes.extend(Change("main.cf", name, None, value)
                   for name, value in plan.main_if_unset if not current.get(name))
    return changes


def _service_changes(plan: PostfixPlan, old_entry: str | None,
                     old_overrides: dict[str, str]) -> list[Change]:
    changes = []
    if old_entry != plan.service_entry:
        changes.append(Change("master.cf", plan.service_key, old_entry, plan.service_entry))
    wanted = dict(plan.service_overrides)
    for name, value in plan.service_overrides:
        if old_overrides.get(name) != value:
            changes.append(Change("master.cf", f"{plan.service_key} -o {name}",
                                  old_overrides.get(name), value))
    # -M replaces the whole entry: overrides of the admin's that we do not set go away.
    changes.extend(Change("master.cf", f"{plan.service_key} -o {name}", value, "(removed)")
                   for name, value in old_overrides.items() if name not in wanted)
    return changes


def _warnings(current: dict[str, str], plan: PostfixPlan) -> list[str]:
    warnings = [f"{name} is set ({current[name]}): it rewrites mail after the milter signed "
                "it and breaks DKIM signatures; remove it" for name in SIGNATURE_BREAKERS
                if current.get(name)]
    if not (current.get("smtpd_tls_chain_files") or current.get("smtpd_tls_cert_file")):
        warnings.append("no TLS certificate in main.cf (smtpd_tls_chain_files or "
                        "smtpd_tls_cert_file/smtpd_tls_key_file): the submission service "
                        "requires STARTTLS and will refuse every client until one is set")
    maillog = _maillog_file(current, plan)
    prefixes = [p.strip() for p in current.get("maillog_file_prefixes", "/var, /dev/stdout")
                .replace(",", " ").split()]
    if maillog and not any(maillog.startswith(p) for p in prefixes):
        warnings.append(f"maillog_file {maillog} is outside maillog_file_prefixes; add its "
                        "directory to maillog_file_prefixes")
    return warnings


def _maillog_file(current: dict[str, str], plan: PostfixPlan) -> str:
    return current.get("maillog_file") or dict(plan.main_if_unset).get("maillog_file", "")


def _backup(target: PostfixTarget, now: datetime) -> list[Path]:
    stamp = now.strftime("%Y%m%dT%H%M%S")
    copies = []
    for name in ("main.cf", "master.cf"):
        source = target.config_directory / name
        if source.exists():
            copy = source.with_name(f"{name}.txrelay-{stamp}")
            shutil.copy2(source, copy)
            copies.append(copy)
    return copies


def _apply(target: PostfixTarget, plan: PostfixPlan, changes: list[Change],
           has_postlog: bool) -> None:
    main_updates = [f"{c.name}={c.new}" for c in changes if c.where == "main.cf"]
    if main_updates:
        _postconf(target, "-e", *main_updates)
    if any(c.where == "master.cf" and c.name.startswith(plan.service_key) for c in changes):
        _postconf(target, "-M", f"{plan.service_key}={plan.service_entry}")
        _postconf(target, "-P", *(f"{plan.service_key}/{name}={value}"
                                  for name, value in plan.service_overrides))
    if not has_postlog:
        _postconf(target, "-M", "postlog/unix-dgram=" + " ".join(POSTLOG_SERVICE))


def _parse_postconf(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" =")
        if sep:
            values[name.strip()] = value.strip()
    return values


def _postconf(target: PostfixTarget, *args: str) -> str:
    return _run(["postconf", "-c", str(target.config_directory), *args],
                what=target.label)


def _run(argv: list[str], *, what: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=POSTCONF_TIMEOUT,
                              check=False)
    except FileNotFoundError:
        raise ConfigError(f"{argv[0]} not found; install Postfix (apt-get install "
                          "postfix)") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{' '.join(argv[:3])} did not answer within "
                          f"{POSTCONF_TIMEOUT}s") from None
    errors = [line for line in done.stderr.splitlines() if "fatal" in line or "error" in line]
    if done.returncode != 0:
        reason = errors[0] if errors else (done.stderr.strip() or f"exit {done.returncode}")
        raise ConfigError(f"{what}: {' '.join(argv[:4])} failed: {reason}")
    return done.stdout


# -- txrelay postfix check: settings that would let mail through unaccounted or unsigned,
#    or break signatures after the milter made them --------------------------------------

MIN_TLS_PROTOCOLS = (">=TLSv1.2", ">=TLSv1.3")
OLD_TLS_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1")
CONTENT_REWRITING = (*SIGNATURE_BREAKERS, "lmtp_header_checks", "lmtp_body_checks",
                     "lmtp_mime_header_checks", "lmtp_generic_maps")


@dataclass(frozen=True)
class Problem:
    """One setting that must change, where it is, and what to do."""

    where: str  # "main.cf" or "master.cf NAME/TYPE"
    setting: str
    value: str
    fix: str

    def describe(self) -> str:
        return f"{self.where}: {self.setting} = {self.value!r}: {self.fix}"


@dataclass(frozen=True)
class PostfixSettings:
    """What a config directory says: main.cf with defaults, and every master.cf service."""

    main: dict[str, str]
    services: dict[str, str]  # "name/type" -> command (8th field)
    overrides: dict[str, dict[str, str]]  # "name/type" -> -o settings

    def effective(self, service: str, name: str) -> str:
        return self.overrides.get(service, {}).get(name, self.main.get(name, ""))


def read_settings(target: PostfixTarget) -> PostfixSettings:
    main = _parse_postconf(_postconf(target, "-x"))
    services = {}
    for line in _postconf(target, "-M").splitlines():
        fields = line.split()
        if len(fields) >= 8:
            services[f"{fields[0]}/{fields[1]}"] = fields[7]
    overrides: dict[str, dict[str, str]] = {}
    for name, value in _parse_postconf(_postconf(target, "-P")).items():
        service, _, parameter = name.rpartition("/")
        overrides.setdefault(service, {})[parameter] = value
    return PostfixSettings(main, services, overrides)


def check_postfix(target: PostfixTarget, plan: PostfixPlan) -> list[Problem]:
    """Every problem, one per setting; empty when Postfix is safe for txrelay."""
    settings = read_settings(target)
    milter = dict(plan.service_overrides)["smtpd_milters"]
    return [*_main_problems(settings), *_submission_problems(settings, plan.service_key, milter),
            *_delivery_problems(settings)]


def _main_problems(settings: PostfixSettings) -> list[Problem]:
    main = settings.main
    problems = []
    if main.get("milter_default_action", "tempfail") == "accept":
        problems.append(Problem("main.cf", "milter_default_action", "accept",
                                "when the milter is unreachable mail would be relayed unsigned "
                                "and unbilled; set it to tempfail"))
    if main.get("non_smtpd_milters"):
        problems.append(Problem("main.cf", "non_smtpd_milters", main["non_smtpd_milters"],
                                "locally submitted mail (sendmail, bounces) is not a shop's "
                                "mail; set it empty"))
    if main.get("disable_mime_output_conversion", "no") != "yes":
        problems.append(Problem("main.cf", "disable_mime_output_conversion",
                                main.get("disable_mime_output_conversion", "no"),
                                "8bit to quoted-printable conversion on delivery changes signed "
                                "bodies; set it to yes"))
    if "auth_authen" in main.get("milter_macro_defaults", ""):
        problems.append(Problem("main.cf", "milter_macro_defaults", main["milter_macro_defaults"],
                                "a default {auth_authen} makes unauthenticated sessions look "
                                "logged in to the milter; remove it"))
    return problems


def _submission_problems(settings: PostfixSettings, service: str,
                         milter: str) -> list[Problem]:
    if service not in settings.services:
        return [Problem("master.cf", service, "(missing)", "txrelay's submission service is "
                        "not configured; run txrelay postfix configure")]
    where = f"master.cf {service}"
    wanted = (
        ("smtpd_tls_security_level", lambda v: v == "encrypt", "STARTTLS must be mandatory; "
         "set -o smtpd_tls_security_level=encrypt"),
        ("smtpd_tls_auth_only", lambda v: v == "yes", "passwords would cross the wire in "
         "clear; set -o smtpd_tls_auth_only=yes"),
        ("smtpd_tls_mandatory_protocols", _modern_tls, "allows TLS below 1.2; set "
         "-o smtpd_tls_mandatory_protocols=>=TLSv1.2"),
        ("smtpd_milters", lambda v: milter in v.replace(",", " ").split(), f"the txrelay milter "
         f"({milter}) is not asked: mail would go out unsigned and unbilled; add it"),
        ("milter_default_action", lambda v: v != "accept", "when the milter is unreachable "
         "mail would be relayed unsigned and unbilled; set -o milter_default_action=tempfail"),
        ("milter_macro_defaults", lambda v: "auth_authen" not in v, "a default {auth_authen} "
         "makes unauthenticated sessions look logged in; set -o milter_macro_defaults="),
    )
    return [Problem(where, name, settings.effective(service, name), fix)
            for name, ok, fix in wanted if not ok(settings.effective(service, name))]


def _modern_tls(value: str) -> bool:
    if value.replace(" ", "") in MIN_TLS_PROTOCOLS:
        return True
    excluded = {item.strip().lstrip("!") for item in value.replace(",", " ").split()
                if item.strip().startswith("!")}
    return all(protocol in excluded for protocol in OLD_TLS_PROTOCOLS)


def _delivery_problems(settings: PostfixSettings) -> list[Problem]:
    """What changes mail after signing: the smtp/lmtp clients' rewriting, line splitting
    below 998 bytes, and a content filter that re-injects mail."""
    places = [("main.cf", settings.main)]
    places += [(f"master.cf {service}", settings.overrides.get(service, {}))
               for service, command in settings.services.items() if command in ("smtp", "lmtp")]
    places += [(f"master.cf {service}", settings.overrides.get(service, {}))
               for service, command in settings.services.items() if command == "smtpd"]
    problems = []
    for where, values in places:
        for name in CONTENT_REWRITING:
            if values.get(name):
                problems.append(Problem(where, name, values[name], "rewrites mail after the "
                                        "milter signed it and breaks DKIM; remove it"))
        limit = values.get("smtp_line_length_limit")
        if limit and limit.isdigit() and 0 < int(limit) < 998:
            problems.append(Problem(where, "smtp_line_length_limit", limit, "splits signed "
                                    "lines shorter than 998 bytes and breaks DKIM; set 998"))
        if values.get("content_filter"):
            problems.append(Problem(where, "content_filter", values["content_filter"],
                                    "an after-queue filter re-injects mail after signing and "
                                    "may change it; remove it or filter before the milter"))
    return problems
