"""Processes of the benchmark: the test harness's process helpers (run a tool, keep a
daemon, wait for a port), and what only the bench needs: CPU and memory from /proc."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tests.harness.processes import (
    HarnessError,
    ManagedProcess,
    free_port,
    port_open,
    run,
    tail,
    unix_socket_open,
    wait_until,
)

__all__ = ["BenchFailure", "ManagedProcess", "ProcSample", "children_cpu_ms", "free_port",
           "machine_busy_ms", "port_open", "reset_peak_rss", "run", "sample", "tail",
           "trees_cpu_ms", "unix_socket_open", "wait_until"]

CLOCK_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


class BenchFailure(HarnessError):
    """The benchmark could not run or its result is wrong: the run must exit non-zero.
    The process helpers it shares with the test harness raise HarnessError, its parent."""


@dataclass(frozen=True)
class ProcSample:
    """CPU time (all threads) and resident memory of one process at one moment."""

    cpu_ms: float
    system_ms: float
    rss_kb: int
    hwm_kb: int


def sample(pid: int) -> ProcSample:
    # Fields after the command name (which may hold spaces): utime is 14th, stime 15th.
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_ms = (int(stat[11]) + int(stat[12])) * CLOCK_TICK_MS
    system_ms = int(stat[12]) * CLOCK_TICK_MS
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return ProcSample(cpu_ms, system_ms, _kb(status.get("VmRSS")), _kb(status.get("VmHWM")))


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM afresh, so each scenario reports its own peak (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _kb(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


def machine_busy_ms() -> float:
    """CPU time used by the whole machine so far (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) * CLOCK_TICK_MS


def trees_cpu_ms(roots: dict[str, tuple[int, ...]]) -> dict[str, float]:
    """CPU time so far of each named group of process trees: every process under a root, the
    root included, alive or gone. A live process counts its own time (utime + stime) and
    that of its children that exited (cutime + cstime: Linux adds a child's times, and its
    own exited children's, to its parent when the parent reaps it), so the difference of two
    readings holds the Postfix daemons and PostgreSQL backends that came and went between
    them. A process under two roots counts for the nearer one only. One pass over /proc for
    all groups; a root that is gone counts 0."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(v) for v in fields[11:15]) * CLOCK_TICK_MS
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    # A group's tree stops at another group's root: the bench starts the milters and the
    # sink itself, and they count as theirs, not as the bench's.
    every_root = {root for group in roots.values() for root in group}
    totals = {}
    for name, group in roots.items():
        total, todo = 0.0, [root for root in group if root in times]
        while todo:
            pid = todo.pop()
            total += times[pid]
            todo.extend(child for child in children.get(pid, ()) if child not in every_root)
        totals[name] = total
    return totals


def children_cpu_ms(parent: int, names: tuple[str, ...]) -> float:
    """CPU time so far of `parent`'s child processes whose name (/proc/PID/comm) is one of
    `names`, e.g. Dovecot's auth and auth-worker under its master. A child that exits between
    two readings takes its share with it: the auth process lives as long as Dovecot does."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
        if int(fields[1]) == parent and comm in names:
            total += _run_time_ms(entry)
    return total


def _run_time_ms(proc: Path) -> float:
    """CPU time of all of a process's threads in nanoseconds from schedstat: a login costs
    a fraction of a clock tick, below what /proc/PID/stat can show."""
    total_ns = 0
    for task in (proc / "task").iterdir():
        try:
            total_ns += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total_ns / 1e6
