"""`python -m bench [--quick] [--profile]`: the milter's cost next to Postfix alone and OpenDKIM.

Brings up its own Postfix, smtp-sink, Dovecot, OpenDKIM and txrelay milters under a temp
directory, runs the scenarios (medians of --runs), applies the 10 KB run's Postfix log with
the real tracker, prints the table, the ratios and the issue's targets, and writes
results.json. Exits 1 when any scenario sent, delivered or signed
the wrong messages; missed performance targets are reported, not failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import redis

from bench import nodes
from bench import plan as plans
from bench.backing import probe_latency
from bench.client import Login
from bench.procs import BenchFailure
from bench.profile import Profiler, summarise
from bench.report import (
    SUBMISSION,
    SUBMISSION_REUSE,
    as_json,
    cpu_breakdown,
    medians,
    ratios,
    recipients_report,
    render,
    submission_report,
    targets,
)
from bench.scenarios import Measurement, Runner
from bench.stack import (
    NONE,
    ODK_INET,
    ODK_UNIX,
    SUBMIT_NONE,
    TX_INET,
    TX_UNIX,
    Stack,
    bench_stack,
)
from bench.tracking import TARGET_RATIO, LogSpan, TrackerFigure, apply_log, log_rate
from tests.harness.processes import HarnessError


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # `kill` (SIGTERM) unwinds like Ctrl-C, so the bench's Postfix, Dovecot, OpenDKIM,
    # milters and database are stopped and dropped, not left running.
    signal.signal(signal.SIGTERM, _terminated)
    plan = plans.QUICK if args.quick else plans.FULL
    if args.runs:
        plan = plans.Plan(**{**plan.__dict__, "runs": args.runs})
    root = Path(args.directory or tempfile.mkdtemp(prefix="txrelay-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # smtpd (user postfix) must reach the sockets below it
    results = root / "results"
    results.mkdir(exist_ok=True)
    print(f"bench: {'quick' if args.quick else 'full'} run in {root}; load average "
          f"{_load()} on {os.cpu_count()} CPUs", flush=True)
    busy = _busy_warning()
    if busy:
        print(busy, flush=True)
    raw: list[Measurement] = []
    profile = None
    tracker: TrackerFigure | None = None
    heavy: TrackerFigure | None = None  # the same over the rcpt50 log (no target)
    probe: dict[str, float] = {}
    failure = None
    try:
        with bench_stack(root) as stack:
            runner = Runner(stack, results, plan.verify_sample, args.keep_dumps,
                            rss_guard_mb=args.rss_guard_mb)
            probe = probe_latency(stack.config.database.url)
            print(f"bench: backing services now: {probe}", flush=True)
            _run_all(runner, stack, plan, args, raw)
            tracker = _tracker_figure(stack, raw, results)
            heavy = _tracker_figure(stack, raw, results, scenario="rcpt50")
            profile = _profile(runner, stack, plan, results) if args.profile else None
    except HarnessError as exc:  # BenchFailure, or a shared process helper's failure
        failure = exc
    except (OSError, subprocess.SubprocessError, psycopg.Error, redis.RedisError) as exc:
        failure = BenchFailure(f"{exc.__class__.__name__}: {exc}")
    for bulky in ("messages", "sink-spool"):  # up to 300 MB; results/ stays
        shutil.rmtree(root / bulky, ignore_errors=True)
    _report(raw, profile, results, args, probe, tracker, busy, heavy)
    if failure is not None:
        print(f"\nBENCH FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


PROFILE_RATE = 250  # py-spy samples per second
# What --only takes: "submission" is the session-per-message scenario, its ceiling and the
# session-reuse one; "rcpt" the 10- and 50-recipient ones.
SCENARIO_GROUPS = ("10KB", "1MB", "100KB", "submission", "rcpt", "big", "nodes")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small counts, one run: checks the harness, not the figures")
    parser.add_argument("--runs", type=int, default=0, help="repetitions (default 3, quick 1)")
    parser.add_argument("--profile", action="store_true",
                        help="also record the txrelay milter with py-spy (10 KB and 1 MB "
                             "runs), and the tracker with cProfile (one more 10 KB run)")
    parser.add_argument("--only", default="",
                        help=f"comma list of scenarios: {','.join(SCENARIO_GROUPS)}")
    parser.add_argument("--directory", help="work directory (default: a new /tmp dir)")
    parser.add_argument("--rss-guard-mb", type=int, default=8192,
                        help="stop the 30 MB scenario (and fail) when the milter's RSS passes "
                             "this, to protect the machine (default 8192)")
    parser.add_argument("--keep-dumps", action="store_true",
                        help="keep every message smtp-sink received")
    return parser


def _run_all(runner: Runner, stack: Stack, plan: plans.Plan, args: argparse.Namespace,
             raw: list[Measurement]) -> None:
    wanted = set(filter(None, args.only.split(","))) or set(SCENARIO_GROUPS)
    for name in (NONE, ODK_UNIX, ODK_INET, TX_UNIX, TX_INET):
        _show(runner.smtp_source("warmup", stack.targets[name], plans.SMALL_SIZE, plan.warmup))
    login = Login(stack.sender.username, stack.sender.password)
    for run in range(1, plan.runs + 1):
        print(f"-- run {run} of {plan.runs} (load {_load()})", flush=True)
        if "10KB" in wanted:
            for name in (NONE, ODK_UNIX, ODK_INET, TX_UNIX, TX_INET):
                raw.append(_show(runner.smtp_source("10KB", stack.targets[name],
                                                    plans.SMALL_SIZE, plan.small)))
        if "1MB" in wanted:
            for name in (NONE, ODK_UNIX, TX_UNIX):
                raw.append(_show(runner.smtp_source("1MB", stack.targets[name],
                                                    plans.LARGE_SIZE, plan.large)))
        if "100KB" in wanted:
            raw.append(_show(runner.smtp_source("100KB", stack.targets[TX_UNIX],
                                                plans.MEDIUM_SIZE, plan.medium)))
        if "submission" in wanted:
            # As most shops send: a new session, STARTTLS and AUTH for every message; through
            # txrelay, through the same service with OpenDKIM (the reference milter on the
            # same path), then without a milter (the ceiling).
            for name, port in ((TX_UNIX, stack.submission_port),
                               (ODK_UNIX, stack.submission_opendkim_port),
                               (SUBMIT_NONE, stack.submission_ceiling_port)):
                raw.append(_show(runner.client(
                    SUBMISSION, stack.targets[name], plans.SMALL_SIZE,
                    sessions=plan.submission_clients, per_session=1,
                    rounds=plan.submission_rounds, login=login, port=port)))
            raw.append(_show(runner.client(
                SUBMISSION_REUSE, stack.targets[TX_UNIX], plans.SMALL_SIZE,
                sessions=plan.submission_sessions, per_session=plan.submission_per_session,
                login=login, port=stack.submission_port)))
        if "rcpt" in wanted:
            for count in plans.RECIPIENT_COUNTS:
                raw.append(_show(runner.smtp_source(
                    f"rcpt{count}", stack.targets[TX_UNIX], plans.SMALL_SIZE,
                    plan.multi_rcpt_messages, recipients=count)))
    if "nodes" in wanted:
        _two_nodes_against_one(runner, stack, plan, raw)
    if "big" in wanted:
        raw.append(_show(runner.big_with_small(
            stack.targets[TX_UNIX], big_count=plan.big_count, big_size=plans.BIG_SIZE,
            small_sessions=plan.big_small_sessions,
            small_per_session=plan.big_small_per_session)))


def _two_nodes_against_one(runner: Runner, stack: Stack, plan: plans.Plan,
                           raw: list[Measurement]) -> None:
    """The same load through one complete node and through two (bench/nodes.py), each run
    alternating the order."""
    print(f"-- two nodes against one (load {_load()}): {nodes.NOTE}", flush=True)
    with nodes.bench_nodes(stack) as both:
        for run in range(plan.runs):
            order = (both[:1], both) if run % 2 == 0 else (both, both[:1])
            for used in order:
                runner.sequence += 1
                raw.append(_show(nodes.send(stack, used, plan.nodes_messages,
                                            runner.results_dir, runner.sequence,
                                            plan.verify_sample)))


def _tracker_figure(stack: Stack, raw: list[Measurement], results: Path,
                    profile_to: Path | None = None,
                    scenario: str = "10KB") -> TrackerFigure | None:
    """The real tracker over the Postfix log of each txrelay-unix run of `scenario` (each
    run's messages are its own, so each log is applied once) against the rate Postfix
    logged it at; the run of the median ratio, with every run's ratio. 10KB is the bench's
    top throughput through txrelay (the target), rcpt50 the most delivery lines a message
    logs."""
    found = [m for m in raw if (m.scenario, m.target) == (scenario, TX_UNIX)
             and isinstance(m.extra.get("log_span"), list)]
    figures = []
    for number, measured in enumerate(found, 1):
        offsets = measured.extra["log_span"]
        assert isinstance(offsets, list)
        span = LogSpan(stack.postfix.maillog, int(offsets[0]), int(offsets[1]),
                       measured.elapsed_s)
        # A copy of its own for each pass: a new tracker_positions row, so a fresh cursor.
        name = f"tracker-maillog-{scenario}-{number}" + ("-profiled" if profile_to else "")
        applied = apply_log(stack.config, span, results / name, profile_to)
        figure = TrackerFigure(f"{measured.scenario}/{measured.target}", measured.messages,
                               measured.msg_per_s, log_rate(span), applied)
        print(f"-- tracker over the Postfix log of {scenario} run {number}", flush=True)
        print("\n".join(figure.report(with_target=scenario == "10KB")), flush=True)
        figures.append(figure)
    if not figures:
        return None
    ratios = tuple(round(f.ratio, 2) for f in figures)
    median = sorted(figures, key=lambda f: f.ratio)[(len(figures) - 1) // 2]
    return dataclasses.replace(median, run_ratios=ratios)


def _profile(runner: Runner, stack: Stack, plan: plans.Plan,
             results: Path) -> dict[str, object]:
    """py-spy on the txrelay milter (unix) during a 10 KB and a 1 MB run: GIL samples (its
    Python CPU) and busy-thread samples (wall time, waits included)."""
    target = stack.targets[TX_UNIX]
    profiles: dict[str, object] = {}
    for label, size, count in (("10KB", plans.SMALL_SIZE, plan.small),
                               ("1MB", plans.LARGE_SIZE, plan.large)):
        outputs = {kind: results / f"profile-{label}-{kind}.txt" for kind in ("cpu", "wall")}
        profilers = [Profiler(target.watched.pid, outputs["cpu"], gil=True, rate=PROFILE_RATE),
                     Profiler(target.watched.pid, outputs["wall"], gil=False,
                              rate=PROFILE_RATE)]
        time.sleep(1.5)  # py-spy attaches
        try:
            measured = _show(runner.smtp_source(f"profiled-{label}", target, size, count))
        finally:
            for profiler in profilers:
                profiler.stop()
        cpu = summarise(outputs["cpu"])
        gil_s = sum(n for _, n in cpu["samples"]) / PROFILE_RATE
        milter_s = (measured.milter_cpu_ms_per_msg or 0) * count / 1000
        profiles[label] = {"measurement": measured.__dict__,
                           "python_holding_gil_s": round(gil_s, 2),
                           "milter_cpu_s": round(milter_s, 2),
                           "cpu": {"file": str(outputs["cpu"]), **cpu},
                           "wall": {"file": str(outputs["wall"]), **summarise(outputs["wall"])}}
    # The tracker under cProfile, over the log of one more 10 KB run (the figure's own run
    # is applied already).
    tracker_raw = [_show(runner.smtp_source("10KB", target, plans.SMALL_SIZE, plan.small))]
    output = results / "profile-tracker.txt"
    _tracker_figure(stack, tracker_raw, results, profile_to=output)
    profiles["tracker"] = {"file": str(output)}
    return profiles


def _show(m: Measurement) -> Measurement:
    print(f"   {m.scenario:<10} {m.target:<14} {m.messages:>4} msgs {m.msg_per_s:>7} msg/s  "
          f"load {m.extra.get('load1')}  "
          f"cpu {m.milter_cpu_ms_per_msg} ms/msg  eom p99 {m.eom_ms_p99}  "
          f"client p99 {m.client_ms_p99}  rss {m.peak_rss_mb} MB  verified {m.verified}"
          + (f"  auth {m.extra['auth_cpu_ms_per_login']} ms/login"
             if "auth_cpu_ms_per_login" in m.extra else ""),
          flush=True)
    return m


def _report(raw: list[Measurement], profile: dict[str, object] | None, results: Path,
            args: argparse.Namespace, probe: dict[str, float],
            tracker: TrackerFigure | None, busy: str | None,
            heavy: TrackerFigure | None = None) -> None:
    table = medians(raw)
    if busy:
        print(f"\n{busy}")
    print(f"\n== medians ({'quick' if args.quick else 'full'} run; load now {_load()}) ==")
    print(render(table))
    print("\n== ratios ==")
    print("\n".join(ratios(table)))
    one, two = (_rate(table, nodes.SCENARIO, target) for target in ("1 node", "2 nodes"))
    if one and two:
        print(f"{nodes.SCENARIO}: 2 nodes / 1 node = {two / one:.2f}   (run by run: "
              f"{_node_ratios(raw)}; trackers caught up {_tracker_lags(raw)} s after the "
              f"last delivery)\n   {nodes.NOTE}")
    print("\n== targets ==")
    print("\n".join(targets(table)))
    print(_tracker_target(tracker))
    print("\n== Postfix's log rate per scenario (lines/s, delivery lines/s) ==")
    for (scenario, target), row in table.items():
        extra = row["extra"]
        rate = extra.get("log_rate") if isinstance(extra, dict) else None
        if isinstance(rate, dict):
            print(f"   {scenario:<10} {target:<14} {rate['lines_per_s']:>8} "
                  f"{rate['delivery_lines_per_s']:>8}")
    if tracker is not None:
        print("\n== tracker throughput: the real tracker over the 10KB txrelay-unix log ==")
        print("\n".join(tracker.report()))
    if heavy is not None:
        print("\n== the same over the rcpt50 log (50 delivery lines a message; no target) ==")
        print("\n".join(heavy.report(with_target=False)))
    breakdown = cpu_breakdown(raw)
    if breakdown:
        print("\n== where the machine's CPU went, ms per message (median of the runs; "
              "PostgreSQL and Redis: the whole server) ==")
        print("\n".join(breakdown))
    print("\n== txrelay's PostgreSQL sessions: what they were doing (% of busy samples) ==")
    for (scenario, target), row in table.items():
        extra = row["extra"]
        waits = extra.get("pg_waits") if isinstance(extra, dict) else None
        if waits:
            print(f"   {scenario:<10} {target:<13} "
                  + "; ".join(f"{share}% {kind}" for kind, share in waits.items()))
    submission_lines = submission_report(table)
    if submission_lines:
        print("\n== submission: a STARTTLS + AUTH session per message, its ceiling, reuse ==")
        print("\n".join(submission_lines))
    for scenario in (SUBMISSION, SUBMISSION_REUSE):
        submission = table.get((scenario, TX_UNIX))
        if submission:
            print(f"\n== {scenario} (STARTTLS + AUTH): client-side time per phase ==")
            extra = submission["extra"]
            phases = extra.get("phases_ms", {}) if isinstance(extra, dict) else {}
            for phase, figures in phases.items():
                print(f"   {phase:<26} {figures}")
    recipient_lines = recipients_report(table)
    if recipient_lines:
        print("\n== multi-recipient messages (10 KB, smtp-source, txrelay-unix) ==")
        print("\n".join(recipient_lines))
    for label, figures in (profile or {}).items():
        if label == "tracker":
            print(f"\n== cProfile, tracker: {figures['file']} ==")  # type: ignore[index]
            continue
        print(f"\n== py-spy, milter, {label}: Python held the GIL "
              f"{figures['python_holding_gil_s']} s of the milter's "  # type: ignore[index]
              f"{figures['milter_cpu_s']} s of CPU (the rest: C code, kernel) ==")  # type: ignore[index]
        for kind in ("cpu", "wall"):
            found = figures[kind]  # type: ignore[index]
            print(f"\n== py-spy, milter, {label} unix, {kind} ({found['file']}) ==")
            for view in ("self", "inclusive"):
                print(f"-- top {view} (% of samples)")
                for name, share in found[view][:12]:
                    print(f"   {share:>5}%  {name}")
    document = as_json(table, raw)
    document["profile"] = profile
    document["load_average"] = _load()
    document["backing_latency"] = probe
    document["busy_at_start"] = busy
    document["tracker"] = tracker.as_dict() if tracker else None
    document["tracker_rcpt50"] = heavy.as_dict() if heavy else None
    (results / "results.json").write_text(json.dumps(document, indent=2, default=str))
    print(f"\nresults: {results / 'results.json'}")


# A machine whose 1-minute load average, before the bench starts anything, passes this many
# runnable tasks per CPU is busy with something else: its absolute figures are noise.
BUSY_LOAD_PER_CPU = 0.5


def _busy_warning() -> str | None:
    load1 = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    if load1 < BUSY_LOAD_PER_CPU * cpus:
        return None
    return (f"WARNING: the machine was busy when the bench started (1-minute load average "
            f"{load1:.2f} on {cpus} CPUs): absolute figures are noisy and low; compare "
            "the ratios measured within this run. Every figure is still printed.")


def _node_ratios(raw: list[Measurement]) -> str:
    runs: dict[str, list[float]] = {}
    for m in raw:
        if m.scenario == nodes.SCENARIO:
            runs.setdefault(m.target, []).append(m.msg_per_s)
    pairs = zip(runs.get("2 nodes", []), runs.get("1 node", []), strict=False)
    return " ".join(f"{two / one:.2f}" for two, one in pairs if one)


def _tracker_lags(raw: list[Measurement]) -> str:
    return ", ".join(f"{m.extra.get('tracker_lag_s')} ({m.target})" for m in raw
                     if m.scenario == nodes.SCENARIO)


def _rate(table: dict[tuple[str, str], dict[str, object]], scenario: str,
          target: str) -> float | None:
    value = table.get((scenario, target), {}).get("msg_per_s")
    return float(value) if isinstance(value, int | float) else None


def _tracker_target(tracker: TrackerFigure | None) -> str:
    title = f"tracker applies >= {TARGET_RATIO:g} x the lines Postfix logs (10KB txrelay-unix)"
    if tracker is None:
        return f"n.a.  {title}"
    return f"{'PASS' if tracker.ratio >= TARGET_RATIO else 'MISS'}  {title}: {tracker.ratio:.2f}"


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    sys.exit(main())
