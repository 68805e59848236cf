"""`txrelay postfix check`: what would let txrelay's mail out unsigned or unbilled, or change
it after signing — judged only on what reaches txrelay's mail.

That is txrelay's own services (their -o over main.cf), the cleanup service they hand mail
to, the smtp/lmtp clients that deliver it, and any other service that logs in against
txrelay's auth socket. Settings of port 25 or local mail (OpenDKIM's accept, a
content_filter, non_smtpd_milters) are not judged unless they reach txrelay's mail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from txrelay.provisioning.postfix import (
    MAX_AUTH_RATE,
    REJECT_CHARACTERS,
    PostfixPlan,
    PostfixSettings,
    ServicePlan,
)

MIN_TLS_PROTOCOLS = (">=TLSv1.2", ">=TLSv1.3")
OLD_TLS_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1")
# The smtp/lmtp clients' settings that rewrite a message after the milter signed it.
CONTENT_REWRITING = (
    "smtp_header_checks",
    "smtp_mime_header_checks",
    "smtp_body_checks",
    "smtp_generic_maps",
    "lmtp_header_checks",
    "lmtp_body_checks",
    "lmtp_mime_header_checks",
    "lmtp_generic_maps",
)
ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One setting that must (error) or should (warning) change, where it is, what to do."""

    where: str  # "main.cf" or "master.cf NAME/TYPE"
    setting: str
    value: str
    fix: str
    severity: str = ERROR

    def describe(self) -> str:
        prefix = "warning: " if self.severity == WARNING else ""
        return f"{prefix}{self.where}: {self.setting} = {self.value!r}: {self.fix}"

    def as_dict(self) -> dict[str, str]:
        return {
            "where": self.where,
            "setting": self.setting,
            "value": self.value,
            "fix": self.fix,
            "severity": self.severity,
        }


def check_settings(settings: PostfixSettings, plan: PostfixPlan) -> list[Problem]:
    """Every problem (errors first, then warnings), one per setting."""
    found = [*_main_problems(settings, plan)]
    for service in plan.services:
        found.extend(_service_problems(settings, service, plan))
    found.extend(_foreign_login_problems(settings, plan))
    found.extend(_delivery_problems(settings))
    found.extend(_delivery_warnings(settings))
    return sorted(found, key=lambda p: p.severity == WARNING)


def milter_entries(value: str) -> list[tuple[str, dict[str, str]]]:
    """smtpd_milters parsed: (socket, per-milter settings) for `S` and `{ S, name=value }`."""
    entries: list[tuple[str, dict[str, str]]] = []
    rest = value.replace(",", " ").strip()
    while rest:
        if rest.startswith("{"):
            inside, _, rest = rest[1:].partition("}")
            parts = inside.split()
            if parts:
                attributes = dict(p.partition("=")[::2] for p in parts[1:] if "=" in p)
                entries.append((parts[0], {k.strip(): v.strip() for k, v in attributes.items()}))
        else:
            word, _, rest = rest.partition(" ")
            entries.append((word, {}))
        rest = rest.strip()
    return entries


def _main_problems(settings: PostfixSettings, plan: PostfixPlan) -> list[Problem]:
    main = settings.main
    problems = []
    if "auth_authen" in main.get("milter_macro_defaults", ""):
        problems.append(
            Problem(
                "main.cf",
                "milter_macro_defaults",
                main["milter_macro_defaults"],
                "a default {auth_authen} makes unauthenticated sessions look "
                "logged in to a milter; remove it",
            )
        )
    if any(
        socket == plan.milter for socket, _ in milter_entries(main.get("non_smtpd_milters", ""))
    ):
        problems.append(
            Problem(
                "main.cf",
                "non_smtpd_milters",
                main["non_smtpd_milters"],
                f"locally submitted mail (sendmail, bounces) reaches txrelay's "
                f"milter ({plan.milter}); remove it from non_smtpd_milters",
            )
        )
    return problems


