"""The bench's CPU per part of the path: a process tree's CPU counts the children that came
and went between two readings (Postfix's daemons, PostgreSQL's backends), and nothing of a
process outside the tree; the report shows each part's median over the runs."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

from bench.procs import trees_cpu_ms
from bench.report import cpu_breakdown
from bench.scenarios import Measurement

# A child that starts a grandchild, which burns about 0.3 s of CPU and exits; the child
# reaps it, then waits to be told to go, so the reading is taken while it still lives.
BURN = "i = 0\nwhile i < 3_000_000: i += 1"
PARENT = (
    "import subprocess, sys\n"
    f"subprocess.run([sys.executable, '-c', {BURN!r}], check=True)\n"
    "print('burnt', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_a_tree_counts_children_that_exited_and_nothing_outside_it() -> None:
    with subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None and child.stdin is not None
        groups = {"tree": (child.pid,), "gone": (2**22 + 1,)}
        before = trees_cpu_ms(groups)
        # A process beside the tree burns three times as much meanwhile.
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", BURN.replace("3_000_000", "9_000_000")],
                       check=True)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert child.stdout.readline() == "burnt\n"
        after = trees_cpu_ms(groups)
        child.stdin.close()
        child.wait()
    burnt = after["tree"] - before["tree"]
    assert burnt >= 100, f"the exited grandchild's CPU is missing: {burnt} ms"
    beside = 1000 * (children_after.ru_utime + children_after.ru_stime
                     - children_before.ru_utime - children_before.ru_stime)
    assert burnt < beside, f"the tree counted a process outside it: {burnt} ms"
    assert after["gone"] == before["gone"] == 0.0


def test_a_tree_stops_at_another_groups_root() -> None:
    """The bench starts the milters itself: their CPU is theirs, not the bench's."""
    with subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None and child.stdin is not None
        groups = {"parent": (os.getpid(),), "child": (child.pid,)}
        before = trees_cpu_ms(groups)
        assert child.stdout.readline() == "burnt\n"
        after = trees_cpu_ms(groups)
        child.stdin.close()
        child.wait()
    burnt = after["child"] - before["child"]
    assert burnt >= 100
    assert after["parent"] - before["parent"] < burnt


def _run(target: str, **spent: float) -> Measurement:
    return Measurement("10KB", target, 10_000, 200, 1.0, 200.0,
                       extra={"cpu_ms_per_msg": spent})


def test_the_breakdown_shows_each_part_as_the_median_of_the_runs() -> None:
    lines = cpu_breakdown([
        _run("txrelay-unix", postfix=2.0, txrelay=1.0, postgresql=0.5, rest=0.1),
        _run("txrelay-unix", postfix=4.0, txrelay=9.0, postgresql=0.7, rest=0.1),
        _run("txrelay-unix", postfix=3.0, txrelay=2.0, postgresql=0.6, rest=0.1),
        _run("opendkim-unix", postfix=2.5, opendkim=1.5),
    ])
    header = lines[0].split()
    rows = {line.split()[1]: line.split()[2:] for line in lines[2:]}
    txrelay = dict(zip(header[2:], rows["txrelay-unix"], strict=True))
    assert txrelay["postfix"] == "3.00" and txrelay["txrelay"] == "2.00"
    assert txrelay["postgresql"] == "0.60" and txrelay["opendkim"] == "0.00"
    assert txrelay["sum"] == "5.70"
    assert dict(zip(header[2:], rows["opendkim-unix"], strict=True))["sum"] == "4.00"


def test_no_breakdown_without_readings() -> None:
    assert cpu_breakdown([Measurement("10KB", "postfix-only", 10_000, 200, 1.0, 200.0)]) == []
