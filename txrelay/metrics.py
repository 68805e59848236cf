"""Prometheus metrics of the milter and the tracker, and their /metrics + /healthz endpoint.

Every metric object lives here; the daemons make one call per event (a decision, a timed
stage) and never wait on anything of ours. Values that live elsewhere (quota balances and
reservations in Redis, the tracker's position in its log) are read lazily, at scrape time,
by collectors. `/healthz` answers whether the daemon can do its work now (the milter's: can
this node accept mail), with one line per dependency (txrelay/policy/health.py judges).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar

import psycopg
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from txrelay.config import Config
from txrelay.policy.health import LoopStatus, NodeHealth, judge_dependencies, judge_milter
from txrelay.store.keys import AccountKeys
from txrelay.store.redis_client import open_redis, reply_text
from txrelay.store.reporting import AccountCohort

log = logging.getLogger("txrelay.metrics")
F = TypeVar("F", bound=Callable[..., Any])

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

DECISIONS = Counter(
    "txrelay_milter_decisions",
    "Messages decided by the milter, by verdict (accept, "
    "tempfail, reject, abandoned) and connection (account id and connection name).",
    ["verdict", "account", "connection"],
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "txrelay_milter_stage_seconds",
    "Time the milter spent answering one SMTP stage "
    "(mail = MAIL FROM, rcpt = one RCPT TO, eom = end of message: sign and record).",
    ["stage"],
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LEDGER_BATCH = Histogram(
    "txrelay_ledger_batch_messages",
    "Messages the milter's ledger writer recorded per PostgreSQL "
    "COMMIT (group commit: those whose end of message came while the previous COMMIT ran).",
    registry=REGISTRY,
    buckets=(1, 2, 3, 5, 8, 13, 21, 34, 64),
)
JOURNAL_BACKLOG = Gauge(
    "txrelay_milter_journal_backlog",
    "Messages accepted into the milter's local journal "
    "and not yet written to PostgreSQL (0 while no journal exists).",
    registry=REGISTRY,
)

JOURNAL_QUARANTINED = Gauge(
    "txrelay_journal_quarantined",
    "Journal entries set aside after failing to replay "
    "(quarantine files in [milter] journal_dir: not in the ledger; see txrelay journal list).",
    registry=REGISTRY,
)
BACKGROUND_ERRORS = Counter(
    "txrelay_background_errors",
    "Unexpected exceptions in a background loop (the loop goes "
    "on; the milter's log has the traceback).",
    ["loop"],
    registry=REGISTRY,
)
BACKGROUND_LAST_SUCCESS = Gauge(
    "txrelay_background_loop_last_success_timestamp_seconds",
    "When a background loop last finished a run (Unix time).",
    ["loop"],
    registry=REGISTRY,
)
OUTCOMES = Counter(
    "txrelay_tracker_outcomes",
    "Recipient outcomes the tracker recorded, by state "
    "(deferred: once per deferral Postfix logged; a delivery later reported bounced counts "
    "as delivered, then as bounced).",
    ["state"],
    registry=REGISTRY,
)
OUTCOME_STATES = ("delivered", "deferred", "bounced")

WEBHOOK_ATTEMPTS = Counter(
    "txrelay_webhook_attempts",
    "Webhook deliveries tried by the worker, by outcome: delivered (2xx), retry (failed, "
    "tried again later), failed (given up), refused (the URL's address is not allowed).",
    ["outcome"],
    registry=REGISTRY,
)

NO_CONNECTION = "-"  # refused before a connection was known (unknown or missing login)
HEALTH_TIMEOUT = 2.0  # seconds: a scrape must not hang on a dead dependency


# -- hooks for the daemons ------------------------------------------------------------------


def record_decision(
    verdict: str, account: int | None = None, connection: str | None = None
) -> None:
    """One message decided (called where the milter writes its event=message line)."""
    DECISIONS.labels(
        verdict, str(account) if account is not None else NO_CONNECTION, connection or NO_CONNECTION
    ).inc()


def timed(stage: str) -> Callable[[F], F]:
    """Decorator for a milter callback: its duration goes to txrelay_milter_stage_seconds."""
    histogram = STAGE_SECONDS.labels(stage)

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - started)

        return wrapper  # type: ignore[return-value]

    return decorate


def record_outcomes(counts: Mapping[str, int]) -> None:
    """For the tracker: outcomes by state, once the transaction that recorded them committed."""
    for state, count in counts.items():
        if count:
            OUTCOMES.labels(state).inc(count)


def set_journal_backlog(messages: int) -> None:
    """For the local journal: how many accepted messages wait to reach PostgreSQL."""
    JOURNAL_BACKLOG.set(messages)


def watch_journal_backlog(count: Callable[[], float]) -> None:
    """For the local journal: read its backlog at every scrape instead of pushing it."""
    JOURNAL_BACKLOG.set_function(count)


def watch_journal_quarantine(count: Callable[[], float]) -> None:
    """For the local journal: read how many entries are set aside at every scrape."""
    JOURNAL_QUARANTINED.set_function(count)


# -- health of the dependencies -------------------------------------------------------------

HealthCheck = Callable[[], None]  # raises when the dependency is unusable
Judge = Callable[[Mapping[str, str | None]], NodeHealth]  # problems -> /healthz verdict


def dependency_checks(config: Config) -> dict[str, HealthCheck]:
    """PostgreSQL and Redis, each reached the way the daemons reach them, with a short
    timeout of its own (a fresh PostgreSQL connection: a pool could hide a dead server)."""
    client = open_redis(config.redis, lazy=True)

    def postgresql() -> None:
        with psycopg.connect(
            config.database.for_daemons().url, connect_timeout=int(HEALTH_TIMEOUT), autocommit=True
        ) as conn:
            conn.execute("SELECT 1")

    def redis_ping() -> None:
        client.ping()

    return {"postgresql": postgresql, "redis": redis_ping}


def milter_checks(config: Config) -> dict[str, HealthCheck]:
    """The dependencies plus txrelay's Dovecot, without which no shop can log in, where the
    milter's user can reach its auth socket. In Postfix's private/ directory (mode 0700
    postfix, the default place) it cannot, and a probe would only ever say 'permission
    denied': there /healthz has no dovecot line."""
    checks = dependency_checks(config)
    socket_directory = os.path.dirname(config.dovecot.auth_socket) or "."
    if not os.access(socket_directory, os.X_OK):
        return checks

    def dovecot() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(HEALTH_TIMEOUT)
            probe.connect(config.dovecot.auth_socket)

    return {**checks, "dovecot": dovecot}


