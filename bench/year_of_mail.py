"""`python -m bench.year_of_mail`: how txrelay's reports and daemons cost with a big ledger.

Loads a synthetic history into a database of its own (generated in SQL: accounts, one
booked block and one domain each, connections with credentials, messages and their ledger
rows spread over a year, skewed so that a few connections send most of the mail), then
measures p50/p99 of what an admin runs and what the daemons do per event:

- `stats` for one account over 7 and 30 days (the biggest sender and a typical one);
- `messages search` by recipient, by Message-ID and by queue id;
- `billing report` for one account and one month;
- the settler's cost per pending row, the tracker's per log line;
- the milter's policy snapshot: load time, refresh time and the RSS it adds;
- the SMTP login file's regeneration.

Every interactive figure is compared with the 200 ms target of issue 15. The database is
dropped at the end, also after Ctrl-C or SIGTERM. `--rows` scales the history (30 million
by default; `--rows 300000` gives a first reading in a minute).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import resource
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from psycopg.rows import dict_row

from txrelay.config import QuotaConfig
from txrelay.policy.billing import parse_period
from txrelay.policy.logline import parse_line
from txrelay.policy.suppression import SuppressionRules
from txrelay.store import database, passdb_file, reporting, retention
from txrelay.store.policy import PolicyLoader, fetch_policy_rows
from txrelay.tracker import engine

ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGET_MS = 200.0
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
NODE = "year-node"
RULES = SuppressionRules()


@dataclass(frozen=True)
class Shape:
    rows: int
    accounts: int
    connections: int

    @property
    def messages(self) -> int:
        return self.rows  # transactional mail: one recipient per message


@dataclass
class Figure:
    what: str
    samples_ms: list[float]
    target_ms: float | None = TARGET_MS
    note: str = ""

    @property
    def p50(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]

    def line(self) -> str:
        verdict = ""
        if self.target_ms is not None:
            verdict = "ok" if self.p99 <= self.target_ms else f"MISSED (> {self.target_ms:.0f})"
        return (f"{self.what:<48} {self.p50:>10.1f} {self.p99:>10.1f}  {verdict} "
                f"{self.note}").rstrip()


class Terminated(Exception):
    pass


def _terminated(signum: int, frame: object) -> None:
    raise Terminated(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    shape = Shape(args.rows, args.accounts, args.connections)
    busy = os.getloadavg()[0]
    if busy > 1.0:
        print(f"note: the machine is busy (load average {busy:.1f} on {os.cpu_count()} cores);"
              " figures are slower than on an idle machine", flush=True)
    with scratch_database(args.keep) as url, \
            psycopg.connect(url, row_factory=dict_row, autocommit=True) as conn:
        generate(conn, shape)
        figures = measure(conn, url, shape, args.repeat)
    print(f"\nA year of mail: {shape.rows:,} recipient rows, {shape.accounts:,} accounts, "
          f"{shape.connections:,} connections (ms)")
    print(f"{'':<48} {'p50':>10} {'p99':>10}")
    for figure in figures:
        print(figure.line())
    missed = [f.what for f in figures if f.target_ms is not None and f.p99 > f.target_ms]
    print(f"\n{len(figures) - len(missed)} of {len(figures)} figures within target"
          + (f"; missed: {', '.join(missed)}" if missed else ""))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.year_of_mail",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=30_000_000,
                        help="recipient rows in the ledger (default 30 million)")
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=30, help="runs per measured query")
    parser.add_argument("--keep", action="store_true",
                        help="keep the database afterwards (its name is printed)")
    return parser


@contextmanager
def scratch_database(keep: bool) -> Iterator[str]:
    name = f"txrelay_year_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url) as conn:
            database.migrate(conn)
        yield url
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the history ----------------------------------------------------------------------------


def _step(what: str) -> Callable[[], None]:
    started = time.monotonic()
    print(f"  {what} ...", end="", flush=True)
    return lambda: print(f" {time.monotonic() - started:.1f} s", flush=True)


def _one_rsa_key() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode("ascii")
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(public).decode("ascii")


def generate(conn: psycopg.Connection[Any], shape: Shape) -> None:
    """The history, in SQL. Indexes of the big tables are dropped while loading and made
    again afterwards (as a restore would), so loading takes minutes, not hours."""
    print(f"generating {shape.rows:,} ledger rows:", flush=True)
    pem, public = _one_rsa_key()
    params: dict[str, Any] = {"a": shape.accounts, "c": shape.connections, "m": shape.messages,
                              "now": NOW, "pem": pem, "pub": public}
    done = _step("accounts, blocks, keys, domains, connections, credentials")
    for sql in SETUP:
        conn.execute(sql, params)
    done()
    indexes = _drop_indexes(conn, ("messages", "ledger"))
    done = _step(f"messages ({LOADERS} connections)")
    _in_parallel(conn, MESSAGES, params, 1, shape.messages)
    done()
    done = _step(f"ledger ({LOADERS} connections)")
    ids = conn.execute("SELECT min(id) AS lo, max(id) AS hi FROM messages").fetchone()
    _in_parallel(conn, LEDGER, params, ids["lo"], ids["hi"])
    done()
    done = _step(f"{len(indexes)} indexes")
    for definition in indexes:
        conn.execute(definition)
    done()
    if conn.execute("SELECT to_regproc('txrelay_fold_rollups') AS f").fetchone()["f"]:
        done = _step("fold the ledger's deltas into its rollups (as the tracker's tick does)")
        conn.execute("SELECT txrelay_fold_rollups()")
        done()
    # VACUUM as autovacuum would soon after a load: the fold leaves the deltas' dead rows,
    # and index-only scans need the visibility map.
    done = _step("vacuum analyze")
    conn.execute("VACUUM ANALYZE")
    done()


LOADERS = 2  # connections loading at once: one per core of the machine this was tuned on


def _in_parallel(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any],
                 first: int, last: int) -> None:
    """Run `sql` over [first, last] split into LOADERS ranges (%(lo)s, %(hi)s), each on a
    connection of its own at the same time: one INSERT ... SELECT keeps one core busy."""
    url = conn.info.dsn
    step = (last - first) // LOADERS + 1
    ranges = [(lo, min(last, lo + step - 1)) for lo in range(first, last + 1, step)]
    errors: list[BaseException] = []

    def load(lo: int, hi: int) -> None:
        try:
            with psycopg.connect(url, autocommit=True) as loader:
                loader.execute(sql, params | {"lo": lo, "hi": hi})
        except psycopg.Error as exc:  # reported below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=load, args=bounds, daemon=True) for bounds in ranges]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)  # short joins: SIGTERM's handler runs in the main thread
    if errors:
        raise errors[0]


def _drop_indexes(conn: psycopg.Connection[Any], tables: tuple[str, ...]) -> list[str]:
    rows = conn.execute(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i "
        "LEFT JOIN pg_constraint c ON c.conname = i.indexname "
        "WHERE i.schemaname = 'public' AND i.tablename = ANY(%s) AND c.conname IS NULL",
        (list(tables),)).fetchall()
    for row in rows:
        conn.execute(f'DROP INDEX "{row["indexname"]}"')
    return [row["indexdef"] for row in rows]


# Connection g belongs to account 1 + g % accounts; ids are those of a fresh database.
SETUP = (
    """INSERT INTO accounts (name, admin_email, created_at)
       SELECT 'year-' || g, 'owner' || g || '@example.net', %(now)s - interval '400 days'
         FROM generate_series(1, %(a)s) g""",
    """INSERT INTO quota_blocks (account_id, kind, amount, used, booked_at, expires_at)
       SELECT g, 'booked', 2000000000, 0, %(now)s - interval '400 days',
              %(now)s + interval '365 days'
         FROM generate_series(1, %(a)s) g""",
    """INSERT INTO dkim_keys (account_id, selector, algorithm, private_key_pem, public_key_b64)
       SELECT g, 'txr2026', 'rsa', %(pem)s, %(pub)s FROM generate_series(1, %(a)s) g""",
    """INSERT INTO sending_domains (account_id, domain, list_help, dkim_key_id)
       SELECT g, 'shop' || g || '.example', 'mailto:help@shop' || g || '.example', g
         FROM generate_series(1, %(a)s) g""",
    """INSERT INTO connections (account_id, name, last_used_at)
       SELECT 1 + g %% %(a)s, 'conn-' || g, %(now)s FROM generate_series(1, %(c)s) g""",
    """INSERT INTO connection_domains (connection_id, domain_id, account_id)
       SELECT g, 1 + g %% %(a)s, 1 + g %% %(a)s FROM generate_series(1, %(c)s) g""",
    # One fixed Argon2id-shaped hash: the login file's size is what matters here.
    """INSERT INTO credentials (connection_id, username, password_hash)
       SELECT g, 'year-conn-' || g,
              '{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$'
              || md5(g::text) || md5(g::text)
         FROM generate_series(1, %(c)s) g""",
)

# A few connections send most of the mail (random()^3 skews towards connection 1).
MESSAGES = """
INSERT INTO messages (txn_id, queue_id, node, message_id, account_id, connection_id,
                      envelope_sender, header_from, size, recipient_count, accepted_at,
                      queued_at)
