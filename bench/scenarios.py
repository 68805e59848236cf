"""One measured scenario: drive load at a target, wait until every message reached the sink,
check the count and the signatures, and read what it cost."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.checks import check_count, check_signed
from bench.client import ClientResult, Login, drive
from bench.measure import Window, percentile
from bench.messages import crlf, message, write_message_file
from bench.procs import BenchFailure, children_cpu_ms, run, sample, wait_until
from bench.stack import Stack, Target
from bench.tracking import LogSpan, log_offset, log_rate

RECIPIENT = "rcpt@sink.bench.test"
SMTP_SOURCE_SESSIONS = 10
DOVECOT_AUTH_PROCESSES = ("auth", "auth-worker")


@dataclass
class Measurement:
    """One scenario's figures (None where they do not apply)."""

    scenario: str
    target: str
    size: int
    messages: int
    elapsed_s: float
    msg_per_s: float
    milter_cpu_ms_per_msg: float | None = None
    milter_system_ms_per_msg: float | None = None  # the kernel's share of the CPU above
    peak_rss_mb: float | None = None
    txn_ms_p50: float | None = None  # milter log ms= (MAIL FROM to end of EOM)
    txn_ms_p99: float | None = None
    eom_ms_p50: float | None = None  # milter stage histogram, interpolated
    eom_ms_p99: float | None = None
    client_ms_p50: float | None = None  # MAIL FROM .. 250 after DATA, at the client
    client_ms_p99: float | None = None
    machine_cpu_ms_per_msg: float = 0.0
    verified: int = 0
    extra: dict[str, object] = field(default_factory=dict)


