"""A chunk's delivery statements sent in psycopg's pipeline mode, checked before it commits."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import psycopg

from txrelay.policy import logline
from txrelay.store import outcomes
from txrelay.store.ledger_states import FINAL
from txrelay.store.tracking import Counters
from txrelay.tracker.known import LedgerRows, Owners


class PipelineMismatch(Exception):
    """A pipelined delivery statement did not do what the chunk's locked rows said it would:
    the chunk's transaction must roll back (the tracker applies it again without the
    pipeline)."""


@dataclass(frozen=True)
class _Sent:
    cursor: psycopg.Cursor[Any]
    ledger_id: int
    expected: bool  # the row was open: the statement updates it and returns its id


class DeliveryPipeline:
    """outcomes.record_delivery without waiting for each result: the statements go out in
    pipeline mode, each with the result the chunk's locked rows (known.LedgerRows) predict,
    and settle() waits for them all and checks every result against its prediction.

    The chunk counts outcomes and keeps LedgerRows in step from the predictions, so a
    statement whose result the chunk reads (a rowcount, a bounce's suppression rules, an
    owner, the new position) must come after settle(): the engine settles before every
    line it does not pipeline and before the position. Use as a context manager inside the
    chunk's transaction: leaving it normally settles; an exception leaves the pipeline and
    the transaction rolls back."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self._pipeline = ExitStack()
        self._sent: list[_Sent] = []

    def __enter__(self) -> DeliveryPipeline:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if error is None:
            self.settle()
        else:
            self._sent = []
            self._pipeline.__exit__(kind, error, trace)

    def send(
        self, ledger_id: int, expected: bool, record: Callable[[], psycopg.Cursor[Any]]
    ) -> None:
        """record() (outcomes.record_delivery of ledger_id) in the pipeline; expected: it
        updates the row (the row was open)."""
        if not self._sent:
            self._pipeline.enter_context(self.conn.pipeline())
        self._sent.append(_Sent(record(), ledger_id, expected))

    def settle(self) -> None:
        """Leave pipeline mode (psycopg syncs and reads every result) and check each result;
        PipelineMismatch when one differs from its prediction."""
        if not self._sent:
            return
        sent, self._sent = self._sent, []
        self._pipeline.close()
        for statement in sent:
            row = statement.cursor.fetchone()
            recorded = row is not None and int(row["id"]) == statement.ledger_id
            if recorded != statement.expected:
                raise PipelineMismatch(
                    f"ledger row {statement.ledger_id}: the delivery statement "
                    f"{'updated' if recorded else 'did not update'} it, the chunk's locked "
                    f"rows said it would{'' if statement.expected else ' not'}"
                )


def pipelined_delivery(
    event: logline.Event,
    now: dt.datetime,
    kept: set[str] | None,
    owners: Owners,
    rows: LedgerRows,
    deliveries: DeliveryPipeline,
) -> Counters | None:
    """engine._apply_delivery's delivered/deferred path sent in the pipeline, when everything it
    needs is known without a query: the queue id has no kept lines, its owner and that
    message's locked rows are known, and the line names one of them without ambiguity.
    The statement's result is predicted from the row's locked state (final: it changes
    nothing) and checked at settle(). None: apply the event the ordinary way."""
    if not isinstance(event, logline.Delivery) or kept is None or event.queue_id in kept:
        return None
    owner = owners.cached(event.queue_id)
    if owner is None:
        return None
    message_id, queued = owner
    copies = rows.locked(message_id)
    if copies is None:
        return None
    recipients = rows.recipients(message_id, logline.addresses_of(event))
    picked = logline.pick_candidate(event, set(recipients))
    if picked is None or picked[0].outcome is logline.Outcome.BOUNCED:
        return None
    candidate, address = picked
    ledger_id = recipients[address]
    expected = copies[ledger_id].state not in FINAL  # what RECORD_DELIVERY leaves as it is
    owners.queued(event.queue_id, message_id)
    state = candidate.outcome.value
    deliveries.send(
        ledger_id,
        expected,
        lambda: outcomes.record_delivery(
            deliveries.conn,
            message_id,
            ledger_id,
            state,
            candidate.dsn,
            candidate.describe(),
            now,
            queued=queued,
        ),
    )
    rows.recorded(message_id, ledger_id, state if expected else None)
    return Counters(**{state: 1}) if expected else Counters()
