"""`txrelay apply` and `txrelay export`: read an apply file (YAML checked against
txrelay/schema/apply.schema.json, every error with its file, line and field), read what the
database holds in the same form, and carry out a plan in one transaction through the same
provisioning functions the single commands use."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import yaml

from txrelay.config import QuotaConfig
from txrelay.errors import InvalidInput, TxRelayError
from txrelay.kek import KeyRing
from txrelay.policy import declarative as decl
from txrelay.policy import webhooks as webhook_policy
from txrelay.policy.declarative import (
    AccountSpec,
    ConnectionSpec,
    DomainSpec,
    State,
    Step,
    SuppressionSpec,
    WebhookSpec,
)
from txrelay.policy.names import (
    normalize_domain,
    normalize_email,
    normalize_list_help,
    validate_name,
)
from txrelay.provisioning import accounts, connections, dkim_keys, domain_moves, domains
from txrelay.provisioning import suppressions as suppression_ops
from txrelay.provisioning import webhooks as webhook_ops
from txrelay.provisioning.connections import ConnectionChange
from txrelay.provisioning.domains import KeyChoice
from txrelay.provisioning.integrity import transaction
from txrelay.store import accounts as account_store
from txrelay.store import connections as connection_store
from txrelay.store import domains as domain_store
from txrelay.store import suppressions as suppression_store
from txrelay.store import webhook_events
from txrelay.store import webhooks as webhook_store
from txrelay.store.accounts import UNCHANGED
from txrelay.webhooks.delivery import Resolver

Path_ = tuple[str | int, ...]
MAX_ERRORS = 20
ALL_SUPPRESSIONS = 1_000_000


def schema() -> dict[str, Any]:
    text = (resources.files("txrelay.schema") / "apply.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


class FileErrors(InvalidInput):
    """Everything wrong with an apply file, one "FILE:LINE: FIELD: problem" per line."""


@dataclass
class _Reader:
    """The file's values with the line of each (by path: ("domains", 3, "list_help"))."""

    filename: str
    lines: dict[Path_, int] = field(default_factory=dict)
    errors: list[tuple[int, str]] = field(default_factory=list)

    def line(self, path: Path_) -> int:
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1

    def error(self, path: Path_, problem: str) -> None:
        self.errors.append(
            (self.line(path), f"{self.filename}:{self.line(path)}: {_dotted(path)}: {problem}")
        )

    def check(self) -> None:
        if self.errors:
            ordered = [text for _, text in sorted(self.errors)]
            more = len(ordered) - MAX_ERRORS
            shown = ordered[:MAX_ERRORS] + ([f"... and {more} more"] if more > 0 else [])
            raise FileErrors("the file was refused, nothing was changed:\n" + "\n".join(shown))


