"""`txrelay stats --by`: figures per time bucket, exact against ledger rows written around
bucket edges, in UTC and in Europe/Berlin across the end of summer time (2026-10-25, when
03:00 CEST becomes 02:00 CET at 01:00 UTC)."""

from __future__ import annotations

import csv
import datetime as dt
import io

import psycopg

from tests.cli.conftest import Txrelay
from tests.store.tracking_fixtures import Sender, add_message, make_sender


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def mail(db: psycopg.Connection, sender: Sender, at: str, outcomes: list[str],
         complained: int = 0) -> None:
    """One message at `at` (UTC) to one recipient per outcome (delivered, bounced, deferred,
    queued, voided); the first `complained` recipients complained later."""
    recipients = [f"r{i}@x.test" for i in range(len(outcomes))]
    message = add_message(db, sender, f"Q{at}", recipients, accepted_at=utc(at))
    for index, (recipient, state) in enumerate(zip(recipients, outcomes, strict=True)):
        db.execute("UPDATE ledger SET state = %s, complained_at = %s "
                   "WHERE message_id = %s AND recipient = %s",
                   (state, utc(at) + dt.timedelta(days=1) if index < complained else None,
                    message, recipient))


def around_the_end_of_summer_time(db: psycopg.Connection, unique: str) -> Sender:
    sender = make_sender(db, unique)
    mail(db, sender, "2026-10-24T21:59:59", ["delivered"])                   # Berlin 24th 23:59:59
    mail(db, sender, "2026-10-24T22:00:00", ["delivered", "bounced"], 1)     # Berlin 25th 00:00
    mail(db, sender, "2026-10-25T00:30:00", ["bounced", "deferred"])         # 02:30 CEST
    mail(db, sender, "2026-10-25T01:30:00", ["queued", "voided"])            # 02:30 CET
    mail(db, sender, "2026-10-25T22:59:59", ["delivered"])                   # Berlin 25th 23:59:59
    mail(db, sender, "2026-10-25T23:00:00", ["bounced", "bounced", "delivered"], 2)  # 26th
    return sender


FIGURES = ("arrived", "delivered", "deferred", "bounced", "complained", "in_flight")


def figures(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(row["start"], *(row[name] for name in FIGURES), row["bounce_rate"]) for row in rows]


def test_days_follow_the_zones_midnight_including_the_25_hour_day(
        txrelay: Txrelay, db: psycopg.Connection, unique: str) -> None:
    sender = around_the_end_of_summer_time(db, unique)
    berlin = txrelay("stats", "--by", "1d", "--account", sender.account, "--tz", "Europe/Berlin",
                     "--since", "2026-10-24", "--until", "2026-10-27", "--json").json()
    assert [(r["start"], r["end"]) for r in berlin] == [
        ("2026-10-24T00:00:00+02:00", "2026-10-25T00:00:00+02:00"),
        ("2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00"),  # 25 hours
        ("2026-10-26T00:00:00+01:00", "2026-10-27T00:00:00+01:00")]
    assert figures(berlin) == [
        ("2026-10-24T00:00:00+02:00", 1, 1, 0, 0, 0, 0, "0.0000"),
        ("2026-10-25T00:00:00+02:00", 6, 2, 1, 2, 1, 1, "0.3333"),
        ("2026-10-26T00:00:00+01:00", 3, 1, 0, 2, 2, 0, "0.6667")]
    assert {r["connection"] for r in berlin} == {"Web shop"}

    in_utc = txrelay("stats", "--by", "1d", "--account", sender.account,
                     "--since", "2026-10-24", "--until", "2026-10-27", "--json").json()
    assert figures(in_utc) == [
        ("2026-10-24T00:00:00+00:00", 3, 2, 0, 1, 1, 0, "0.3333"),
        ("2026-10-25T00:00:00+00:00", 7, 2, 1, 3, 2, 1, "0.4286"),
        ("2026-10-26T00:00:00+00:00", 0, 0, 0, 0, 0, 0, "0.0000")]

    whole = txrelay("stats", "--account", sender.account, "--since", "2026-10-24",
                    "--until", "2026-10-27", "--json").json()[0]
    for name in ("arrived", "delivered", "deferred", "bounced", "in_flight"):
        assert sum(int(r[name]) for r in in_utc) == whole[name] == sum(
            int(r[name]) for r in berlin), name


def test_the_hour_repeated_when_clocks_go_back_is_two_buckets(
        txrelay: Txrelay, db: psycopg.Connection, unique: str) -> None:
    sender = around_the_end_of_summer_time(db, unique)
    rows = txrelay("stats", "--by", "1h", "--account", sender.account, "--tz", "Europe/Berlin",
                   "--since", "2026-10-25T01:00", "--until", "2026-10-25T04:00",
                   "--json").json()
    assert [(r["start"], r["arrived"], r["bounced"]) for r in rows] == [
        ("2026-10-25T01:00:00+02:00", 0, 0),
        ("2026-10-25T02:00:00+02:00", 2, 1),
        ("2026-10-25T02:00:00+01:00", 1, 0),  # the voided recipient never arrived
        ("2026-10-25T03:00:00+01:00", 0, 0)]


