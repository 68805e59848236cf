"""`txrelay postfix configure` / `unconfigure`: add or remove txrelay's own master.cf services.

Each change is made first on a scratch copy of main.cf and master.cf (postconf -c SCRATCH),
which gives the unified diff that --dry-run prints; then master.cf is backed up, replaced
in one rename, and Postfix's own `postfix check` runs: if it fails, the backup goes back.
What configure added is recorded in a state file next to master.cf, so unconfigure removes
exactly that (postconf -MX) and leaves the admin's files as they were before.

With a bounce domain, main.cf changes too, in one way only: txrelay's table is appended to
relay_domains and transport_maps (the admin's entries stay). The state file keeps main.cf's
backup, its digest after the change and each list's value before and after: unconfigure
puts the backup back when main.cf is as configure left it (byte for byte), and otherwise
takes only txrelay's table out of the two lists.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import pty
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from txrelay.atomic_file import write_atomically
from txrelay.errors import ConfigError, Conflict, InvalidInput
from txrelay.provisioning.postfix import (
    CLEANUP_COMMAND,
    CLEANUP_SERVICE,
    INBOUND_LISTS,
    INBOUND_SERVICE,
    INBOUND_TABLE,
    INBOUND_TABLE_FILE,
    POSTCONF_TIMEOUT,
    InboundPlan,
    PostfixPlan,
    PostfixSettings,
    PostfixTarget,
    ServicePlan,
    master_entry,
    parse_postconf,
    postconf,
    read_settings,
)
from txrelay.provisioning.postfix_check import Problem, check_settings, milter_entries
from txrelay.provisioning.postfix_listen import bound_elsewhere, overlap, parse_service_name

STATE_FILE = "txrelay-postfix.json"
CLEANUP_KEY = f"{CLEANUP_SERVICE}/unix"
INBOUND_KEY = f"{INBOUND_SERVICE}/unix"
FILES = ("main.cf", "master.cf")


@dataclass(frozen=True)
class MainCfState:
    """What configure did to main.cf: its backup from before, its digest after, and each
    list's value before (None: not set in main.cf) and after."""

    backup: str
    sha256: str
    lists: dict[str, tuple[str | None, str]]

    def as_dict(self) -> dict[str, object]:
        return {
            "backup": self.backup,
            "sha256": self.sha256,
            "lists": {k: {"before": b, "after": a} for k, (b, a) in self.lists.items()},
        }


@dataclass(frozen=True)
class PostfixState:
    """The state file: the services configure added, and master.cf's backup from before;
    with a bounce domain also main.cf's change and the inbound table."""

    services: list[str]
    backup: str
    main_cf: MainCfState | None = None


@dataclass
class ApplyResult:
    """What configure/unconfigure changed (or would change, with --dry-run)."""

    target: PostfixTarget
    action: str
    dry_run: bool
    changes: list[tuple[str, str]] = field(default_factory=list)  # (service, what)
    main_changes: list[tuple[str, str]] = field(default_factory=list)  # (file or setting, what)
    diff: str = ""
    backups: list[Path] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target.label,
            "action": self.action,
            "config_directory": str(self.target.config_directory),
            "dry_run": self.dry_run,
            "changes": [{"file": "master.cf", "service": s, "change": c} for s, c in self.changes]
            + [
                {"file": "main.cf" if n in INBOUND_LISTS else n, "service": n, "change": c}
                for n, c in self.main_changes
            ],
            "diff": self.diff,
            "backups": [str(p) for p in self.backups],
            "warnings": [w.as_dict() for w in self.warnings],
        }