SELECT gen_random_uuid(), upper(to_hex(g)), %(node)s, g || '.' || c || '@shop.example',
       1 + c %% %(a)s, c, 'shop@shop.example', 'shop@shop.example', 10000, 1, t, t
  FROM (SELECT g, 1 + floor(%(c)s * random() ^ 3)::bigint AS c,
               %(now)s - random() * interval '365 days' AS t
          FROM generate_series(%(lo)s, %(hi)s) g) s""".replace("%(node)s", f"'{NODE}'")

LEDGER = """
INSERT INTO ledger (message_id, account_id, connection_id, recipient, billing,
                    quota_block_id, state, dsn, last_event_at, accepted_at)
SELECT m.id, m.account_id, m.connection_id, 'rcpt' || (m.id %% 2000000) || '@example.org',
       'quota', m.account_id,
       CASE WHEN r < 0.95 THEN 'delivered' WHEN r < 0.98 THEN 'bounced' ELSE 'deferred' END,
       CASE WHEN r < 0.95 THEN '2.0.0' WHEN r < 0.98 THEN '5.1.1' ELSE '4.2.0' END,
       m.accepted_at + interval '2 seconds', m.accepted_at
  FROM (SELECT *, random() AS r FROM messages WHERE id BETWEEN %(lo)s AND %(hi)s) m"""


# -- the measurements -----------------------------------------------------------------------


def timed(repeat: int, run: Callable[[int], object]) -> list[float]:
    samples = []
    for i in range(repeat):
        started = time.perf_counter()
        run(i)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def measure(conn: psycopg.Connection[Any], url: str, shape: Shape,
            repeat: int) -> list[Figure]:
    print("measuring:", flush=True)
    big = conn.execute("SELECT account_id, count(*) AS n FROM ledger GROUP BY account_id "
                       "ORDER BY n DESC LIMIT 1").fetchone()
    typical = conn.execute("SELECT account_id FROM ledger WHERE account_id > 100 "
                           "GROUP BY account_id ORDER BY count(*) LIMIT 1 OFFSET "
                           "(SELECT count(DISTINCT account_id) / 2 FROM ledger WHERE "
                           "account_id > 100)").fetchone()
    assert big is not None and typical is not None
    figures = []
    for label, account_id in (("biggest", big["account_id"]), ("typical", typical["account_id"])):
        name = f"year-{account_id}"
        for days in (7, 30):
            figures.append(Figure(f"stats, {label} account, {days} days", timed(
                repeat, lambda _i, n=name, d=days: reporting.connection_stats(
                    conn, now=NOW, active_window=dt.timedelta(days=30),
                    since=NOW - dt.timedelta(days=d), until=NOW, account=n,
                    connection=None))))
    figures.append(Figure("messages search by recipient", timed(
        repeat, lambda i: _search(conn, to=f"rcpt{(i * 7919) % 2_000_000}@example.org"))))
    figures.append(Figure("messages search by Message-ID", timed(
        repeat, lambda i: _search(conn, message_id=f"<{1 + (i * 104729) % shape.messages}.1"
                                                   "@shop.example>"))))
    figures.append(Figure("messages search by queue id", timed(
        repeat, lambda i: reporting.search_recipients(
            conn, to=None, message_id=None, connection=None, account=None, since=None,
            until=None, limit=50, queue_id=f"{1 + (i * 7907) % shape.messages:X}"))))
    month = parse_period(f"{NOW.year:04d}-{NOW.month:02d}")
    figures.append(Figure("billing report, biggest account, one month", timed(
        repeat, lambda _i: reporting.billing_inputs(conn, big["account_id"], month))))
    figures.append(_settler(conn, big["account_id"]))
    figures.append(_tracker(conn, shape))
    figures.extend(_policy(url))
    figures.append(_login_file(url))
    figures.append(_prune(conn))  # last: it deletes a month of the history
    return figures


def _search(conn: psycopg.Connection[Any], *, to: str | None = None,
            message_id: str | None = None) -> object:
    return reporting.search_recipients(conn, to=to, message_id=message_id, connection=None,
                                       account=None, since=None, until=None, limit=50)


def _settler(conn: psycopg.Connection[Any], account_id: int) -> Figure:
    """Rows recorded pending (as the milter does while settling lags), then settled."""
    message = conn.execute("SELECT id, connection_id FROM messages WHERE account_id = %s "
                           "LIMIT 1", (account_id,)).fetchone()
    assert message is not None
    samples = []
    for round_ in range(5):
        conn.execute(
            "INSERT INTO ledger (message_id, account_id, connection_id, recipient, billing, "
            "accepted_at) SELECT %s, %s, %s, 'pending' || %s || '-' || g || '@example.org', "
            "'pending', %s FROM generate_series(1, 200) g",
            (message["id"], account_id, message["connection_id"], round_, NOW))
        started = time.perf_counter()
        conn.execute("SELECT txrelay_settle_account(%s)", (account_id,))
        samples.append((time.perf_counter() - started) * 1000 / 200)
    return Figure("settler, per pending row", samples, None)


def _tracker(conn: psycopg.Connection[Any], shape: Shape) -> Figure:
    """Delivery lines of recent messages applied as the tracker applies them."""
    rows = conn.execute(
        "SELECT m.queue_id, l.recipient FROM messages m JOIN ledger l ON l.message_id = m.id"
        " ORDER BY m.id DESC LIMIT 2000").fetchall()
    conn.execute("UPDATE ledger SET state = 'queued' WHERE message_id IN (SELECT id FROM "
                 "messages ORDER BY id DESC LIMIT 2000)")
    prefix = "Dec  4 12:00:00 relay1 postfix/smtp[4242]: "
    lines = [f"{prefix}{r['queue_id']}: to=<{r['recipient']}>, relay=mx.example.org[192.0.2.1]"
             ":25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 Ok)"
             for r in rows]
    samples = []
    for batch in range(0, len(lines), 200):
        chunk = lines[batch:batch + 200]
        started = time.perf_counter()
        with conn.transaction():
            for line in chunk:
                engine.apply_event(conn, NODE, parse_line(line), NOW, line, RULES)
        samples.append((time.perf_counter() - started) * 1000 / len(chunk))
    return Figure("tracker, per delivery line", samples, None,
                  f"({1000 / statistics.median(samples):.0f} lines/s)")


def _prune(conn: psycopg.Connection[Any]) -> Figure:
    """`txrelay db prune` of the oldest month (the history's first of twelve): what a
    monthly retention job costs without partitions to drop (docs/performance.md)."""
    started = time.perf_counter()
    pruned = retention.prune(conn, NOW - dt.timedelta(days=365 - 30), dry_run=False)
    ms = (time.perf_counter() - started) * 1000
    return Figure(f"db prune, oldest month ({pruned.ledger_rows:,} rows)", [ms], None,
                  f"({pruned.ledger_rows / (ms / 1000):,.0f} rows/s, "
                  f"{pruned.connections:,} connections)")


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _policy(url: str) -> list[Figure]:
    loader = PolicyLoader(QuotaConfig())
    before = _rss_kib()
    with psycopg.connect(url, row_factory=dict_row) as conn:
        started = time.perf_counter()
        snapshot = loader.load(conn)
        first = (time.perf_counter() - started) * 1000
        refresh = timed(3, lambda _i: loader.build(fetch_policy_rows(conn)))
    added_mb = (_rss_kib() - before) / 1024
    count = len(snapshot.connections)
    return [Figure(f"milter policy load ({count:,} connections)", [first], None,
                   f"(RSS +{added_mb:.0f} MB; target <= 200 MB in all)"),
            Figure("milter policy refresh", refresh, None)]


def _login_file(url: str) -> Figure:
    with tempfile.TemporaryDirectory() as directory, psycopg.connect(url) as conn:
        path = Path(directory) / "passwd"
        samples = []
        for i in range(3):
            if i:
                conn.execute("UPDATE credentials SET password_hash = password_hash || 'x' "
                             "WHERE connection_id = 1")
                conn.commit()
            started = time.perf_counter()
            passdb_file.sync_passdb_file(conn, path)
            samples.append((time.perf_counter() - started) * 1000)
    return Figure("SMTP login file regeneration", samples, 2000.0)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, Terminated) as exc:
        print(f"\ninterrupted ({exc or 'Ctrl-C'}); the synthetic database was dropped")
        sys.exit(130)
