"""[milter] ledger_group_commit = true through the real milter callbacks: concurrent ends of
message are accepted, each recorded once, and the writer's batches show in the metric."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import Milter
import psycopg

from tests.milter.conftest import Driver, Outcome
from tests.store.builders import make_tenant
from txrelay import metrics
from txrelay.clock import SystemClock
from txrelay.config import Config
from txrelay.milter.runtime import open_runtime


def batch_count() -> float:
    return metrics.REGISTRY.get_sample_value("txrelay_ledger_batch_messages_count") or 0.0


def test_group_commit_accepts_concurrent_messages_and_records_each_once(
        config: Config, db: psycopg.Connection, unique: str, tmp_path: Path) -> None:
    grouped = dataclasses.replace(config, milter=dataclasses.replace(
        config.milter, node_name="group-node", ledger_group_commit=True,
        journal_dir=str(tmp_path)))
    runtime = open_runtime(grouped, SystemClock())
    try:
        tenant = make_tenant(db, unique)
        runtime.policy.refresh()
        drivers = [Driver(runtime) for _ in range(8)]
        outcomes: list[Outcome] = []
        batches_before = batch_count()

        def send(n: int) -> None:
            outcomes.append(drivers[n].send(tenant, recipients=(f"r{n}@customer.example",),
                                            queue_id=f"4QGROUP{n}"))

        threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [o.eom for o in outcomes] == [Milter.ACCEPT] * 8
        row = db.execute("SELECT count(*) AS m, count(DISTINCT txn_id) AS t FROM messages "
                         "WHERE account_id = %s", (tenant.account_id,)).fetchone()
        assert row == {"m": 8, "t": 8}
        assert 1 <= batch_count() - batches_before <= 8
        assert runtime.ledger.writer.loop.status().alive  # type: ignore[attr-defined]
    finally:
        runtime.close()