def configure_postfix(
    target: PostfixTarget, plan: PostfixPlan, *, dry_run: bool = False, now: datetime | None = None
) -> ApplyResult:
    """Add or update txrelay's services; refuses a port in use; idempotent."""
    settings = read_settings(target.config_directory, target.label)
    state = read_state(target)
    own = owned_services(settings, state, plan)
    refuse_taken_ports(target, settings, plan, own)
    result = ApplyResult(target, "configure", dry_run)
    table = target.config_directory / INBOUND_TABLE_FILE
    with tempfile.TemporaryDirectory(prefix="txrelay-postfix-") as scratch:
        copy = _scratch_copy(target, Path(scratch))
        result.changes += _set_service(copy, settings, CLEANUP_KEY, _cleanup_entry(settings, plan))
        for service in plan.services:
            result.changes += _set_service(copy, settings, service.key, service.entry())
        lists: dict[str, tuple[str | None, str]] = {}
        table_text: str | None = None
        retired = False
        if plan.inbound is not None:
            result.changes += _set_service(copy, settings, plan.inbound.key, plan.inbound.entry())
            lists = _append_table(copy)
            result.main_changes += [(n, f"appended {INBOUND_TABLE}") for n in lists]
            table_text = _table_change(table, plan.inbound)
            if table_text is not None:
                result.main_changes.append((INBOUND_TABLE_FILE, "written"))
        elif state is not None and (state.main_cf is not None or INBOUND_KEY in state.services):
            # [bounce] domain was set before and is not now: take the inbound path out.
            retired = True
            if INBOUND_KEY in state.services and INBOUND_KEY in settings.services:
                postconf(copy, "-MX", INBOUND_KEY)
                result.changes.append((INBOUND_KEY, "removed"))
            if state.main_cf is not None:
                result.main_changes += _take_table_out(copy, state.main_cf.lists)
            if table.exists():
                table_text = ""
                result.main_changes.append((INBOUND_TABLE_FILE, "removed"))
        result.diff = _diff(target, copy) + _file_diff(table, table_text)
        result.warnings = check_settings(read_settings(copy.config_directory), plan)
        if not result.diff or dry_run:
            return result
        added = [key for key, change in result.changes if change == "added"]
        new_table = table_text is not None and not table.exists()
        if table_text and not retired:
            _write_like(table, table_text.encode(), mode=0o644)
        try:
            result.backups = _replace_files(target, copy, now or datetime.now())
        except ConfigError:
            if new_table:
                table.unlink(missing_ok=True)
            raise
    previous = [key for key in state.services if key in own] if state else []
    main_cf = state.main_cf if state else None
    if retired:
        table.unlink(missing_ok=True)
        previous = [key for key in previous if key != INBOUND_KEY]
        main_cf = None
    elif lists or main_cf:
        main_cf = _main_cf_state(target, result.backups, main_cf, lists)
    master_backup = next((str(p) for p in result.backups if p.name.startswith("master.cf")), "")
    write_state(
        target,
        PostfixState(
            sorted({*previous, *added}),
            state.backup if state else master_backup,
            main_cf,
        ),
    )
    return result


def _append_table(copy: PostfixTarget) -> dict[str, tuple[str | None, str]]:
    """txrelay's table appended to each list that lacks it: {name: (before, after)}; before
    is None when main.cf did not set the list (its default, unexpanded, is kept in front
    unless it is empty)."""
    explicit = parse_postconf(postconf(copy, "-n"))
    changed: dict[str, tuple[str | None, str]] = {}
    for name in INBOUND_LISTS:
        raw = postconf(copy, "-h", name).strip()
        if INBOUND_TABLE in _elements(raw):
            continue
        before = explicit.get(name)
        base = raw if before is not None or postconf(copy, "-xh", name).strip() else ""
        after = f"{base}, {INBOUND_TABLE}" if base else INBOUND_TABLE
        postconf(copy, "-e", f"{name} = {after}")
        changed[name] = (before, after)
    return changed


def _elements(value: str) -> list[str]:
    return [item for item in value.replace(",", " ").split() if item]


def _table_change(table: Path, inbound: InboundPlan) -> str | None:
    """The table's new text, or None when it already says that."""
    text = inbound.table()
    try:
        if table.read_text() == text:
            return None
    except FileNotFoundError:
        pass
    return text