def _service_problems(
    settings: PostfixSettings, service: ServicePlan, plan: PostfixPlan
) -> list[Problem]:
    key = service.key
    if key not in settings.services:
        return [
            Problem(
                "master.cf",
                key,
                "(missing)",
                "txrelay's service is not configured; run txrelay postfix configure",
            )
        ]

    def value(name: str) -> str:
        return settings.effective(key, name)

    where = f"master.cf {key}"
    wanted: tuple[tuple[str, Callable[[str], bool], str], ...] = (
        (
            "smtpd_tls_security_level",
            lambda v: v == "encrypt",
            "TLS must be mandatory; set -o smtpd_tls_security_level=encrypt",
        ),
        (
            "smtpd_tls_auth_only",
            lambda v: v == "yes",
            "passwords would cross the wire in clear; set -o smtpd_tls_auth_only=yes",
        ),
        (
            "smtpd_tls_mandatory_protocols",
            _modern_tls,
            "allows TLS below 1.2; set -o smtpd_tls_mandatory_protocols=>=TLSv1.2",
        ),
        (
            "smtpd_milters",
            lambda v: any(s == plan.milter for s, _ in milter_entries(v)),
            f"the txrelay milter ({plan.milter}) is not asked: mail would go out unsigned and "
            "unbilled; add it",
        ),
        (
            "milter_default_action",
            lambda v: v != "accept",
            "when the milter is unreachable "
            "mail would be relayed unsigned and unbilled; set -o milter_default_action=tempfail",
        ),
        (
            "milter_macro_defaults",
            lambda v: "auth_authen" not in v,
            "a default {auth_authen} "
            "makes unauthenticated sessions look logged in; set -o milter_macro_defaults=",
        ),
        (
            "receive_override_options",
            lambda v: "no_milters" not in v,
            "no_milters skips "
            "txrelay's milter: mail would go out unsigned and unbilled; set "
            "-o receive_override_options=",
        ),
        (
            "smtpd_milter_maps",
            lambda v: not v,
            "per-client milter lists can replace txrelay's milter; set -o smtpd_milter_maps=",
        ),
        (
            "content_filter",
            lambda v: not v,
            "an after-queue filter gets txrelay's signed mail "
            "and may change it; set -o content_filter=",
        ),
    )
    problems = [
        Problem(where, name, value(name), fix) for name, ok, fix in wanted if not ok(value(name))
    ]
    if not (value("smtpd_tls_chain_files") or value("smtpd_tls_cert_file")):
        problems.append(
            Problem(
                where,
                "smtpd_tls_chain_files",
                "",
                "no TLS certificate: "
                "the service requires TLS and refuses every client; set [smtp] "
                "tls_cert_file/tls_key_file and run txrelay postfix configure, "
                "or set smtpd_tls_chain_files in main.cf",
            )
        )
    for socket, attributes in milter_entries(value("smtpd_milters")):
        if socket == plan.milter and attributes.get("default_action") == "accept":
            problems.append(
                Problem(
                    where,
                    "smtpd_milters",
                    value("smtpd_milters"),
                    "default_action=accept for txrelay's milter relays mail "
                    "unsigned and unbilled when it is unreachable; remove it",
                )
            )
    return problems + _limit_warnings(settings, key) + _cleanup_problems(settings, key, plan)