def _dotted(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + part
    return text or "(top)"


def _build(node: yaml.Node, loader: yaml.SafeLoader, path: Path_, reader: _Reader) -> Any:
    """Plain Python values from YAML nodes, recording lines; a key given twice is an error."""
    reader.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                reader.lines[(*path, str(key))] = key_node.start_mark.line + 1
                reader.error((*path, str(key)), "keys must be text")
                continue
            reader.lines[(*path, key)] = key_node.start_mark.line + 1
            if key in out:
                reader.error((*path, key), "given twice")
            out[key] = _build(value_node, loader, (*path, key), reader)
            reader.lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, loader, (*path, i), reader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_file(text: str, filename: str, base: Path) -> State:
    """The file's objects, normalised the way the single commands store them; FileErrors
    lists every problem (schema, duplicates, references, key files) before anything is
    written. Relative key_file paths are read relative to `base` (the file's folder)."""
    reader = _Reader(filename)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        document = {} if node is None else _build(node, loader, (), reader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or exc
        raise FileErrors(f"{filename}:{line}: not valid YAML ({problem})") from None
    finally:
        loader.dispose()
    if not isinstance(document, dict):
        raise FileErrors(f"{filename}:1: (top): must be a mapping of accounts, domains, ...")
    reader.check()
    for error in sorted(
        jsonschema.Draft202012Validator(schema()).iter_errors(document),
        key=lambda e: [str(p) for p in e.absolute_path],
    ):
        _schema_error(reader, error)
    reader.check()
    state = _objects(document, reader, base)
    reader.check()
    return state


def _schema_error(reader: _Reader, error: jsonschema.ValidationError) -> None:
    path: Path_ = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        rules = error.schema if isinstance(error.schema, Mapping) else {}
        known = set(rules.get("properties", {}))
        for key in error.instance:
            if key not in known:
                reader.error((*path, key), "unknown key; known: " + ", ".join(sorted(known)))
        return
    if error.validator == "required":
        reader.error(path, error.message.replace("is a required property", "is missing"))
        return
    if error.validator == "type":
        wanted = error.validator_value
        names = [str(n) for n in wanted] if isinstance(wanted, list) else [str(wanted)]
        reader.error(path, f"must be {' or '.join(names)}, not {_yaml_type(error.instance)}")
        return
    reader.error(path, error.message)


def _yaml_type(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (str, "string"), (list, "list")):
        if isinstance(value, kind):
            return f"{name} {value!r}" if not isinstance(value, list) else name
    if value is None:
        return "null"
    return "a mapping" if isinstance(value, dict) else type(value).__name__


def _normal(reader: _Reader, path: Path_, fix: Callable[[Any], Any], value: Any) -> Any:
    try:
        return fix(value)
    except TxRelayError as exc:
        reader.error(path, str(exc))
        return value


def _objects(document: dict[str, Any], reader: _Reader, base: Path) -> State:
    found_accounts: dict[str, AccountSpec] = {}
    for i, item in enumerate(document.get("accounts", [])):
        at: Path_ = ("accounts", i)
        name = _normal(
            reader, (*at, "name"), lambda v: validate_name(v, "account name"), item["name"]
        )
        spec = AccountSpec(
            name,
            _normal(reader, (*at, "admin_email"), normalize_email, item["admin_email"]),
            item.get("low_quota_threshold", 0),
            item.get("overage_cap"),
            item.get("disabled", False),
            line=reader.line(at),
        )
        _unique(reader, found_accounts, name, spec, (*at, "name"), "account")
    owner: dict[str, DomainSpec] = {}
    for i, item in enumerate(document.get("domains", [])):
        at = ("domains", i)
        name = _normal(reader, (*at, "domain"), normalize_domain, item["domain"])
        account = _account(reader, found_accounts, item["account"], (*at, "account"))
        return_path = item.get("return_path")
        if return_path is not None:
            return_path = _normal(reader, (*at, "return_path"), _return_path_of(name), return_path)
        algorithms = item.get("algorithms")
        key_file = item.get("key_file")
        if key_file is not None:
            algorithms = _key_file(reader, (*at, "key_file"), base / key_file, algorithms)
            key_file = str(base / key_file)
        spec_d = DomainSpec(
            account,
            name,
            _normal(reader, (*at, "list_help"), normalize_list_help, item["list_help"]),
            return_path,
            None if algorithms is None else _ordered(algorithms),
            key_file,
            line=reader.line(at),
        )
        _unique(reader, owner, name, spec_d, (*at, "domain"), "domain")
    found_connections: dict[tuple[str, str], ConnectionSpec] = {}
    for i, item in enumerate(document.get("connections", [])):
        at = ("connections", i)
        account = _account(reader, found_accounts, item["account"], (*at, "account"))
        name = _normal(
            reader, (*at, "name"), lambda v: validate_name(v, "connection name"), item["name"]
        )
        names = []
        for j, text in enumerate(item["domains"]):
            domain = _normal(reader, (*at, "domains", j), normalize_domain, text)
            other = owner.get(domain)
            if other is not None and other.account != account:
                reader.error(
                    (*at, "domains", j),
                    f"domain {domain} belongs to account {other.account!r} (line "
                    f"{other.line}), not {account!r}; a connection may only send from its "
                    "own account's domains",
                )
            names.append(domain)
        spec_c = ConnectionSpec(
            account,
            name,
            tuple(sorted(names)),
            item.get("rate_limit"),
            item.get("bounces", "relay"),
            item.get("enabled", True),
            item.get("sandbox", False),
            line=reader.line(at),
        )
        _unique(reader, found_connections, (account, name), spec_c, (*at, "name"), "connection")
    found_hooks: dict[tuple[str, str], WebhookSpec] = {}
    for i, item in enumerate(document.get("webhooks", [])):
        at = ("webhooks", i)
        account = _account(reader, found_accounts, item["account"], (*at, "account"))
        _normal(reader, (*at, "url"), webhook_policy.parse_url, item["url"])
        events = item.get("events")
        chosen = _normal(
            reader,
            (*at, "events"),
            lambda v: webhook_policy.parse_events(
                None if v is None else ",".join(v), webhook_events.EVENTS
            ),
            events,
        )
        spec_w = WebhookSpec(
            account,
            item["url"],
            tuple(chosen or ()),
            item.get("allow_private", False),
            line=reader.line(at),
        )
        _unique(reader, found_hooks, (account, item["url"]), spec_w, (*at, "url"), "webhook")
    found_suppressions: dict[tuple[str, str], SuppressionSpec] = {}
    for i, item in enumerate(document.get("suppressions", [])):
        at = ("suppressions", i)
        account = _account(reader, found_accounts, item["account"], (*at, "account"))
        address = _normal(
            reader, (*at, "address"), suppression_ops.recipient_address, item["address"]
        )
        note = item.get("note", "")
        if len(note) > suppression_ops.MAX_NOTE_LENGTH:
            reader.error((*at, "note"), f"longer than {suppression_ops.MAX_NOTE_LENGTH} characters")
        spec_s = SuppressionSpec(account, address, note, line=reader.line(at))
        _unique(
            reader, found_suppressions, (account, address), spec_s, (*at, "address"), "suppression"
        )
    return State(
        tuple(found_accounts.values()),
        tuple(owner.values()),
        tuple(found_connections.values()),
        tuple(found_hooks.values()),
        tuple(found_suppressions.values()),
    )


def _return_path_of(domain: str) -> Callable[[str], str | None]:
    return lambda text: domains.normalize_return_path(text, domain)


def _unique(
    reader: _Reader, seen: dict[Any, Any], key: Any, spec: Any, path: Path_, what: str
) -> None:
    if key in seen:
        reader.error(path, f"duplicate {what} (first at line {seen[key].line})")
    else:
        seen[key] = spec


def _account(reader: _Reader, known: Mapping[str, AccountSpec], name: str, path: Path_) -> str:
    if name not in known:
        reader.error(path, f"account {name!r} is not among the file's accounts")
    return name


def _ordered(algorithms: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(a for a in dkim_keys.ALGORITHMS if a in algorithms)


def _key_file(
    reader: _Reader, path: Path_, key_path: Path, algorithms: list[str] | None
) -> list[str] | None:
    if algorithms is not None and len(algorithms) > 1:
        reader.error(path, "a key file is one key: give at most one algorithm with it")
        return algorithms
    try:
        material = dkim_keys.load_key_file(key_path, algorithms[0] if algorithms else None)
    except TxRelayError as exc:
        reader.error(path, str(exc))
        return algorithms
    return [material.algorithm]


def read_state(conn: psycopg.Connection, now: dt.datetime) -> State:
    """What the database holds, in the file's terms (deleted accounts and connections,
    removed webhooks and automatic suppressions are not part of it)."""
    with transaction(conn):
        summaries = account_store.account_summaries(conn, now)
        found_accounts = tuple(
            AccountSpec(
                s.account.name,
                s.account.admin_email,
                s.account.low_quota_threshold,
                s.account.overage_cap,
                s.account.disabled_at is not None,
            )
            for s in summaries
        )
        found_domains = tuple(
            DomainSpec(
                d.account_name,
                d.domain,
                d.list_help,
                d.return_path,
                _ordered([k.algorithm for k in d.signing_keys]),
            )
            for d in domain_store.list_domains(conn, None)
        )
        found_connections = tuple(
            ConnectionSpec(
                c.account_name,
                c.name,
                tuple(sorted(c.domains)),
                c.rate_limit,
                c.bounces,
                c.enabled,
                c.sandbox,
            )
            for c in connection_store.list_connections(conn)
        )
        hooks: list[WebhookSpec] = []
        manual: list[SuppressionSpec] = []
        for s in summaries:
            hooks += [
                WebhookSpec(s.account.name, w.url, tuple(w.events), w.allow_private)
                for w in webhook_store.list_webhooks(conn, s.account.id)
            ]
            manual += [
                SuppressionSpec(s.account.name, row.address, row.detail)
                for row in suppression_store.list_active(
                    conn, s.account.id, now, reason="manual", limit=ALL_SUPPRESSIONS
                )
            ]
    return State(found_accounts, found_domains, found_connections, tuple(hooks), tuple(manual))


def make_plan(wanted: State, current: State, *, prune: bool, filename: str) -> list[Step]:
    try:
        return decl.plan(wanted, current, prune=prune)
    except decl.PlanError as exc:
        raise FileErrors(f"{filename}:{exc.line}: {exc.field}: {exc.problem}") from exc


@dataclass(frozen=True)
class Services:
    """What carrying out a plan needs besides the database."""

    quota: QuotaConfig
    keys: Callable[[], KeyRing]  # opened only when a domain is created
    webhook_keys: KeyRing | None
    resolver: Resolver


@dataclass
class Secrets:
    """New credentials and webhook secrets, shown once (--secrets-out or --show-secrets)."""

    connections: list[dict[str, Any]] = field(default_factory=list)
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    # Not a secret: the accounts deleted, whose Redis keys go after the commit.
    deleted_account_ids: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.connections or self.webhooks)

    def document(self) -> dict[str, Any]:
        return {"connections": self.connections, "webhooks": self.webhooks}


def creates_secrets(steps: list[Step]) -> bool:
    return any(
        (s.kind == "connection" and s.action == "create")
        or (s.kind == "webhook" and s.action in ("create", "change"))
        for s in steps
    )


def execute(
    conn: psycopg.Connection,
    now: dt.datetime,
    steps: list[Step],
    services: Services,
    before_commit: Callable[[Secrets], None],
) -> Secrets:
    """Every step in one transaction: a failure anywhere leaves the database as it was.
    `before_commit` gets the new secrets while the transaction is still open (to write
    them out: a failure there rolls everything back)."""
    secrets = Secrets()
    with transaction(conn):
        for step in steps:
            _run(conn, now, step, services, secrets)
        before_commit(secrets)
    return secrets


def _run(
    conn: psycopg.Connection, now: dt.datetime, step: Step, services: Services, secrets: Secrets
) -> None:
    spec = step.wanted if step.wanted is not None else step.current
    if isinstance(spec, AccountSpec):
        _account_step(conn, now, step, spec, services, secrets)
    elif isinstance(spec, DomainSpec):
        _domain_step(conn, now, step, spec, services)
    elif isinstance(spec, ConnectionSpec):
        _connection_step(conn, now, step, spec, secrets)
    elif isinstance(spec, WebhookSpec):
        _webhook_step(conn, now, step, spec, services, secrets)
    elif isinstance(spec, SuppressionSpec):
        _suppression_step(conn, now, step, spec)


def _account_step(
    conn: psycopg.Connection,
    now: dt.datetime,
    step: Step,
    spec: AccountSpec,
    services: Services,
    secrets: Secrets,
) -> None:
    if step.action == "delete":
        gone = accounts.delete_account(conn, now, spec.name, force=False)
        secrets.deleted_account_ids.append(gone.account.id)
        return
    if step.action == "create":
        accounts.create_account(conn, services.quota, now, spec.name, spec.admin_email)
        changed = set(decl.differences(AccountSpec(spec.name, spec.admin_email), spec))
    else:
        changed = set(step.changes)
    if changed & {"admin_email", "low_quota_threshold", "overage_cap"}:
        accounts.change_account(
            conn,
            now,
            spec.name,
            low_quota_threshold=spec.low_quota_threshold
            if "low_quota_threshold" in changed
            else None,
            admin_email=spec.admin_email if "admin_email" in changed else None,
            overage_cap=spec.overage_cap if "overage_cap" in changed else UNCHANGED,
        )
    if "disabled" in changed:
        accounts.set_disabled(conn, now, spec.name, spec.disabled)


def _domain_step(
    conn: psycopg.Connection, now: dt.datetime, step: Step, spec: DomainSpec, services: Services
) -> None:
    if step.action == "delete":
        domain_moves.remove_domain(conn, spec.domain)
        return
    if step.action == "create":
        algorithms = spec.algorithms or ("rsa",)
        choice = KeyChoice(
            key_file=None if spec.key_file is None else Path(spec.key_file),
            algorithm=algorithms[0] if len(algorithms) == 1 else None,
            algorithms=algorithms if len(algorithms) > 1 else (),
        )
        domains.add_domain(
            conn, now, spec.account, spec.domain, spec.list_help, choice, keys=services.keys()
        )
        if spec.return_path is not None:
            domains.change_domain(conn, spec.domain, return_path=spec.return_path)
        return
    domains.change_domain(
        conn,
        spec.domain,
        list_help=spec.list_help if "list_help" in step.changes else None,
        return_path=(spec.return_path or domains.RELAY_RETURN_PATH)
        if "return_path" in step.changes
        else None,
    )


def _connection_step(
    conn: psycopg.Connection, now: dt.datetime, step: Step, spec: ConnectionSpec, secrets: Secrets
) -> None:
    if step.action == "delete":
        connections.delete_connection(conn, spec.name, spec.account, now)
        return
    if step.action == "create":
        issued = connections.create_connection(
            conn, spec.account, spec.name, spec.domains, spec.rate_limit, spec.sandbox
        )
        secrets.connections.append(
            {
                "account": spec.account,
                "connection": spec.name,
                "username": issued.connection.username,
                "password": issued.password,
            }
        )
        if spec.bounces != "relay":
            connections.change_connection(
                conn, spec.name, spec.account, ConnectionChange(bounces=spec.bounces)
            )
        if not spec.enabled:
            connections.set_enabled(conn, spec.name, spec.account, False)
        return
    changes = step.changes
    old = set(step.current.domains) if isinstance(step.current, ConnectionSpec) else set()
    change = ConnectionChange(
        rate_limit=spec.rate_limit if "rate_limit" in changes else None,
        default_rate_limit="rate_limit" in changes and spec.rate_limit is None,
        add_domains=tuple(sorted(set(spec.domains) - old)),
        remove_domains=tuple(sorted(old - set(spec.domains))),
        bounces=spec.bounces if "bounces" in changes else None,
        sandbox=spec.sandbox if "sandbox" in changes else None,
    )
    if change != ConnectionChange():
        connections.change_connection(conn, spec.name, spec.account, change)
    if "enabled" in changes:
        connections.set_enabled(conn, spec.name, spec.account, spec.enabled)


def _webhook_step(
    conn: psycopg.Connection,
    now: dt.datetime,
    step: Step,
    spec: WebhookSpec,
    services: Services,
    secrets: Secrets,
) -> None:
    """A webhook's events or allow_private change by replacing it (with a new secret)."""
    if step.action in ("delete", "change"):
        account = accounts.get_account(conn, spec.account)
        for hook in webhook_store.list_webhooks(conn, account.id):
            if hook.url == spec.url:
                webhook_ops.remove_webhook(conn, hook.id, now)
    if step.action == "delete":
        return
    added = webhook_ops.add_webhook(
        conn,
        services.webhook_keys,
        services.resolver,
        now,
        spec.account,
        spec.url,
        ",".join(spec.events),
        spec.allow_private,
    )
    secrets.webhooks.append(
        {"account": spec.account, "url": spec.url, "id": added.webhook.id, "secret": added.secret}
    )


def _suppression_step(
    conn: psycopg.Connection, now: dt.datetime, step: Step, spec: SuppressionSpec
) -> None:
    if step.action == "delete":
        suppression_ops.remove_suppression(conn, spec.account, spec.address, now)
        return
    suppression_ops.add_suppression(
        conn, spec.account, spec.address, now, reason="manual", note=spec.note, expires_days=None
    )


def export_document(state: State) -> str:
    """The state as YAML, in the order apply reads it."""
    return yaml.safe_dump(decl.document(state), sort_keys=False, allow_unicode=True, width=100)