def _main_cf_state(
    target: PostfixTarget,
    backups: list[Path],
    previous: MainCfState | None,
    lists: dict[str, tuple[str | None, str]],
) -> MainCfState:
    digest = hashlib.sha256((target.config_directory / "main.cf").read_bytes()).hexdigest()
    backup = next((str(p) for p in backups if p.name.startswith("main.cf")), "")
    if previous is not None:
        return MainCfState(previous.backup or backup, digest, {**lists, **previous.lists})
    return MainCfState(backup, digest, lists)


def unconfigure_postfix(
    target: PostfixTarget, *, dry_run: bool = False, now: datetime | None = None
) -> ApplyResult:
    """Remove the services configure added and its change to main.cf; the state file goes
    once they are gone."""
    state = read_state(target)
    settings = read_settings(target.config_directory, target.label)
    present = [key for key in (state.services if state else []) if key in settings.services]
    main_cf = state.main_cf if state else None
    if not present and main_cf is None:
        raise InvalidInput(
            f"nothing to undo: txrelay postfix configure has added no service "
            f"to {target.config_directory}/master.cf (no {STATE_FILE} there, "
            "or its services are gone already)"
        )
    result = ApplyResult(
        target, "unconfigure", dry_run, changes=[(key, "removed") for key in present]
    )
    table = target.config_directory / INBOUND_TABLE_FILE
    with tempfile.TemporaryDirectory(prefix="txrelay-postfix-") as scratch:
        copy = _scratch_copy(target, Path(scratch))
        if present:
            postconf(copy, "-MX", *present)
        if main_cf is not None:
            result.main_changes += _restore_main_cf(target, copy, main_cf)
        table_exists = table.exists()
        if table_exists:
            result.main_changes.append((INBOUND_TABLE_FILE, "removed"))
        result.diff = _diff(target, copy) + (_file_diff(table, "") if table_exists else "")
        if dry_run:
            return result
        result.backups = _replace_files(target, copy, now or datetime.now())
    table.unlink(missing_ok=True)
    (target.config_directory / STATE_FILE).unlink()
    return result


def _restore_main_cf(
    target: PostfixTarget, copy: PostfixTarget, main_cf: MainCfState
) -> list[tuple[str, str]]:
    """main.cf as before configure: the backup when main.cf is as configure left it, else
    txrelay's table taken out of each list (the admin's later edits stay)."""
    current = (target.config_directory / "main.cf").read_bytes()
    backup = Path(main_cf.backup)
    if hashlib.sha256(current).hexdigest() == main_cf.sha256 and backup.is_file():
        shutil.copyfile(backup, copy.config_directory / "main.cf")
        return [(name, f"restored from {backup}") for name in main_cf.lists]
    return _take_table_out(copy, main_cf.lists)


def _take_table_out(
    copy: PostfixTarget, lists: dict[str, tuple[str | None, str]]
) -> list[tuple[str, str]]:
    """txrelay's table out of each list; a list configure set from nothing goes again."""
    changes = []
    for name, (before, after) in lists.items():
        raw = postconf(copy, "-h", name).strip()
        if raw == after:
            if before is None:
                postconf(copy, "-X", name)
            else:
                postconf(copy, "-e", f"{name} = {before}")
        elif INBOUND_TABLE in _elements(raw):
            kept = [item for item in raw.replace(",", " ").split() if item != INBOUND_TABLE]
            postconf(copy, "-e", f"{name} = {', '.join(kept)}")
        else:
            continue
        changes.append((name, f"removed {INBOUND_TABLE}"))
    return changes


def owned_services(
    settings: PostfixSettings, state: PostfixState | None, plan: PostfixPlan
) -> set[str]:
    """txrelay's services already in master.cf: recorded by configure, or (configured by an
    older txrelay) logging in against txrelay's auth socket with txrelay's milter."""
    own = {key for key in (state.services if state else []) if key in settings.services}
    for key in settings.inet_services():
        values = settings.overrides.get(key, {})
        if values.get("smtpd_sasl_path") == plan.auth_socket and any(
            s == plan.milter for s, _ in milter_entries(values.get("smtpd_milters", ""))
        ):
            own.add(key)
    return own


