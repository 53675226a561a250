"""One replication session of the capture: messages grouped by transaction, rows produced,
and a transaction acknowledged only after Kafka confirmed its rows.

Rows are produced as their Insert arrives (the producer batches them); nothing is confirmed
per row. At a Commit the transaction joins the current batch, and a batch is confirmed once it
holds `max_batch_rows` rows or its first transaction has waited `max_wait_s`: the producer is
flushed and every delivery report checked, the batch's dead letters are stored (PostgreSQL and
the `dead_letters` topic), the batch's last commit end LSN is stored with its counters, and
only then is that LSN acknowledged to the source server. A failure anywhere before the
acknowledgement leaves the source to send the transactions again: at least once, never lost.

Each change of a transaction gets an index in the order the server sends them (inserts,
updates and deletes alike, whatever is done with them), so (index, commit LSN) names a row
the same way on every replay: the dead letters' key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

import polars as pl
from confluent_kafka import KafkaError, Message, Producer

from fraudstream.adapters.cdc import ReplicationStream
from fraudstream.adapters.cdc_positions import PositionStore, Progress
from fraudstream.adapters.kafka import PRODUCER_DEFAULTS, DeliveryError
from fraudstream.adapters.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    ProtocolError,
    Relation,
    Truncate,
    TypeInfo,
    UnknownMessage,
    Update,
    Value,
    parse_message,
)
from fraudstream.ports import DeadLetter, ScoredBatch, Sink
from fraudstream.runners.capture_rows import Captured, RowMapper, RowPlan

log = logging.getLogger("fraudstream.capture")

STOP_GRACE_S: Final = 10.0
"""How long a stop waits for the transaction in hand to commit before leaving it for the next
start (which reads it again)."""
_FLUSH_TIMEOUT_S: Final = 30.0
_POLL_EVERY: Final = 1000


class Delivery:
    """Captured rows to the transactions topic, rejected ones to the dead-letter sinks."""

    def __init__(
        self, kafka: dict[str, str], topic: str, linger_ms: int, dead_letters: Sequence[Sink]
    ) -> None:
        self.topic = topic
        self._producer = Producer({**PRODUCER_DEFAULTS, **kafka, "linger.ms": linger_ms})
        self._dead_letter_sinks = list(dead_letters)
        self._letters: list[DeadLetter] = []
        self._failures: list[str] = []
        self._sent = 0

    def send(self, row: Captured) -> None:
        while True:
            try:
                self._producer.produce(self.topic, row.value, row.key, on_delivery=self._on)
                break
            except BufferError:  # the local queue is full: serve deliveries, then retry
                self._producer.poll(0.05)
        self._sent += 1
        if self._sent % _POLL_EVERY == 0:
            self._producer.poll(0)

    def reject(self, letter: DeadLetter) -> None:
        self._letters.append(letter)

    def confirm(self) -> None:
        """Every row sent so far delivered and every dead letter stored, or raise."""
        remaining = self._producer.flush(_FLUSH_TIMEOUT_S)
        if remaining or self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(
                f"{remaining + len(failures)} captured rows not confirmed by {self.topic}: "
                f"{failures[:2] or 'delivery timed out'}"
            )
        if self._letters:
            batch = ScoredBatch(pl.DataFrame(), tuple(self._letters))
            for sink in self._dead_letter_sinks:
                sink.write(batch)
            self._letters = []

    def discard(self) -> None:
        """Forget what is not confirmed (after a failure it is all sent again)."""
        self._producer.purge()
        self._producer.poll(0)
        self._letters, self._failures = [], []

    def _on(self, error: KafkaError | None, _: Message) -> None:
        if error is not None:
            self._failures.append(str(error))  # never the message: it holds card data

    def close(self) -> None:
        self._producer.flush(_FLUSH_TIMEOUT_S)
        for sink in self._dead_letter_sinks:
            sink.close()


@dataclass
class _Transaction:
    lsn: int
    commit_time: datetime
    index: int = 0
    progress: Progress = field(default_factory=Progress)


@dataclass
class _Batch:
    end_lsn: int | None = None
    since: float = 0.0
    progress: Progress = field(default_factory=Progress)


@dataclass(frozen=True)
class StreamOptions:
    slot: str
    source: str
    """The dead letters' `topic`: `postgres:schema.table`."""
    on_update: Literal["ignore", "emit"]
    max_batch_rows: int
    max_wait_s: float


Confirmed = Callable[[int, Progress], None]
"""Told each acknowledged LSN and what its batch added."""