def _limit_warnings(settings: PostfixSettings, key: str) -> list[Problem]:
    """AUTH guesses above MAX_AUTH_RATE a minute, or rate limits without the anvil service
    that counts them."""
    where = f"master.cf {key}"
    warnings = []
    auth_rate = settings.effective(key, "smtpd_client_auth_rate_limit")
    if not auth_rate.isdigit() or not 0 < int(auth_rate) <= MAX_AUTH_RATE:
        warnings.append(
            Problem(
                where,
                "smtpd_client_auth_rate_limit",
                auth_rate,
                f"a client may log in (or guess a password) more than "
                f"{MAX_AUTH_RATE} times a minute; set [limits] "
                f"client_auth_rate_limit "
                f"(1-{MAX_AUTH_RATE}) and run txrelay postfix configure",
                WARNING,
            )
        )
    rates = [
        name
        for name in (
            "smtpd_client_auth_rate_limit",
            "smtpd_client_message_rate_limit",
            "smtpd_client_connection_rate_limit",
        )
        if settings.effective(key, name) not in ("", "0")
    ]
    if rates and "anvil/unix" not in settings.services:
        warnings.append(
            Problem(
                "master.cf",
                "anvil/unix",
                "(missing)",
                f"{', '.join(rates)} need Postfix's anvil service, which "
                "counts them; add Debian's line: anvil unix - - n - 1 anvil",
                WARNING,
            )
        )
    return warnings


def _cleanup_problems(settings: PostfixSettings, key: str, plan: PostfixPlan) -> list[Problem]:
    name = settings.effective(key, "cleanup_service_name") or "cleanup"
    cleanup = f"{name}/unix"
    if cleanup not in settings.services:
        return [
            Problem(
                f"master.cf {key}",
                "cleanup_service_name",
                name,
                f"no {cleanup} "
                "service in master.cf: mail would not be queued; run txrelay postfix "
                "configure",
            )
        ]
    problems = []
    limit = settings.effective(cleanup, "message_size_limit")
    if limit.isdigit() and 0 < int(limit) < plan.message_size_limit:
        problems.append(
            Problem(
                f"master.cf {cleanup}",
                "message_size_limit",
                limit,
                f"txrelay's mail up to {plan.message_size_limit} bytes is "
                "refused by this cleanup service; run txrelay postfix "
                "configure (it gives txrelay a cleanup service of its own)",
            )
        )
    rejected = settings.effective(cleanup, "message_reject_characters")
    if REJECT_CHARACTERS not in rejected:
        problems.append(
            Problem(
                f"master.cf {cleanup}",
                "message_reject_characters",
                rejected,
                "a NUL in a header hides the rest of it from txrelay's milter "
                "while Postfix queues it; run txrelay postfix configure (its "
                "cleanup service refuses NUL)",
                WARNING,
            )
        )
    return problems


def _foreign_login_problems(settings: PostfixSettings, plan: PostfixPlan) -> list[Problem]:
    """Another smtpd that logs in with txrelay's credentials but skips txrelay's milter."""
    own = {service.key for service in plan.services}
    problems = []
    for key, command in settings.services.items():
        if key in own or command != "smtpd":
            continue
        if settings.effective(key, "smtpd_sasl_auth_enable") != "yes" or not _same_socket(
            settings, settings.effective(key, "smtpd_sasl_path"), plan.auth_socket
        ):
            continue
        milters = settings.effective(key, "smtpd_milters")
        if not any(socket == plan.milter for socket, _ in milter_entries(milters)):
            problems.append(
                Problem(
                    f"master.cf {key}",
                    "smtpd_milters",
                    milters,
                    f"this service logs in against txrelay's auth socket "
                    f"({plan.auth_socket}) without txrelay's milter: shops' "
                    "credentials would relay mail unsigned and unbilled; use "
                    "another smtpd_sasl_path or add the milter",
                )
            )
    return problems


def _same_socket(settings: PostfixSettings, path: str, auth_socket: str) -> bool:
    if path.startswith("/"):
        return path == auth_socket
    # Relative paths are relative to the queue directory (smtpd runs there).
    return f"{settings.main.get('queue_directory', '').rstrip('/')}/{path}" == auth_socket


def _modern_tls(value: str) -> bool:
    if value.replace(" ", "") in MIN_TLS_PROTOCOLS:
        return True
    excluded = {
        item.strip().lstrip("!")
        for item in value.replace(",", " ").split()
        if item.strip().startswith("!")
    }
    return all(protocol in excluded for protocol in OLD_TLS_PROTOCOLS)