def test_quarter_hours_count_a_recipient_on_the_edge_in_the_later_bucket(
        txrelay: Txrelay, db: psycopg.Connection, unique: str) -> None:
    sender = make_sender(db, unique)
    mail(db, sender, "2026-10-20T10:14:59.999999", ["delivered"])
    mail(db, sender, "2026-10-20T10:15:00", ["bounced", "delivered"])
    mail(db, sender, "2026-10-20T10:44:59", ["delivered"])
    result = txrelay("stats", "--by", "15m", "--account", sender.account,
                     "--since", "2026-10-20T10:05", "--until", "2026-10-20T10:45:00+00:00",
                     "--csv")
    assert result.exit_code == 0, result.stderr
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(table[0]) == ["start", "end", "account", "connection", "connection_id",
                              *FIGURES, "suppressed", "sandboxed", "bounce_rate"]
    assert [(r["start"], r["arrived"], r["bounced"], r["bounce_rate"]) for r in table] == [
        ("2026-10-20T10:00:00+00:00", "1", "0", "0.0000"),  # since is rounded down to 10:00
        ("2026-10-20T10:15:00+00:00", "2", "1", "0.5000"),
        ("2026-10-20T10:30:00+00:00", "1", "0", "0.0000")]  # until 10:45 is exclusive


def refused(db: psycopg.Connection, connection_id: int, at: str, count: int) -> None:
    """COUNT recipients refused at RCPT as suppressed, added as the milter adds them (one
    call of txrelay_count_suppressed per flush; at: the 15-minute bucket, UTC)."""
    db.execute("SELECT txrelay_count_suppressed(%s, %s, %s)",
               ([connection_id], [utc(at)], [count]))


def test_suppressed_refusals_count_in_their_bucket_as_plain_stats_counts_them(
        txrelay: Txrelay, db: psycopg.Connection, unique: str) -> None:
    sender = make_sender(db, unique)
    other = db.execute("INSERT INTO connections (account_id, name) VALUES (%s, 'Newsletter') "
                       "RETURNING id", (sender.account_id,)).fetchone()
    assert other is not None
    mail(db, sender, "2026-10-20T10:20:00", ["delivered"])
    refused(db, sender.connection_id, "2026-10-20T09:45:00", 7)  # before the range
    refused(db, sender.connection_id, "2026-10-20T10:00:00", 3)
    refused(db, sender.connection_id, "2026-10-20T10:45:00", 2)
    refused(db, sender.connection_id, "2026-10-20T10:45:00", 1)  # a second milter's flush
    refused(db, sender.connection_id, "2026-10-20T11:45:00", 4)
    refused(db, other["id"], "2026-10-20T11:00:00", 5)
    refused(db, sender.connection_id, "2026-10-20T12:00:00", 9)  # until is exclusive
    rows = txrelay("stats", "--by", "1h", "--account", sender.account, "--since",
                   "2026-10-20T10:00", "--until", "2026-10-20T12:00", "--json").json()
    assert [(r["connection"], r["start"], r["arrived"], r["suppressed"]) for r in rows] == [
        ("Newsletter", "2026-10-20T10:00:00+00:00", 0, 0),
        ("Newsletter", "2026-10-20T11:00:00+00:00", 0, 5),
        ("Web shop", "2026-10-20T10:00:00+00:00", 1, 6),
        ("Web shop", "2026-10-20T11:00:00+00:00", 0, 4)]
    # Suppressed recipients never arrived: no other column counts them.
    assert [r["bounced"] + r["delivered"] + r["in_flight"] for r in rows] == [0, 0, 1, 0]
    table = list(csv.DictReader(io.StringIO(txrelay(
        "stats", "--by", "15m", "--account", sender.account, "--connection", "Web shop",
        "--since", "2026-10-20T10:00", "--until", "2026-10-20T11:00", "--csv").stdout)))
    assert [(r["start"][11:16], r["suppressed"]) for r in table] == [
        ("10:00", "3"), ("10:15", "0"), ("10:30", "0"), ("10:45", "3")]
    whole = {r["connection"]: r["suppressed"] for r in txrelay(
        "stats", "--account", sender.account, "--since", "2026-10-20T10:00",
        "--until", "2026-10-20T12:00", "--json").json()}
    assert whole == {"Newsletter": 5, "Web shop": 10}