def run_checks(checks: Mapping[str, HealthCheck]) -> dict[str, str | None]:
    """Each dependency's problem, or None when it answered."""
    results: dict[str, str | None] = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = None
        except (psycopg.Error, redis.RedisError, OSError) as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0]
            results[name] = f"{exc.__class__.__name__}: {first_line}"[:300]
    return results


class DependencyCollector(Collector):
    """txrelay_dependency_up{dependency=...}: 1 when it answered at this scrape."""

    def __init__(self, checks: Mapping[str, HealthCheck]) -> None:
        self.checks = checks

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "txrelay_dependency_up",
            "1 when the dependency answered at this scrape, else 0.",
            labels=["dependency"],
        )
        for name, problem in run_checks(self.checks).items():
            family.add_metric([name], 0 if problem else 1)
        yield family


# -- quota and reservations, read from Redis at scrape time ---------------------------------


AccountNames = Callable[[Sequence[int]], Mapping[int, str]]


class AccountCollector(Collector):
    """Live balance and outstanding reservations of every account the Redis keys know, and
    txrelay_account_info{account_id, name} (value 1) so a dashboard can show names."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        now: Callable[[], float] = time.time,
        names: AccountNames = lambda ids: {},
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.now = now
        self.names = names
        self._account_id = re.compile(re.escape(prefix) + r":\{a(\d+)\}:balance$")

    def collect(self) -> Iterator[Metric]:
        remaining = GaugeMetricFamily(
            "txrelay_quota_remaining",
            "Quota units left per account (Redis live balance; negative = overage).",
            labels=["account"],
        )
        held = GaugeMetricFamily(
            "txrelay_reservations_outstanding",
            "Recipients reserved by a milter and not yet committed or released, per account.",
            labels=["account"],
        )
        info = GaugeMetricFamily(
            "txrelay_account_info",
            "1 for each account in txrelay_quota_remaining, with its name (join on account_id).",
            labels=["account_id", "name"],
        )
        try:
            ids = self._fill(remaining, held)
        except redis.RedisError as exc:
            log.warning("event=metrics_redis_failed error=%r", str(exc))
            return
        for account_id, name in sorted(self.names(ids).items()):
            info.add_metric([str(account_id), name], 1)
        yield remaining
        yield held
        yield info

    def _fill(self, remaining: GaugeMetricFamily, held: GaugeMetricFamily) -> list[int]:
        pattern = _glob_escape(self.prefix) + ":{a*}:balance"
        ids = sorted(
            {
                int(m[1])
                for key in self.client.scan_iter(match=pattern, count=1000)
                if (m := self._account_id.match(reply_text(key)))
            }
        )
        now = self.now()
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            pipe = self.client.pipeline(transaction=False)
            for account_id in batch:
                keys = AccountKeys(self.prefix, account_id)
                pipe.get(keys.balance)
                pipe.zcount(keys.held, now, "+inf")
            values = pipe.execute()
            for index, account_id in enumerate(batch):
                balance, outstanding = values[2 * index], values[2 * index + 1]
                if balance is not None:
                    remaining.add_metric([str(account_id)], int(balance))
                held.add_metric([str(account_id)], int(outstanding))
        return ids


class AccountNameCache:
    """Account names from PostgreSQL for the metrics, read at most every `ttl` seconds (and
    when an account appears that the cache does not know); while PostgreSQL does not answer,
    the names read last are used."""

    SELECT_NAMES = "SELECT id, name FROM accounts WHERE id = ANY(%(ids)s)"

    def __init__(
        self, url: str, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.url = url
        self.ttl = ttl
        self.clock = clock
        self._names: dict[int, str] = {}
        self._asked: set[int] = set()  # ids read last (an account deleted has no name)
        self._read_at = -float("inf")
        self._lock = threading.Lock()

    def __call__(self, ids: Sequence[int]) -> Mapping[int, str]:
        with self._lock:
            stale = self.clock() - self._read_at > self.ttl
            if stale or not self._asked.issuperset(ids):
                self._refresh(ids)
            return {i: self._names[i] for i in ids if i in self._names}

    def _refresh(self, ids: Sequence[int]) -> None:
        try:
            with psycopg.connect(
                self.url, connect_timeout=int(HEALTH_TIMEOUT), autocommit=True
            ) as conn:
                rows = conn.execute(self.SELECT_NAMES, {"ids": list(ids)}).fetchall()
        except psycopg.Error as exc:
            log.warning("event=metrics_account_names_failed error=%r", str(exc))
            return
        self._names = {int(row[0]): str(row[1]) for row in rows}
        self._asked = set(ids)
        self._read_at = self.clock()


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


# -- the tracker's distance from the end of the log -----------------------------------------


class LogPosition(Protocol):
    """What the tracker collector needs: unread bytes and the first unread line."""

    def unread(self) -> tuple[int, bytes] | None: ...


class FollowerPosition:
    """The tracker's LogFollower seen from outside: read-only, at scrape time (the follower
    may move on meanwhile; a scrape then sees one poll's worth of staleness)."""

    def __init__(self, follower: Any) -> None:
        self.follower = follower

    def unread(self) -> tuple[int, bytes] | None:
        sources = list(self.follower.sources)
        offset = int(self.follower.offset)
        if not sources:
            return None
        try:
            sizes = [_source_size(source) for source in sources]
            first_line = sources[0].reader.read_at(offset, 200)
        except (OSError, ValueError):
            return None
        return max(0, sizes[0] - offset) + sum(sizes[1:]), first_line


