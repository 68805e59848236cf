"""What every milter connection shares, wired here from the store's implementations (the
policy cache, the ledger and its journal, the reservations with their PostgreSQL fallback,
the refusal budget); the logic of each lives in txrelay/store/ behind a Protocol.

Created once at start; everything here is thread-safe because libmilter runs each SMTP
connection on its own thread. The snapshot is replaced whole (one attribute assignment),
never changed, so a transaction that pinned one keeps deciding with it.

Degraded modes (docs/failure-modes.md): Redis down → reservations in PostgreSQL
(store/fallback.py); PostgreSQL down → policy from memory or its local copy, ledger records
to the local journal (store/journal.py), replayed when PostgreSQL answers again.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from txrelay import metrics
from txrelay.bounce_dkim import read_bounce_dkim_key, signing_key
from txrelay.bounce_secret import read_bounce_secret
from txrelay.clock import Clock
from txrelay.config import Config
from txrelay.errors import ConfigError
from txrelay.kek import KeyRing
from txrelay.milter.refusal_budget import RefusalBudget, Refusals
from txrelay.milter.settler import Settler
from txrelay.signing import SigningKey
from txrelay.store import database
from txrelay.store.fallback import FailoverReservations, PostgresReservations, rebuild_redis
from txrelay.store.journal import Journal, database_tag
from txrelay.store.policy import PolicyLoader
from txrelay.store.policy_cache import PolicyCache, PolicySource
from txrelay.store.recording import Ledger, PostgresLedger, PostgresQuotaBalance
from txrelay.store.redis_client import open_redis
from txrelay.store.reservations import RedisReservations, ReservationStore
from txrelay.store.sandbox import PostgresSandbox, Sandbox
from txrelay.store.suppression_cache import SuppressionCache, SuppressionList
from txrelay.supervised import Loops, SupervisedLoop

log = logging.getLogger("txrelay.milter")

REPLAY_INTERVAL = 1.0  # seconds between attempts to replay the journal into PostgreSQL
# An end of message waits for its ledger batch's COMMIT at most this many [database]
# timeout_ms: a free connection, the batch's statements and the COMMIT each get about one.
COMMIT_WAIT_TIMEOUTS = 3


@dataclass
class Runtime:
    """What every milter connection shares, each store behind its Protocol: open_runtime
    gives the PostgreSQL and Redis implementations, the fast tests in-memory ones."""

    config: Config
    node: str
    clock: Clock
    policy: PolicySource
    reservations: ReservationStore
    ledger: Ledger
    refusals: Refusals
    suppressions: SuppressionList
    close: Callable[[], None]
    loops: Loops = field(default_factory=Loops)
    # The key of return-path and CFBL tokens (txrelay/bounce_secret.py); None: this node has
    # none and no [bounce] domain, so messages keep their envelope senders.
    bounce_secret: bytes | None = None
    # Where sandbox connections' messages are captured; None: sandbox mail gets a 451.
    sandbox: Sandbox | None = None
    # The relay's own DKIM key for [bounce] domain (txrelay/bounce_dkim.py): the second
    # signature of messages whose bounce domain is not their author's; None: they get no CFBL.
    relay_dkim: SigningKey | None = None


def open_journal(config: Config) -> Journal:
    """This milter's local journal ([milter] journal_dir), for the runtime and /healthz."""
    return Journal(
        Path(config.milter.journal_dir), config.database.url, config.milter.journal_max_per_hour
    )


def _key_ring(config: Config) -> KeyRing:
    """The KEK that opens the DKIM keys. A file that cannot be read now is logged; keys
    stored in clear still sign, each sealed one's domain gets 4xx (bad_dkim_key), and the
    file is read again at each policy load that needs it, so restoring it is enough."""
    keys = KeyRing(Path(config.database.kek_file))
    try:
        keys.reload()
    except ConfigError as exc:
        log.error("event=kek_unavailable error=%r", str(exc))
    return keys


def load_bounce_secret(config: Config) -> bytes | None:
    """The bounce secret, read once at start. With a [bounce] domain it is needed: a missing
    or unreadable file stops the milter with the reason (ConfigError), before any mail is
    accepted without a return path. Without one, only domains with their own return path
    would use it: a missing file is logged and their mail keeps its envelope sender."""
    path = Path(config.bounce.secret_file)
    if config.bounce.domain or path.exists():
        return read_bounce_secret(path)
    log.warning(
        "event=bounce_secret_missing path=%s (no [bounce] domain; domains with their own "
        "return path keep the shops' envelope senders until it exists)",
        path,
    )
    return None


