"""What `txrelay apply` decides: the objects a file names, and the plan (create, change,
delete) that makes the relay hold exactly them. Pure: reading the file and the database and
carrying out the plan live in txrelay.provisioning.declarative."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

Kind = Literal["account", "domain", "connection", "webhook", "suppression"]
Action = Literal["create", "change", "delete"]

# The order objects are created and changed in (what a later kind refers to comes first);
# deletions run in the opposite order.
KINDS: tuple[Kind, ...] = ("account", "domain", "connection", "webhook", "suppression")


@dataclass(frozen=True)
class AccountSpec:
    name: str
    admin_email: str
    low_quota_threshold: int = 0
    overage_cap: int | None = None
    disabled: bool = False
    line: int = field(default=0, compare=False)

    @property
    def key(self) -> tuple[str, ...]:
        return (self.name,)


@dataclass(frozen=True)
class DomainSpec:
    account: str
    domain: str
    list_help: str
    return_path: str | None = None  # None: the relay-wide [bounce] domain
    # The signing keys' algorithms; None in a file that leaves them out (rsa when created,
    # whatever the domain has otherwise).
    algorithms: tuple[str, ...] | None = None
    key_file: str | None = field(default=None, compare=False)  # used when created only
    line: int = field(default=0, compare=False)

    @property
    def key(self) -> tuple[str, ...]:
        return (self.domain,)


@dataclass(frozen=True)
class ConnectionSpec:
    account: str
    name: str
    domains: tuple[str, ...]  # sorted
    rate_limit: int | None = None  # None: the default for the account's plan
    bounces: str = "relay"
    enabled: bool = True
    sandbox: bool = False  # captured by the relay, never delivered (connection --sandbox)
    line: int = field(default=0, compare=False)

    @property
    def key(self) -> tuple[str, ...]:
        return (self.account, self.name)


@dataclass(frozen=True)
class WebhookSpec:
    account: str
    url: str
    events: tuple[str, ...]
    allow_private: bool = False
    line: int = field(default=0, compare=False)

    @property
    def key(self) -> tuple[str, ...]:
        return (self.account, self.url)


@dataclass(frozen=True)
class SuppressionSpec:
    account: str
    address: str
    note: str = ""
    line: int = field(default=0, compare=False)

    @property
    def key(self) -> tuple[str, ...]:
        return (self.account, self.address)


Spec = AccountSpec | DomainSpec | ConnectionSpec | WebhookSpec | SuppressionSpec


@dataclass(frozen=True)
class State:
    """Every object of one side (the file, or the database), by kind."""

    accounts: tuple[AccountSpec, ...] = ()
    domains: tuple[DomainSpec, ...] = ()
    connections: tuple[ConnectionSpec, ...] = ()
    webhooks: tuple[WebhookSpec, ...] = ()
    suppressions: tuple[SuppressionSpec, ...] = ()

    def of(self, kind: Kind) -> tuple[Spec, ...]:
        by_kind: dict[Kind, tuple[Spec, ...]] = {
            "account": self.accounts,
            "domain": self.domains,
            "connection": self.connections,
            "webhook": self.webhooks,
            "suppression": self.suppressions,
        }
        return by_kind[kind]


@dataclass(frozen=True)
class Step:
    """One line of the plan. `changes` maps a field to (now, wanted) for a change."""

    action: Action
    kind: Kind
    key: tuple[str, ...]
    wanted: Spec | None  # None for a delete
    current: Spec | None  # None for a create
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.kind} " + " / ".join(repr(part) for part in self.key)

    def view(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "kind": self.kind,
            "key": list(self.key),
            "changes": {
                name: {"from": _plain(old), "to": _plain(new)}
                for name, (old, new) in self.changes.items()
            },
        }


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class PlanError(ValueError):
    """The file asks for something apply does not do (the problem says what to run)."""

    def __init__(self, line: int, field_name: str, problem: str) -> None:
        super().__init__(problem)
        self.line = line
        self.field = field_name
        self.problem = problem


def plan(wanted: State, current: State, *, prune: bool) -> list[Step]:
    """Creates and changes in KINDS order, then (with prune) deletions in reverse order.

    With prune every domain a connection names must be in the file: the domains it does
    not name are deleted, and a connection would lose one it was just given."""
    if prune:
        declared = {spec.domain for spec in wanted.domains}
        for connection in wanted.connections:
            for domain in connection.domains:
                if domain not in declared:
                    raise PlanError(
                        connection.line,
                        "domains",
                        f"{domain} is not among the file's domains, and --prune deletes the "
                        "domains the file does not name; add it to the file",
                    )
    steps: list[Step] = []
    for kind in KINDS:
        now = {spec.key: spec for spec in current.of(kind)}
        for spec in wanted.of(kind):
            old = now.get(spec.key)
            if old is None:
                steps.append(Step("create", kind, spec.key, spec, None))
                continue
            changes = differences(old, spec)
            if changes:
                steps.append(Step("change", kind, spec.key, spec, old, changes))
    if prune:
        for kind in reversed(KINDS):
            named = {spec.key for spec in wanted.of(kind)}
            gone_accounts = {
                spec.key[0] for spec in current.accounts if spec.key not in _keys(wanted.accounts)
            }
            for spec in current.of(kind):
                if spec.key in named:
                    continue
                if kind != "account" and _account_of(spec) in gone_accounts:
                    continue  # deleting the account takes it along
                steps.append(Step("delete", kind, spec.key, None, spec))
    return steps


def _keys(specs: tuple[Spec, ...]) -> set[tuple[str, ...]]:
    return {spec.key for spec in specs}


def _account_of(spec: Spec) -> str:
    return spec.name if isinstance(spec, AccountSpec) else spec.account


def differences(old: Spec, new: Spec) -> dict[str, tuple[Any, Any]]:
    """The compared fields that differ, as (old, new). A domain's account and keys are not
    changed by apply: PlanError names the command that does it."""
    changes = {}
    for item in fields(new):
        if not item.compare:
            continue
        before, after = getattr(old, item.name), getattr(new, item.name)
        if item.name == "algorithms" and after is None:
            continue  # the file does not say: keep the keys the domain has
        if before != after:
            changes[item.name] = (before, after)
    if isinstance(new, DomainSpec):
        if "account" in changes:
            raise PlanError(
                new.line,
                "account",
                f"domain {new.domain} belongs to account {changes['account'][0]!r} now, not "
                f"{new.account!r}; move it first with 'txrelay domain move {new.domain} "
                "--to ACCOUNT'",
            )
        if "algorithms" in changes:
            raise PlanError(
                new.line,
                "algorithms",
                f"domain {new.domain} signs with {', '.join(changes['algorithms'][0])}, the "
                f"file says {', '.join(changes['algorithms'][1])}; apply does not replace "
                f"keys: rotate with 'txrelay domain rotate-key {new.domain}'",
            )
    return changes


def describe(step: Step) -> list[str]:
    """The plan as a diff: '+' create, '~' change (a line per field), '-' delete."""
    sign = {"create": "+", "change": "~", "delete": "-"}[step.action]
    lines = [f"{sign} {step.label}"]
    for name, (old, new) in step.changes.items():
        lines.append(f"    {name}: {_text(old)} -> {_text(new)}")
    return lines


def _text(value: Any) -> str:
    if value is None:
        return "(default)"
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def document(state: State) -> dict[str, Any]:
    """The state as an apply file holds it (export): defaults left out, no line numbers."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        items = []
        for spec in state.of(kind):
            item: dict[str, Any] = {}
            for entry in fields(spec):
                if entry.name in ("line", "key_file"):
                    continue
                value = getattr(spec, entry.name)
                if entry.name not in _REQUIRED[kind] and value == entry.default:
                    continue
                item[entry.name] = list(value) if isinstance(value, tuple) else value
            items.append(item)
        out[kind + "s"] = items
    return out


_REQUIRED: dict[Kind, set[str]] = {
    "account": {"name", "admin_email"},
    "domain": {"account", "domain", "list_help"},
    "connection": {"account", "name", "domains"},
    "webhook": {"account", "url", "events"},
    "suppression": {"account", "address"},
}