class StreamReader:
    """Reads one started stream until `stop`, confirming batches as they fill."""

    def __init__(
        self,
        stream: ReplicationStream,
        mapper: RowMapper,
        delivery: Delivery,
        positions: PositionStore,
        options: StreamOptions,
        on_confirmed: Confirmed,
    ) -> None:
        self._stream = stream
        self._mapper = mapper
        self._delivery = delivery
        self._positions = positions
        self._options = options
        self._on_confirmed = on_confirmed
        self._plans: dict[int, RowPlan] = {}
        self._transaction: _Transaction | None = None
        self._batch = _Batch()
        self._unknown: set[str] = set()

    def run(self, stop: threading.Event) -> None:
        """Read and confirm until `stop` is set and the transaction in hand is done."""
        stop_by: float | None = None
        while True:
            payload = self._stream.read()
            if payload is not None:
                self._handle(parse_message(payload))
            elif self._due():
                self._confirm()
            if stop.is_set():
                stop_by = stop_by or time.monotonic() + STOP_GRACE_S
                if self._transaction is None or time.monotonic() > stop_by:
                    self._confirm()
                    return
            if payload is None:
                self._stream.wait(self._wait_s())

    def _due(self) -> bool:
        batch = self._batch
        return batch.end_lsn is not None and time.monotonic() - batch.since >= (
            self._options.max_wait_s
        )

    def _wait_s(self) -> float:
        if self._batch.end_lsn is None:
            return 0.5
        return max(0.0, min(0.5, self._batch.since + self._options.max_wait_s - time.monotonic()))

    def _handle(self, message: object) -> None:
        match message:
            case Begin():
                self._transaction = _Transaction(message.final_lsn, message.commit_time)
            case Insert():
                self._row(message.relation_oid, message.new)
            case Update():
                self._in_hand().progress.updates += 1
                if self._options.on_update == "emit":
                    self._row(message.relation_oid, message.new)
                else:
                    self._in_hand().index += 1
            case Delete():
                self._in_hand().progress.deletes += 1
                self._in_hand().index += 1
            case Truncate():
                self._in_hand().progress.truncates += 1
            case Commit():
                self._commit(message)
            case Relation():
                self._relation(message)
            case TypeInfo() | Origin() | LogicalMessage():
                pass  # nothing to capture: a type's name, a replication origin, a message
            case UnknownMessage(tag=tag) if tag not in self._unknown:
                self._unknown.add(tag)
                log.warning("skipping pgoutput messages of unknown type %r", tag)

    def _in_hand(self) -> _Transaction:
        if self._transaction is None:
            raise ProtocolError("a change outside of a transaction")
        return self._transaction

    def _relation(self, relation: Relation) -> None:
        plan = self._mapper.plan(relation)
        if plan.missing:
            log.warning(
                "table %s.%s now lacks the mapped columns of %s: those fields stay empty",
                relation.namespace, relation.name, list(plan.missing),
            )  # fmt: skip
        self._plans[relation.oid] = plan

    def _row(self, relation_oid: int, values: tuple[Value, ...]) -> None:
        transaction = self._in_hand()
        plan = self._plans.get(relation_oid)
        if plan is None:
            raise ProtocolError(f"a change to relation {relation_oid} before its description")
        record = self._mapper.record(plan, values)
        key = (self._options.source, transaction.index, transaction.lsn)
        result = self._mapper.map(record, key, transaction.commit_time)
        transaction.index += 1
        if isinstance(result, Captured):
            self._delivery.send(result)
            transaction.progress.rows_captured += 1
        else:
            self._delivery.reject(result)
            transaction.progress.rows_rejected += 1

    def _commit(self, commit: Commit) -> None:
        transaction = self._in_hand()
        self._transaction = None
        transaction.progress.transactions += 1
        batch = self._batch
        if batch.end_lsn is None:
            batch.since = time.monotonic()
        batch.end_lsn = commit.end_lsn
        batch.progress.add(transaction.progress)
        rows = batch.progress.rows_captured + batch.progress.rows_rejected
        if rows >= self._options.max_batch_rows or self._due():
            self._confirm()

    def _confirm(self) -> None:
        """Kafka and the dead-letter sinks confirm, the position is stored, then the source
        hears that the batch's transactions are safe."""
        batch = self._batch
        if batch.end_lsn is None:
            return
        self._delivery.confirm()
        self._positions.advance(self._options.slot, batch.end_lsn, batch.progress)
        self._stream.acknowledge(batch.end_lsn)
        self._batch = _Batch()
        self._on_confirmed(batch.end_lsn, batch.progress)