def _delivery_problems(settings: PostfixSettings) -> list[Problem]:
    """What changes mail after signing on the way out: the smtp/lmtp clients' rewriting and
    line splitting below 998 bytes (main.cf, and the -o of every smtp/lmtp service)."""
    places = [("main.cf", settings.main)]
    places += [
        (f"master.cf {service}", settings.overrides.get(service, {}))
        for service, command in settings.services.items()
        if command in ("smtp", "lmtp")
    ]
    problems = []
    for where, values in places:
        for name in CONTENT_REWRITING:
            if values.get(name):
                problems.append(
                    Problem(
                        where,
                        name,
                        values[name],
                        "rewrites mail after the milter signed it and breaks DKIM; remove it",
                    )
                )
        limit = values.get("smtp_line_length_limit")
        if limit and limit.isdigit() and 0 < int(limit) < 998:
            problems.append(
                Problem(
                    where,
                    "smtp_line_length_limit",
                    limit,
                    "splits signed lines shorter than 998 bytes and breaks DKIM; set 998",
                )
            )
    return problems


def _delivery_warnings(settings: PostfixSettings) -> list[Problem]:
    """Global settings txrelay cannot override for its own mail only: said, not changed."""
    main = settings.main
    warnings = []
    if main.get("disable_mime_output_conversion", "no") != "yes":
        warnings.append(
            Problem(
                "main.cf",
                "disable_mime_output_conversion",
                main.get("disable_mime_output_conversion", "no"),
                "8-bit mail sent to a server without 8BITMIME is converted to quoted-printable "
                "after signing and fails DKIM; a global setting txrelay does not change: run "
                "postconf -e disable_mime_output_conversion=yes if the server's other mail "
                "allows it",
                WARNING,
            )
        )
    if main.get("smtputf8_enable", "yes") != "yes":
        warnings.append(
            Problem(
                "main.cf",
                "smtputf8_enable",
                main["smtputf8_enable"],
                "shops' mail with internationalised (UTF-8) addresses is refused; a global "
                "setting txrelay does not change: run postconf -e smtputf8_enable=yes to "
                "relay it",
                WARNING,
            )
        )
    return warnings + _tls_resumption_warnings(main)


def _tls_resumption_warnings(main: dict[str, str]) -> list[Problem]:
    """TLS session tickets spare shops that open a session per mail a full handshake. Both
    settings live in tlsmgr, for every service: a master.cf -o cannot turn them back on."""
    fix = (
        "TLS session tickets are off for every smtpd, txrelay's service too: shops that open "
        "a session per mail pay a full TLS handshake each time; a global setting txrelay "
        "does not change (per-service overrides do not work): run postconf -X {name} to "
        "restore the default"
    )
    warnings = []
    timeout = main.get("smtpd_tls_session_cache_timeout", "3600s")
    if _seconds(timeout) <= 0:
        warnings.append(
            Problem(
                "main.cf",
                "smtpd_tls_session_cache_timeout",
                timeout,
                fix.format(name="smtpd_tls_session_cache_timeout"),
                WARNING,
            )
        )
    if not main.get("tls_session_ticket_cipher", "aes-256-cbc").strip():
        warnings.append(
            Problem(
                "main.cf",
                "tls_session_ticket_cipher",
                "",
                fix.format(name="tls_session_ticket_cipher"),
                WARNING,
            )
        )
    return warnings


def _seconds(value: str) -> int:
    """A Postfix time value ("3600s", "1h", "0") in seconds; unreadable counts as positive
    (postfix check reports those itself)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = value.strip()
    unit = units.get(text[-1:], 1) if text[-1:].isalpha() else 1
    number = text[:-1] if text[-1:].isalpha() else text
    try:
        return int(number) * unit
    except ValueError:
        return 1