class Runner:
    def __init__(self, stack: Stack, results_dir: Path, verify_sample: int,
                 keep_dumps: bool = False, rss_guard_mb: int = 8192) -> None:
        self.stack = stack
        self.rss_guard_mb = rss_guard_mb
        self.keep_dumps = keep_dumps
        self.results_dir = results_dir
        self.messages_dir = stack.root / "messages"
        self.messages_dir.mkdir(exist_ok=True)
        self.verify_sample = verify_sample
        self.sequence = 0
        self.cpu_groups = stack.cpu_groups()

    def smtp_source(self, scenario: str, target: Target, size: int, count: int,
                    sessions: int = SMTP_SOURCE_SESSIONS, recipients: int = 1) -> Measurement:
        """smtp-source -s 10, one connection per message, until all are delivered. With
        `recipients` > 1 each message goes to that many (smtp-source numbers them: 1rcpt@,
        2rcpt@, ...); Postfix delivers them to the sink in one transaction (up to 50, its
        default_destination_recipient_limit), so the sink still counts messages."""
        path = write_message_file(self.messages_dir, size, sender=self.stack.sender.address,
                                  recipient=RECIPIENT)
        window = Window(target.watched, groups=self.cpu_groups)
        window.start()
        log_start = log_offset(self.stack.postfix.maillog)
        started = time.perf_counter()
        done = run(["smtp-source", "-s", str(sessions), "-m", str(count), "-F", str(path),
                    "-f", self.stack.sender.address, "-t", RECIPIENT,
                    "-r", str(recipients), "-M", "client.bench.test",
                    f"127.0.0.1:{target.port}"],
                   check=False, timeout=600 + count)
        accepted = count if done.returncode == 0 else 0
        if done.returncode != 0:
            raise BenchFailure(f"{scenario}/{target.name}: smtp-source exited "
                               f"{done.returncode}: {done.stderr.strip()[-500:]}")
        source_s = time.perf_counter() - started
        elapsed = self._wait_delivered(scenario, target, count, started)
        window.stop()
        result = self._finish(scenario, target, size, count, accepted, elapsed, window)
        result.extra["smtp_source_s"] = round(source_s, 3)
        # What Postfix logged meanwhile (_finish waited for its last lines): the rate the
        # tracker must keep up with.
        span = LogSpan(self.stack.postfix.maillog, log_start,
                       log_offset(self.stack.postfix.maillog), elapsed)
        result.extra["log_span"] = [span.start, span.end]
        result.extra["log_rate"] = log_rate(span).as_dict()
        if recipients > 1:
            result.extra["recipients"] = recipients
        return result

    def client(self, scenario: str, target: Target, size: int, *, sessions: int,
               per_session: int, login: Login | None, port: int | None = None,
               rounds: int = 1) -> Measurement:
        """The Python client (STARTTLS + AUTH when `login`): `sessions` concurrent clients,
        each `rounds` sessions of `per_session` messages. With a login, also the CPU that
        Dovecot's auth processes spent per login (from /proc)."""
        data = crlf(message(size, sender=self.stack.sender.address, recipient=RECIPIENT,
                            subject=f"bench {scenario}"))
        count = sessions * rounds * per_session
        dovecot = self.stack.dovecot_master_pid()
        window = Window(target.watched, groups=self.cpu_groups)
        window.start()
        auth_before = children_cpu_ms(dovecot, DOVECOT_AUTH_PROCESSES)
        started = time.perf_counter()
        outcome = drive(port or target.port, sessions=sessions, per_session=per_session,
                        message=data, sender=self.stack.sender.address, recipient=RECIPIENT,
                        login=login, rounds=rounds)
        auth_ms = children_cpu_ms(dovecot, DOVECOT_AUTH_PROCESSES) - auth_before
        elapsed = self._wait_delivered(scenario, target, outcome.accepted, started)
        window.stop()
        if outcome.failures:
            raise BenchFailure(f"{scenario}/{target.name}: {len(outcome.failures)} client "
                               f"failures, first: {outcome.failures[0]}")
        result = self._finish(scenario, target, size, count, outcome.accepted, elapsed, window)
        add_client_figures(result, outcome)
        logins = len(outcome.phases_ms.get("AUTH", []))
        result.extra["sessions"] = sessions * rounds
        if logins:
            result.extra["logins"] = logins
            result.extra["auth_cpu_ms_per_login"] = round(auth_ms / logins, 3)
        return result

    def big_with_small(self, target: Target, *, big_count: int, big_size: int,
                       small_sessions: int, small_per_session: int) -> Measurement:
        """`big_count` concurrent big messages (smtp-source), and meanwhile small messages from
        the Python client whose latency is what the report shows."""
        path = write_message_file(self.messages_dir, big_size, sender=self.stack.sender.address,
                                  recipient=RECIPIENT)
        small = crlf(message(10_000, sender=self.stack.sender.address, recipient=RECIPIENT,
                             subject="bench small during big"))
        window = Window(target.watched, groups=self.cpu_groups)
        window.start()
        started = time.perf_counter()
        source = subprocess.Popen(
            ["smtp-source", "-s", str(big_count), "-m", str(big_count), "-F", str(path),
             "-f", self.stack.sender.address, "-t", RECIPIENT, "-M", "client.bench.test",
             f"127.0.0.1:{target.port}"], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        guard = RssGuard(target.watched.pid, self.rss_guard_mb, source)
        time.sleep(0.5)  # let the big transfers begin before the small ones
        outcome = drive(target.port, sessions=small_sessions, per_session=small_per_session,
                        message=small, sender=self.stack.sender.address, recipient=RECIPIENT,
                        pause=0.05)
        _out, err = source.communicate(timeout=900)
        guard.stop()
        if guard.tripped:
            raise BenchFailure(f"big/{target.name}: the milter's RSS passed "
                               f"{self.rss_guard_mb} MB (--rss-guard-mb): the 30 MB senders "
                               "were stopped to protect the machine")
        if source.returncode != 0:
            raise BenchFailure(f"big/{target.name}: smtp-source exited {source.returncode}: "
                               f"{err.decode(errors='replace')[-500:]}")
        count = big_count + small_sessions * small_per_session
        accepted = big_count + outcome.accepted
        elapsed = self._wait_delivered("big", target, accepted, started)
        window.stop()
        if outcome.failures:
            raise BenchFailure(f"big/{target.name}: {len(outcome.failures)} client failures, "
                               f"first: {outcome.failures[0]}")
        result = self._finish("big", target, big_size, count, accepted, elapsed, window,
                              sample=3)
        add_client_figures(result, outcome)
        result.extra["big_messages"] = big_count
        result.extra["small_messages"] = small_sessions * small_per_session
        return result

    def _wait_delivered(self, scenario: str, target: Target, count: int,
                        started: float) -> float:
        sink, postfix = self.stack.sink, self.stack.postfix
        wait_until(lambda: sink.count() >= count and postfix.queued() == 0,
                   120 + count / 2, f"{scenario}/{target.name}: {count} messages at the sink",
                   lambda: f"sink has {sink.count()}, queue {postfix.queued()}\n"
                           f"{postfix.log(30)}",
                   interval=0.02)
        return time.perf_counter() - started

    def _finish(self, scenario: str, target: Target, size: int, count: int, accepted: int,
                elapsed: float, window: Window, sample: int | None = None) -> Measurement:
        """Count, verify, and turn the window into figures."""
        time.sleep(0.2)  # a duplicate delivery would show up now
        self.sequence += 1
        dumps = self.stack.sink.collect(
            self.results_dir / "sink" / f"{self.sequence:03d}-{scenario}-{target.name}")
        what = f"{scenario}/{target.name}"
        check_count(what, sent=count, accepted=accepted, delivered=len(dumps),
                    queued=self.stack.postfix.queued())
        verdicts = window.verdicts()
        if window.log_lines is not None and verdicts != {"accept": count}:
            raise BenchFailure(f"{what}: the milter logged {verdicts}, expected "
                               f"{{'accept': {count}}}")
        verified = check_signed(what, dumps, target.signer, sample or self.verify_sample,
                                 self.sequence)
        if not self.keep_dumps:
            for dump in dumps:
                dump.unlink()
        cpu = window.cpu_ms()
        txn = window.transaction_ms()
        load = float(Path("/proc/loadavg").read_text().split()[0])
        return Measurement(
            scenario, target.name, size, count, round(elapsed, 3), round(count / elapsed, 1),
            milter_cpu_ms_per_msg=_round(cpu / count if cpu is not None else None),
            milter_system_ms_per_msg=_round(_per(window.system_ms(), count)),
            peak_rss_mb=_round(window.peak_rss_mb()),
            txn_ms_p50=_round(percentile(txn, 0.5)), txn_ms_p99=_round(percentile(txn, 0.99)),
            eom_ms_p50=_round(window.stage_quantile("eom", 0.5)),
            eom_ms_p99=_round(window.stage_quantile("eom", 0.99)),
            machine_cpu_ms_per_msg=round(window.machine_cpu_ms() / count, 2),
            verified=verified,
            extra={"load1": load, **({"pg_waits": window.pg_waits} if window.pg_waits else {}),
                   "cpu_ms_per_msg": {name: round(ms / count, 2)
                                      for name, ms in window.cpu_by_group_ms().items()}})


class RssGuard:
    """Kills the big sender when the milter's resident memory passes a limit."""

    def __init__(self, pid: int, limit_mb: int, source: subprocess.Popen[bytes]) -> None:
        self.pid = pid
        self.limit_kb = limit_mb * 1024
        self.source = source
        self.tripped = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="rss-guard", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            if sample(self.pid).rss_kb > self.limit_kb:
                self.tripped = True
                self.source.kill()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def add_client_figures(result: Measurement, outcome: ClientResult) -> None:
    result.client_ms_p50 = _round(percentile(outcome.latencies_ms, 0.5))
    result.client_ms_p99 = _round(percentile(outcome.latencies_ms, 0.99))
    result.extra["client_s"] = round(outcome.elapsed_s, 3)
    result.extra["phases_ms"] = {
        phase: {"count": len(values), "p50": _round(percentile(values, 0.5)),
                "p99": _round(percentile(values, 0.99)), "total_s": round(sum(values) / 1000, 2)}
        for phase, values in outcome.phases_ms.items()}


def _per(value: float | None, count: int) -> float | None:
    return None if value is None else value / count


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
