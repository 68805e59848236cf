"""Medians over the runs, ratios between targets, and the issue's targets as PASS/MISS lines."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import asdict, fields

from bench.scenarios import Measurement
from bench.stack import NONE, ODK_INET, ODK_UNIX, SUBMIT_NONE, TX_INET, TX_UNIX

# The submission scenarios: a STARTTLS + AUTH session per message (how most shops send; also
# measured on SUBMIT_NONE, the ceiling), and sessions reused for many messages.
SUBMISSION, SUBMISSION_REUSE = "submission", "sub-reuse"
# Figures kept in `extra` whose median over the runs the report shows.
EXTRA_MEDIANS = ("auth_cpu_ms_per_login",)

NUMERIC = [f.name for f in fields(Measurement)
           if f.name not in ("scenario", "target", "size", "messages", "extra")]
COLUMNS = [("msg/s", "msg_per_s"), ("cpu ms/msg", "milter_cpu_ms_per_msg"),
           ("of it sys", "milter_system_ms_per_msg"),
           ("eom p50", "eom_ms_p50"), ("eom p99", "eom_ms_p99"), ("txn p50", "txn_ms_p50"),
           ("txn p99", "txn_ms_p99"), ("client p99", "client_ms_p99"),
           ("peak RSS MB", "peak_rss_mb"), ("host cpu ms/msg", "machine_cpu_ms_per_msg"),
           ("load", "load1")]


def medians(measurements: Iterable[Measurement]) -> dict[tuple[str, str], dict[str, object]]:
    """(scenario, target) -> the median of every figure over the runs, plus the runs' msg/s."""
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.scenario, m.target), []).append(m)
    table: dict[tuple[str, str], dict[str, object]] = {}
    for key, group in groups.items():
        row: dict[str, object] = {"size": group[0].size, "messages": group[0].messages,
                                  "runs": len(group),
                                  "msg_per_s_runs": [m.msg_per_s for m in group]}
        for name in NUMERIC:
            values = [getattr(m, name) for m in group if getattr(m, name) is not None]
            row[name] = round(statistics.median(values), 2) if values else None
        loads = [float(m.extra["load1"]) for m in group  # type: ignore[arg-type]
                 if isinstance(m.extra.get("load1"), int | float)]
        row["load1"] = round(statistics.median(loads), 2) if loads else None
        for name in EXTRA_MEDIANS:
            found = [float(m.extra[name]) for m in group  # type: ignore[arg-type]
                     if isinstance(m.extra.get(name), int | float)]
            row[name] = round(statistics.median(found), 3) if found else None
        row["extra"] = group[-1].extra
        table[key] = row
    return table