def load_relay_dkim(config: Config) -> SigningKey | None:
    """The relay's own DKIM key, read once at start; only with a [bounce] domain. A missing
    or unreadable file does not stop the milter (mail flows as before): it is logged with
    the setting and the command that creates it, and such messages get no CFBL headers."""
    if not config.bounce.domain:
        return None
    path = Path(config.bounce.dkim_key_file)
    try:
        return signing_key(read_bounce_dkim_key(path))
    except ConfigError as exc:
        log.warning(
            "event=relay_dkim_key_missing path=%s error=%r (messages whose bounce domain %s is "
            "not their author's get no CFBL headers: set [bounce] dkim_key_file, or create "
            "the key with `txrelay init`, publish it with `txrelay bounce dns`, and restart "
            "the milter)",
            path,
            str(exc),
            config.bounce.domain,
        )
        return None


def open_runtime(
    config: Config, clock: Clock, journal: Journal | None = None, loops: Loops | None = None
) -> Runtime:
    """Open the shared handles without waiting for PostgreSQL or Redis: the milter starts
    even when they are away, works in a degraded mode while one of them is, and recovers by
    itself when they return (docs/failure-modes.md). Its background loops are added to
    `loops` (what /healthz reads)."""
    loops = loops if loops is not None else Loops()
    bounce_secret = load_bounce_secret(config)  # first: a missing one stops the start
    relay_dkim = load_relay_dkim(config)
    # Connections use the daemons' role (milter_url); the journal and the policy copy keep
    # naming the database by url, so setting milter_url leaves no journal entry behind.
    daemon_db = config.database.for_daemons()
    node = config.milter.node_name or socket.gethostname()
    pool = database.open_pool(daemon_db, "txrelay-milter", database.SuperuserWarning("milter"))
    pool.open(wait=False)
    client = open_redis(config.redis, lazy=True)
    state_dir = Path(config.milter.journal_dir)
    journal = journal or open_journal(config)
    metrics.watch_journal_backlog(journal.backlog)
    metrics.watch_journal_quarantine(journal.quarantined)
    postgres_holds = PostgresReservations(pool, config.milter.reservation_ttl_seconds, node)

    def rebuild(accounts: set[int]) -> None:
        with pool.connection() as conn:
            rebuild_redis(conn, client, config.redis.key_prefix, accounts)

    settler = Settler(lambda: database.connect(daemon_db, autocommit=True))
    loops.add(settler.loop)
    settler.start()
    balance = PostgresQuotaBalance(pool, clock)
    redis_store = RedisReservations(
        client,
        config.redis.key_prefix,
        config.milter.reservation_ttl_seconds,
        balance.remaining_quota,
        balance.overage_used,
    )
    reservations = FailoverReservations(redis_store, postgres_holds, rebuild)
    ledger = PostgresLedger(
        pool,
        clock,
        journal,
        holds_of=reservations.held_in_postgres,
        recorded_for=settler.notify,
        commit_wait=COMMIT_WAIT_TIMEOUTS * config.database.timeout_ms / 1000,
        group_commit=config.milter.ledger_group_commit,
    )
    copy_path = state_dir / f"policy-{database_tag(config.database.url)}.json"
    policy = PolicyCache(
        pool,
        PolicyLoader(
            config.quota, _key_ring(config), require_published=config.dkim.require_published
        ),
        config.milter.policy_refresh_seconds,
        copy_path,
        Path(config.dovecot.passdb_file),
    )
    policy.refresh()
    # Beside the policy: the suppression lists, read whole now (while PostgreSQL answers),
    # then only their changes at each run of the loop.
    suppressions = SuppressionCache(pool, clock, config.milter.policy_refresh_seconds)
    suppressions.poll()
    replayer = SupervisedLoop(
        "journal-replay", REPLAY_INTERVAL, ledger.replay_journal, first_run_now=True
    )
    for loop in (policy.loop, suppressions.loop, reservations.loop, replayer):
        loops.add(loop).start()

    def close() -> None:
        replayer.stop()
        suppressions.stop()
        ledger.close()  # its queued records first: the settler's last run bills them
        settler.stop()
        reservations.stop()
        policy.stop()
        journal.close()
        pool.close()
        client.close()

    refusals = RefusalBudget(
        client,
        config.redis.key_prefix,
        config.milter.refusal_budget_per_hour,
        clock,
        lambda: reservations.degraded,
    )
    return Runtime(
        config,
        node,
        clock,
        policy,
        reservations,
        ledger,
        refusals,
        suppressions,
        close,
        loops,
        bounce_secret,
        PostgresSandbox(pool),
        relay_dkim=relay_dkim,
    )