def _source_size(source: Any) -> int:
    reader = source.reader
    if hasattr(reader, "stat"):
        return int(reader.stat().st_size)
    return int(source.name.stat().st_size)  # a compressed rotated file: its stored size


_ISO_STAMP = re.compile(rb"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))")
_SYSLOG_STAMP = re.compile(rb"^([A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2})")


def line_timestamp(line: bytes, now: dt.datetime) -> dt.datetime | None:
    """The time a Postfix log line was written (RFC 3339 or classic syslog form, the latter
    in local time and the year that puts it closest before `now`)."""
    if found := _ISO_STAMP.match(line):
        text = found[1].decode().replace("Z", "+00:00")
        try:
            return dt.datetime.fromisoformat(text)
        except ValueError:
            return None
    if found := _SYSLOG_STAMP.match(line):
        local_now = now.astimezone()
        try:
            stamp = dt.datetime.strptime(
                f"{local_now.year} {found[1].decode()}", "%Y %b %d %H:%M:%S"
            ).replace(tzinfo=local_now.tzinfo)
        except ValueError:
            return None
        return (
            stamp.replace(year=stamp.year - 1)
            if stamp > local_now + dt.timedelta(days=1)
            else stamp
        )
    return None


class TrackerCollector(Collector):
    """txrelay_tracker_unread_bytes and txrelay_tracker_lag_seconds (age of the oldest line
    not yet applied; 0 when caught up, so an idle relay is not 'lagging')."""

    def __init__(
        self,
        position: Callable[[], LogPosition | None],
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.position = position
        self.now = now

    def collect(self) -> Iterator[Metric]:
        source = self.position()
        unread = source.unread() if source is not None else None
        if unread is None:
            return
        pending, first_line = unread
        lag = 0.0
        if pending and first_line:
            now = self.now()
            stamp = line_timestamp(first_line, now)
            lag = max(0.0, (now - stamp).total_seconds()) if stamp else 0.0
        yield GaugeMetricFamily(
            "txrelay_tracker_unread_bytes",
            "Bytes of the mail log (live and rotated files) the tracker has not applied yet.",
            value=pending,
        )
        yield GaugeMetricFamily(
            "txrelay_tracker_lag_seconds",
            "Age of the oldest log line the tracker has not applied yet (0 when caught up).",
            value=lag,
        )


class AccountCohortCollector(Collector):
    """txrelay_account_arrived_last_day and txrelay_account_complained_last_day per account
    (its id; txrelay_account_info names it), as the tracker's last tick counted them from
    PostgreSQL: the complaint rate's two halves (nothing before the first tick)."""

    def __init__(self, latest: Callable[[], Sequence[AccountCohort] | None]) -> None:
        self.latest = latest

    def collect(self) -> Iterator[Metric]:
        cohorts = self.latest()
        if cohorts is None:
            return
        arrived = GaugeMetricFamily(
            "txrelay_account_arrived_last_day",
            "Recipients that arrived in the last 24 hours (accounts with mail only).",
            labels=["account"],
        )
        complained = GaugeMetricFamily(
            "txrelay_account_complained_last_day",
            "Of the recipients that arrived in the last 24 hours, those who complained.",
            labels=["account"],
        )
        for cohort in cohorts:
            arrived.add_metric([str(cohort.account_id)], cohort.arrived)
            complained.add_metric([str(cohort.account_id)], cohort.complained)
        yield arrived
        yield complained


class WebhookBacklogCollector(Collector):
    """txrelay_webhook_backlog and txrelay_webhook_oldest_pending_seconds, read from the
    outbox at scrape time (nothing when PostgreSQL does not answer)."""

    def __init__(self, backlog: Callable[[], tuple[int, float] | None]) -> None:
        self.backlog = backlog

    def collect(self) -> Iterator[Metric]:
        found = self.backlog()
        if found is None:
            return
        pending, oldest = found
        yield GaugeMetricFamily(
            "txrelay_webhook_backlog",
            "Webhook events not delivered yet and not given up (all nodes' outbox).",
            value=pending,
        )
        yield GaugeMetricFamily(
            "txrelay_webhook_oldest_pending_seconds",
            "Age of the oldest webhook event not delivered yet (0 when none waits).",
            value=oldest,
        )


# -- the HTTP endpoint ----------------------------------------------------------------------


class MetricsEndpoint:
    """/metrics (the shared metrics plus this daemon's collectors) and /healthz, served by a
    daemon thread; close() stops it."""

    def __init__(
        self,
        listen: str,
        checks: Mapping[str, HealthCheck],
        collectors: Iterable[Collector] = (),
        judge: Judge = judge_dependencies,
    ) -> None:
        self.checks = checks
        self.judge = judge
        self.local = CollectorRegistry(auto_describe=False)
        for collector in [DependencyCollector(checks), *collectors]:
            self.local.register(collector)
        self.server = _make_server(listen, self)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="metrics", daemon=True
        )

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> MetricsEndpoint:
        self.thread.start()
        log.info("event=metrics_listen address=%s", self.address)
        return self

    def close(self) -> None:
        if self.thread.is_alive():  # shutdown() waits for serve_forever, forever if unstarted
            self.server.shutdown()
        self.server.server_close()

    def metrics(self) -> bytes:
        return generate_latest(REGISTRY) + generate_latest(self.local)

    def health(self) -> NodeHealth:
        return self.judge(run_checks(self.checks))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        endpoint = self.server.endpoint
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, endpoint.metrics(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            health = endpoint.health()
            self._send(health.status, health.body().encode(), "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the daemon's own log."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: MetricsEndpoint


def _make_server(listen: str, endpoint: MetricsEndpoint) -> _Server:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    server_class = (
        type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        if ":" in host
        else _Server
    )
    server: _Server = server_class((host, int(port)), _Handler)
    server.endpoint = endpoint
    return server


def start_endpoint(
    listen: str,
    what: str,
    checks: Mapping[str, HealthCheck],
    collectors: Iterable[Collector] = (),
    judge: Judge = judge_dependencies,
) -> MetricsEndpoint | None:
    """Start serving, or log why not: a metrics port in use must not stop mail."""
    if not listen:
        return None
    try:
        return MetricsEndpoint(listen, checks, collectors, judge).start()
    except OSError as exc:
        log.error(
            "event=metrics_unavailable address=%s error=%r: [metrics] %s_listen cannot "
            "be bound; the %s runs without metrics",
            listen,
            str(exc),
            what,
            what,
        )
        return None


def start_milter_endpoint(
    config: Config,
    journal_room: Callable[[], int],
    loops: Callable[[], Sequence[LoopStatus]] = tuple,
    quarantined: Callable[[], int] = int,
) -> MetricsEndpoint | None:
    """[metrics] milter_listen: decisions, stage latency, quota, reservations, and /healthz
    as "can this node accept mail now" (degraded but serving is 200), with the background
    loops and the journal entries set aside."""
    client = open_redis(config.redis, lazy=True)

    def judge(problems: Mapping[str, str | None]) -> NodeHealth:
        return judge_milter(problems, journal_room(), loops(), quarantined())

    return start_endpoint(
        config.metrics.milter_listen,
        "milter",
        milter_checks(config),
        [
            AccountCollector(
                client,
                config.redis.key_prefix,
                names=AccountNameCache(config.database.for_daemons().url),
            )
        ],
        judge,
    )


def start_tracker_endpoint(
    config: Config,
    position: Callable[[], LogPosition | None],
    loops: Callable[[], Sequence[LoopStatus]] = tuple,
    last_day: Callable[[], Sequence[AccountCohort] | None] = lambda: None,
) -> MetricsEndpoint | None:
    """[metrics] tracker_listen: lag behind the mail log, each account's arrivals and
    complaints of the last day, health (its dependencies and its loop)."""

    def judge(problems: Mapping[str, str | None]) -> NodeHealth:
        return judge_dependencies(problems, loops())

    for state in OUTCOME_STATES:
        OUTCOMES.labels(state)  # each state from the start at 0: rate() needs the first sample
    return start_endpoint(
        config.metrics.tracker_listen,
        "tracker",
        dependency_checks(config),
        [TrackerCollector(position), AccountCohortCollector(last_day)],
        judge,
    )


def start_webhooks_endpoint(
    config: Config,
    backlog: Callable[[], tuple[int, float] | None],
    loops: Callable[[], Sequence[LoopStatus]] = tuple,
) -> MetricsEndpoint | None:
    """[metrics] webhooks_listen: the outbox's backlog, attempts by outcome, health."""

    def judge(problems: Mapping[str, str | None]) -> NodeHealth:
        return judge_dependencies(problems, loops())

    return start_endpoint(
        config.metrics.webhooks_listen,
        "webhooks",
        {"postgresql": dependency_checks(config)["postgresql"]},
        [WebhookBacklogCollector(backlog)],
        judge,
    )