def render(table: dict[tuple[str, str], dict[str, object]]) -> str:
    head = f"{'scenario':<11} {'target':<14} {'msgs':>5} " + " ".join(
        f"{title:>10}" for title, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for (scenario, target), row in table.items():
        cells = " ".join(f"{_cell(row.get(name)):>10}" for _, name in COLUMNS)
        lines.append(f"{scenario:<11} {target:<14} {row['messages']:>5} {cells}")
    return "\n".join(lines)


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _get(table: dict[tuple[str, str], dict[str, object]], scenario: str, target: str,
         name: str) -> float | None:
    value = table.get((scenario, target), {}).get(name)
    return float(value) if isinstance(value, int | float) else None


def ratios(table: dict[tuple[str, str], dict[str, object]]) -> list[str]:
    """Ratios of the medians, and each run's own ratios (targets of one run share its load:
    the run-by-run ratios show how much of a median ratio is noise)."""
    lines = []
    for scenario in ("10KB", "1MB"):
        tx = _get(table, scenario, TX_UNIX, "msg_per_s")
        for reference in (NONE, ODK_UNIX, ODK_INET):
            ref = _get(table, scenario, reference, "msg_per_s")
            if tx and ref:
                lines.append(f"{scenario}: txrelay-unix / {reference} = {tx / ref:.2f}"
                             f"   (run by run: {_run_ratios(table, scenario, reference)})")
        tx_inet = _get(table, scenario, TX_INET, "msg_per_s")
        if tx and tx_inet:
            lines.append(f"{scenario}: txrelay-inet / txrelay-unix = {tx_inet / tx:.2f}")
    ceiling = _get(table, SUBMISSION, SUBMIT_NONE, "msg_per_s")
    for target in (TX_UNIX, ODK_UNIX):
        rate = _get(table, SUBMISSION, target, "msg_per_s")
        if rate and ceiling:
            lines.append(f"{SUBMISSION} (session per message): {target} / {SUBMIT_NONE} = "
                         f"{rate / ceiling:.2f}   (run by run: "
                         f"{_run_ratios(table, SUBMISSION, SUBMIT_NONE, target)})")
    return lines


CPU_GROUPS = ("postfix", "txrelay", "opendkim", "dovecot", "postgresql", "redis", "smtp-sink",
              "bench", "rest")


def cpu_breakdown(measurements: Iterable[Measurement]) -> list[str]:
    """Where the machine's CPU went per message, median over the runs of each (scenario,
    target): each part of the path (every process of it, see Stack.cpu_groups), the bench
    itself (smtp-source, the Python client) and the rest (no group's). On 2 saturated cores
    throughput follows this sum: a target that adds x ms here loses that share of msg/s."""
    groups: dict[tuple[str, str], list[dict[str, float]]] = {}
    for m in measurements:
        spent = m.extra.get("cpu_ms_per_msg")
        if isinstance(spent, dict) and spent:
            groups.setdefault((m.scenario, m.target), []).append(spent)
    if not groups:
        return []
    head = f"{'scenario':<11} {'target':<16}" + "".join(f"{name:>11}" for name in CPU_GROUPS) \
        + f"{'sum':>9}"
    lines = [head, "-" * len(head)]
    for (scenario, target), runs in groups.items():
        row = {name: statistics.median(run.get(name, 0.0) for run in runs) for name in CPU_GROUPS}
        lines.append(f"{scenario:<11} {target:<16}"
                     + "".join(f"{row[name]:>11.2f}" for name in CPU_GROUPS)
                     + f"{sum(row.values()):>9.2f}")
    return lines


def submission_report(table: dict[tuple[str, str], dict[str, object]]) -> list[str]:
    """msg/s of each submission scenario, the ratio to the ceiling and to session reuse, and
    the CPU Dovecot's auth processes spent per login."""
    lines = []
    for scenario, target, what in (
            (SUBMISSION, TX_UNIX, "session per message, txrelay"),
            (SUBMISSION, ODK_UNIX, "session per message, OpenDKIM instead"),
            (SUBMISSION, SUBMIT_NONE, "session per message, no milter (ceiling)"),
            (SUBMISSION_REUSE, TX_UNIX, "sessions reused, txrelay")):
        row = table.get((scenario, target))
        if row is None:
            continue
        extra = row.get("extra")
        sessions = extra.get("sessions") if isinstance(extra, dict) else None
        lines.append(f"   {what:<42} {_cell(row.get('msg_per_s')):>7} msg/s  "
                     f"{row['messages']} msgs in {sessions} sessions  AUTH CPU "
                     f"{_cell(row.get('auth_cpu_ms_per_login'))} ms/login (Dovecot)")
    tx = _get(table, SUBMISSION, TX_UNIX, "msg_per_s")
    ceiling = _get(table, SUBMISSION, SUBMIT_NONE, "msg_per_s")
    if tx and ceiling:
        lines.append(f"   session per message: txrelay / {SUBMIT_NONE} = {tx / ceiling:.2f}")
    opendkim = _get(table, SUBMISSION, ODK_UNIX, "msg_per_s")
    if opendkim and ceiling:
        lines.append(f"   session per message: OpenDKIM / {SUBMIT_NONE} = "
                     f"{opendkim / ceiling:.2f} (the reference milter on the same path)")
    if tx and opendkim:
        lines.append(f"   session per message: txrelay / OpenDKIM = {tx / opendkim:.2f}")
    reuse = _get(table, SUBMISSION_REUSE, TX_UNIX, "msg_per_s")
    if tx and reuse:
        lines.append(f"   session per message / sessions reused (txrelay) = {tx / reuse:.2f}")
    return lines


def recipients_report(table: dict[tuple[str, str], dict[str, object]]) -> list[str]:
    """For each multi-recipient scenario: recipients a second and the cost per recipient."""
    lines = []
    for (scenario, target), row in table.items():
        extra = row.get("extra")
        count = extra.get("recipients") if isinstance(extra, dict) else None
        if not isinstance(count, int) or target != TX_UNIX:
            continue
        rate = _get(table, scenario, target, "msg_per_s")
        cpu = _get(table, scenario, target, "milter_cpu_ms_per_msg")
        host = _get(table, scenario, target, "machine_cpu_ms_per_msg")
        lines.append(
            f"   {count:>3} recipients/msg: {_cell(rate)} msg/s = "
            f"{_cell(None if rate is None else round(rate * count, 1))} recipients/s; "
            f"milter CPU {_per_rcpt(cpu, count)} ms/recipient "
            f"({_cell(cpu)} ms/msg); host CPU {_per_rcpt(host, count)} ms/recipient; "
            f"eom p99 {_cell(row.get('eom_ms_p99'))} ms")
    return lines


def _per_rcpt(value: float | None, count: int) -> str:
    return "-" if value is None else f"{value / count:.3f}"


def _run_ratios(table: dict[tuple[str, str], dict[str, object]], scenario: str,
                reference: str, target: str = TX_UNIX) -> str:
    ours = table[(scenario, target)]["msg_per_s_runs"]
    theirs = table[(scenario, reference)]["msg_per_s_runs"]
    assert isinstance(ours, list) and isinstance(theirs, list)
    return " ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs, strict=False) if b)


def targets(table: dict[tuple[str, str], dict[str, object]]) -> list[str]:
    """The issue's targets, each PASS/MISS/n.a. with the measured value."""
    def ratio(a: tuple[str, str], b: tuple[str, str]) -> float | None:
        x, y = _get(table, *a, "msg_per_s"), _get(table, *b, "msg_per_s")
        return x / y if x and y else None

    checks = [
        ("10KB unix throughput >= 1.0 x OpenDKIM-unix",
         ratio(("10KB", TX_UNIX), ("10KB", ODK_UNIX)), 1.0, True),
        ("10KB unix throughput >= 0.75 x no milter (stretch)",
         ratio(("10KB", TX_UNIX), ("10KB", NONE)), 0.75, True),
        ("10KB milter CPU <= 4 ms/msg", _get(table, "10KB", TX_UNIX, "milter_cpu_ms_per_msg"),
         4.0, False),
        ("1MB throughput >= 1.0 x OpenDKIM-unix",
         ratio(("1MB", TX_UNIX), ("1MB", ODK_UNIX)), 1.0, True),
        ("inet within 10% of unix (10KB, ratio >= 0.9)",
         ratio(("10KB", TX_INET), ("10KB", TX_UNIX)), 0.9, True),
        ("EOM p99 <= 25 ms, 10KB", _get(table, "10KB", TX_UNIX, "eom_ms_p99"), 25.0, False),
        ("EOM p99 <= 25 ms, 100KB", _get(table, "100KB", TX_UNIX, "eom_ms_p99"), 25.0, False),
        ("30MB x N: milter peak RSS < 1024 MB", _get(table, "big", TX_UNIX, "peak_rss_mb"),
         1024.0, False),
        (f"{SUBMISSION}, a session per message: txrelay >= 0.8 x {SUBMIT_NONE}",
         ratio((SUBMISSION, TX_UNIX), (SUBMISSION, SUBMIT_NONE)), 0.8, True),
        ("AUTH CPU per login (Dovecot) <= 1 ms",
         _get(table, SUBMISSION, TX_UNIX, "auth_cpu_ms_per_login"), 1.0, False),
        ("small messages during 30MB: client p99 < 1000 ms",
         _get(table, "big", TX_UNIX, "client_ms_p99"), 1000.0, False),
    ]
    lines = []
    for title, value, limit, at_least in checks:
        if value is None:
            lines.append(f"n.a.  {title}")
            continue
        ok = value >= limit if at_least else value <= limit
        lines.append(f"{'PASS' if ok else 'MISS'}  {title}: {value:.2f}")
    return lines


def as_json(table: dict[tuple[str, str], dict[str, object]],
            raw: list[Measurement]) -> dict[str, object]:
    return {"medians": [{"scenario": s, "target": t, **row} for (s, t), row in table.items()],
            "runs": [asdict(m) for m in raw]}