def refuse_taken_ports(
    target: PostfixTarget, settings: PostfixSettings, plan: PostfixPlan, own: set[str]
) -> None:
    """One line naming the service or process in the way, and the ways out."""
    interfaces = settings.main.get("inet_interfaces", "all")
    for index, service in enumerate(plan.services):
        if service.key in own:
            continue
        addresses = service.listen.addresses(interfaces)
        for other in plan.services[:index]:
            if other.listen.port == service.listen.port and overlap(
                addresses, other.listen.addresses(interfaces)
            ):
                raise InvalidInput(
                    f"--listen and --implicit-tls both take "
                    f"{service.listen.describe()}; give each its own port"
                )
        for key in settings.inet_services():
            theirs = parse_service_name(key.removesuffix("/inet"))
            if key in own or theirs is None or theirs.port != service.listen.port:
                continue
            if overlap(addresses, theirs.addresses(interfaces)):
                raise Conflict(
                    f"{service.listen.service} ({service.listen.describe()}) is "
                    f"master.cf service {key!r} of {target.label}; txrelay never "
                    f"takes a port in use: {_ways_out(service)}"
                )
        if bound_elsewhere(addresses, service.listen.port):
            raise Conflict(
                f"{service.listen.service} ({service.listen.describe()}) is in use "
                f"by another process (ss -ltnp 'sport = :{service.listen.port}' "
                f"shows which); txrelay never takes a port in use: "
                f"{_ways_out(service)}"
            )


def _ways_out(service: ServicePlan) -> str:
    option, port = service.option, service.listen.port
    other = 2465 if service.implicit_tls else 2587
    return (
        f"use another port ({option} {other}), a dedicated address "
        f"({option} 192.0.2.10:{port}) or a postmulti instance of its own "
        "(--instance postfix-txrelay)"
    )


def _cleanup_entry(settings: PostfixSettings, plan: PostfixPlan) -> str:
    """cleanup/unix as the admin has it (its -o's too), with txrelay's size limit and NUL
    among the characters it refuses (added to those main.cf or cleanup/unix refuse, if any)."""
    inherited = dict(settings.overrides.get("cleanup/unix", {}))
    for name, value in plan.cleanup_overrides:
        theirs = (
            settings.effective("cleanup/unix", name) if name == "message_reject_characters" else ""
        )
        inherited[name] = theirs if value in theirs else theirs + value
    return master_entry(CLEANUP_SERVICE, CLEANUP_COMMAND, tuple(inherited.items()))


def _set_service(
    copy: PostfixTarget, settings: PostfixSettings, key: str, entry: str
) -> list[tuple[str, str]]:
    before = postconf(copy, "-M", key).strip()
    postconf(copy, "-M", f"{key}={entry}")
    after = postconf(copy, "-M", key).strip()
    if before == after:
        return []
    return [(key, "updated" if key in settings.services else "added")]


def _scratch_copy(target: PostfixTarget, scratch: Path) -> PostfixTarget:
    for name in FILES:
        shutil.copyfile(target.config_directory / name, scratch / name)
    return PostfixTarget(scratch, f"scratch copy of {target.label}")


def _diff(target: PostfixTarget, copy: PostfixTarget) -> str:
    lines: list[str] = []
    for name in FILES:
        old = (target.config_directory / name).read_text().splitlines(keepends=True)
        new = (copy.config_directory / name).read_text().splitlines(keepends=True)
        path = str(target.config_directory / name)
        lines.extend(difflib.unified_diff(old, new, path, path))
    return "".join(lines)


def _file_diff(path: Path, new: str | None) -> str:
    """A unified diff of a file of txrelay's own (the inbound table) against its new text."""
    if new is None:
        return ""
    try:
        old = path.read_text().splitlines(keepends=True)
    except FileNotFoundError:
        old = []
    return "".join(difflib.unified_diff(old, new.splitlines(keepends=True), str(path), str(path)))