def test_every_bucket_of_every_live_connection_is_listed_even_without_mail(
        txrelay: Txrelay, db: psycopg.Connection, unique: str) -> None:
    sender = make_sender(db, unique)
    db.execute("INSERT INTO connections (account_id, name) VALUES (%s, 'Newsletter')",
               (sender.account_id,))
    mail(db, sender, "2026-10-20T05:00:00", ["delivered"])
    rows = txrelay("stats", "--by", "1h", "--account", sender.account,
                   "--since", "2026-10-20T00:00", "--until", "2026-10-21T00:00", "--json").json()
    assert len(rows) == 2 * 24
    by_connection = {name: [r["arrived"] for r in rows if r["connection"] == name]
                     for name in ("Newsletter", "Web shop")}
    assert by_connection["Newsletter"] == [0] * 24
    assert by_connection["Web shop"] == [0] * 5 + [1] + [0] * 18
    only = txrelay("stats", "--by", "1d", "--account", sender.account, "--connection",
                   "Newsletter", "--since", "2026-10-20", "--until", "2026-10-21",
                   "--json").json()
    assert [(r["connection"], r["arrived"]) for r in only] == [("Newsletter", 0)]


def test_human_table_names_the_zone_offset_of_each_bucket(
        txrelay: Txrelay, db: psycopg.Connection, unique: str) -> None:
    sender = around_the_end_of_summer_time(db, unique)
    result = txrelay("stats", "--by", "1d", "--account", sender.account, "--tz", "Europe/Berlin",
                     "--since", "2026-10-25", "--until", "2026-10-26")
    assert result.exit_code == 0, result.stderr
    header, line = result.stdout.splitlines()
    assert header.split() == ["START", "ACCOUNT", "CONNECTION", "ARRIVED", "DELIVERED",
                              "DEFERRED", "BOUNCED", "COMPLAINED", "IN", "FLIGHT", "SUPPRESSED",
                              "SANDBOXED", "BOUNCE%"]
    assert line.startswith("2026-10-25 00:00+0200")
    assert line.split()[-9:] == ["6", "2", "1", "2", "1", "1", "0", "0", "33.33"]


def test_default_range_of_hours_is_the_last_week(txrelay: Txrelay, db: psycopg.Connection,
                                                 unique: str) -> None:
    sender = make_sender(db, unique)
    rows = txrelay("stats", "--by", "1h", "--account", sender.account, "--json").json()
    # the fixed clock is 2026-11-03 09:30 UTC: from 2026-10-27 09:00 to 10:00 today
    assert (rows[0]["start"], rows[-1]["end"], len(rows)) == (
        "2026-10-27T09:00:00+00:00", "2026-11-03T10:00:00+00:00", 7 * 24 + 1)


def test_unknown_bucket_is_a_usage_error(txrelay: Txrelay) -> None:
    result = txrelay("stats", "--by", "5m")
    assert result.exit_code == 2
    assert "'5m' is not one of '15m', '1h', '1d'" in result.stderr


def test_since_after_until_is_refused_with_both_moments(txrelay: Txrelay) -> None:
    result = txrelay("stats", "--by", "1h", "--since", "2026-10-02", "--until", "2026-10-01")
    assert result.exit_code == 4
    assert result.error == ("--since (2026-10-02T00:00:00+00:00) must be before --until "
                            "(2026-10-01T00:00:00+00:00)")


def test_a_range_of_too_many_buckets_is_refused(txrelay: Txrelay) -> None:
    result = txrelay("stats", "--by", "15m", "--since", "2025-01-01", "--until", "2026-01-01")
    assert result.exit_code == 4
    assert "is more than 10000 buckets: choose a larger bucket or a shorter range" in result.error


def test_unknown_account_time_zone_and_connection_are_named(txrelay: Txrelay,
                                                            db: psycopg.Connection,
                                                            unique: str) -> None:
    result = txrelay("stats", "--by", "1d", "--account", "Nobody at all")
    assert (result.exit_code, result.error) == (
        3, "no account named 'Nobody at all'; see 'txrelay account list'")
    result = txrelay("stats", "--by", "1d", "--tz", "Mars/Olympus")
    assert result.exit_code == 2 and "'Mars/Olympus' is not a time zone" in result.stderr
    sender = make_sender(db, unique)
    result = txrelay("stats", "--by", "1d", "--account", sender.account, "--connection", "Nope")
    assert result.exit_code == 3 and "no connection named 'Nope'" in result.error


def test_json_and_csv_together_is_a_usage_error(txrelay: Txrelay) -> None:
    result = txrelay("stats", "--by", "1d", "--json", "--csv")
    assert result.exit_code == 2 and "choose one of --json and --csv" in result.stderr


def test_stats_without_by_also_prints_csv(txrelay: Txrelay, db: psycopg.Connection,
                                          unique: str) -> None:
    sender = make_sender(db, unique)
    mail(db, sender, "2026-10-20T05:00:00", ["delivered", "bounced"])
    result = txrelay("stats", "--account", sender.account, "--csv")
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["connection"], r["arrived"], r["bounce_rate"]) for r in table] == [
        ("Web shop", "2", "0.5000")]