def _replace_files(target: PostfixTarget, copy: PostfixTarget, now: datetime) -> list[Path]:
    """Back up each of main.cf and master.cf that changed, put the scratch copy in its
    place, run `postfix check`; restore the backups if Postfix rejects the result."""
    stamp = now.strftime("%Y%m%dT%H%M%S")
    replaced: list[tuple[Path, Path]] = []
    for name in FILES:
        live = target.config_directory / name
        new = (copy.config_directory / name).read_bytes()
        if live.read_bytes() == new:
            continue
        backup = live.with_name(f"{name}.txrelay-{stamp}")
        shutil.copy2(live, backup)
        _write_like(live, new)
        replaced.append((live, backup))
    reason = _postfix_check(target)
    if reason is not None:
        for live, backup in replaced:
            _write_like(live, backup.read_bytes())
            backup.unlink()
        raise ConfigError(
            f"postfix -c {target.config_directory} check rejected the new "
            f"{' and '.join(live.name for live, _ in replaced)} ({reason}); restored, "
            "nothing changed: fix what it names and run configure again"
        )
    return [backup for _, backup in replaced]


def _write_like(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace `path` in one rename, keeping its mode and owner (a new file: `mode`)."""
    write_atomically(
        path,
        data,
        mode=mode if mode is not None else 0o644,
        like_existing=True,
        sync_file=False,
    )


def _postfix_check(target: PostfixTarget) -> str | None:
    """None when `postfix -c DIR check` passes, else its first error line. Postfix writes
    its messages to stderr only when that is a terminal, so it gets a pseudo-terminal
    (read while it runs: a full terminal buffer would block it)."""
    leader, follower = pty.openpty()
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(leader, chunks), daemon=True)
    reader.start()
    try:
        done = subprocess.run(
            ["postfix", "-c", str(target.config_directory), "check"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=follower,
            check=False,
            timeout=POSTCONF_TIMEOUT * 2,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as error:
        return str(error)
    finally:
        os.close(follower)
        reader.join(timeout=5)
        os.close(leader)
    if done.returncode == 0:
        return None
    lines = [
        line.strip()
        for line in b"".join(chunks).decode(errors="replace").splitlines()
        if line.strip()
    ]
    errors = [line for line in lines if "fatal" in line or "error" in line]
    return (errors or lines or [f"exit {done.returncode}"])[0]


def _drain(leader: int, chunks: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: every writer is gone and everything was read
            return
        if not chunk:
            return
        chunks.append(chunk)


def read_state(target: PostfixTarget) -> PostfixState | None:
    """What configure recorded in the config directory (None: it never added anything)."""
    path = target.config_directory / STATE_FILE
    try:
        data = json.loads(path.read_text())
        services, backup = data["services"], data["backup"]
        if not (
            isinstance(services, list)
            and all(isinstance(k, str) for k in services)
            and isinstance(backup, str)
        ):
            raise ValueError("unexpected content")
        main_cf = _read_main_cf_state(data.get("main_cf"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"{path} is unreadable ({error}); it records what txrelay postfix "
            "configure added: restore it, or remove it and txrelay's services "
            "by hand (postconf -MX)"
        ) from None
    return PostfixState(services, backup, main_cf)


def _read_main_cf_state(data: object) -> MainCfState | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError("main_cf is not an object")
    lists = {
        str(name): (value["before"], str(value["after"]))
        for name, value in dict(data["lists"]).items()
    }
    return MainCfState(str(data["backup"]), str(data["sha256"]), lists)


def write_state(target: PostfixTarget, state: PostfixState) -> None:
    path = target.config_directory / STATE_FILE
    data: dict[str, object] = {"services": state.services, "backup": state.backup}
    if state.main_cf is not None:
        data["main_cf"] = state.main_cf.as_dict()
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
