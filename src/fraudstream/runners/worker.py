"""The Kafka worker: consume a micro-batch, decode, score, write to every sink, then commit.

Delivery is effectively once. Offsets are committed only after every sink confirmed the batch,
and every sink is idempotent (on `transaction_id`, or on the source position for dead letters),
so a crash at any point means the batch is read and written again, adding nothing twice. While a
sink is down the worker keeps the scored batch and retries only the sinks that have not confirmed
it yet, with capped exponential backoff, and commits nothing; the consumer keeps polling with its
partitions paused so the group does not evict it.

Undecodable or invalid messages become dead letters (raw bytes, reason, partition and offset);
they are committed with their batch, so one bad record never stalls the stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from fraudstream.core.engine import Engine
from fraudstream.core.errors import InvalidTransaction
from fraudstream.core.events import Rejected, decode_transaction, event_time_us, to_frame
from fraudstream.core.features import FeatureState
from fraudstream.ports import DeadLetter, ScoredBatch, Sink, SinkUnavailable
from fraudstream.runners.alignment import Arrival, EventTimeAligner

log = logging.getLogger("fraudstream.worker")

EMPTY_MESSAGE = "message has no value"
_FIRST_BACKOFF_S = 0.1


@dataclass
class WorkerTotals:
    """What one worker did since it started."""

    batches: int = 0
    scored: int = 0
    flagged: int = 0
    dead_letters: int = 0
    sink_retries: int = 0
    commit_failures: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    """Time spent per stage (`poll`, `score`, each sink by class name, `commit`)."""

    def add_time(self, stage: str, started: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started


class Worker:
    """One member of the scoring consumer group.

    `engine` is called for the current engine before each batch, so a hot-reloaded ruleset takes
    effect between batches, never inside one.
    """

    def __init__(
        self,
        *,
        consumer: Consumer,
        topic: str,
        engine: Callable[[], Engine],
        state: FeatureState,
        sinks: Sequence[Sink],
        max_batch: int = 1000,
        max_wait_s: float = 0.05,
        backoff_max_s: float = 5.0,
        max_idle_s: float = 1.0,
        max_buffered: int = 20_000,
        on_assignment: Callable[[list[int]], None] | None = None,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._engine = engine
        self._state = state
        self._sinks = list(sinks)
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._backoff_max_s = backoff_max_s
        self._max_idle_s = max_idle_s
        self._aligner = EventTimeAligner(max_buffered=max_buffered)
        self._on_assignment = on_assignment or (lambda _: None)
        self.assignment: set[int] = set()
        self.totals = WorkerTotals()

    def run(self, stop: threading.Event) -> WorkerTotals:
        """Score batches until `stop` is set; the batch in hand is finished and committed
        first (unless a sink is down, when it is left uncommitted to be read again)."""
        self._consumer.subscribe(
            [self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        last_release = time.monotonic()
        try:
            while not stop.is_set():
                started = time.perf_counter()
                self._poll()
                self.totals.add_time("poll", started)
                idle = time.monotonic() - last_release > self._max_idle_s
                arrivals = self._aligner.release(self._max_batch, force=idle)
                if arrivals:
                    self.process(arrivals, stop)
                    last_release = time.monotonic()  # idle = waiting for data, not working
                elif not self._aligner.buffered:
                    last_release = time.monotonic()
        finally:
            self._consumer.close()  # leaves the group at once: partitions move without delay
            for sink in self._sinks:
                sink.close()
        return self.totals

    def process(self, arrivals: list[Arrival], stop: threading.Event) -> bool:
        """Score, write and commit one batch; False when it was abandoned (stop during an
        outage), in which case nothing is committed and the batch will be read again."""
        started = time.perf_counter()
        batch = self.score(arrivals)
        self.totals.add_time("score", started)
        if not self._write(batch, stop):
            return False
        started = time.perf_counter()
        self._commit([arrival.message for arrival in arrivals])
        self.totals.add_time("commit", started)
        self.totals.batches += 1
        self.totals.scored += batch.frame.height
        self.totals.flagged += int(batch.frame.get_column("is_flagged").sum())
        self.totals.dead_letters += len(batch.dead_letters)
        return True

    def _poll(self) -> None:
        """Decode what arrived into the aligner's partition buffers."""
        for message in self._consumer.consume(self._max_batch, self._max_wait_s):
            key = (message.topic() or "", message.partition() or 0)
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._aligner.reached_end(key)
                else:
                    log.warning("consumer error: %s", error)
                continue
            self._aligner.add(key, self._arrival(key, message))

    def _arrival(self, key: tuple[str, int], message: Message) -> Arrival:
        try:
            transaction = decode_transaction(message.value() or b"")
        except InvalidTransaction as error:
            rejected = Rejected(0, message.value() or b"", error)
            return Arrival(message, None, rejected, self._aligner.frontier(key))
        return Arrival(message, transaction, None, event_time_us(transaction))

    def _on_assign(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions added (incrementally: the group rebalances cooperatively)."""
        self.assignment |= {p.partition for p in partitions}
        log.info("assigned partitions %s", sorted(self.assignment))
        self._aligner.assign([(p.topic, p.partition) for p in partitions])
        self._on_assignment(sorted(self.assignment))

    def _on_revoke(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        self.assignment -= {p.partition for p in partitions}
        log.info("revoked partitions %s", sorted(p.partition for p in partitions))
        self._aligner.revoke([(p.topic, p.partition) for p in partitions])
        self._on_assignment(sorted(self.assignment))

    def score(self, arrivals: list[Arrival]) -> ScoredBatch:
        """Score the decoded arrivals; the others become dead letters."""
        accepted = [a for a in arrivals if a.transaction is not None]
        transactions = [a.transaction for a in accepted if a.transaction is not None]
        letters = tuple(
            _dead_letter(a.message, a.rejected.error.reason, a.rejected.error.field)
            for a in arrivals
            if a.rejected is not None
        )
        frame = to_frame(transactions).with_columns(_positions([a.message for a in accepted]))
        frame = frame.sort("timestamp", maintain_order=True)
        decisions = self._engine().process(frame, self._state)
        decided_at = pl.lit(datetime.now(UTC)).dt.cast_time_unit("us").alias("decided_at")
        return ScoredBatch(decisions.outcome.with_columns(decided_at), letters)

    def _write(self, batch: ScoredBatch, stop: threading.Event) -> bool:
        """Every sink confirms the batch, or (stop set during an outage) False."""
        pending = list(self._sinks)
        backoff = _FIRST_BACKOFF_S
        while pending:
            sink = pending[0]
            try:
                started = time.perf_counter()
                sink.write(batch)
                self.totals.add_time(type(sink).__name__, started)
                pending.pop(0)
                backoff = _FIRST_BACKOFF_S
            except SinkUnavailable as error:
                self.totals.sink_retries += 1
                self._aligner.forget_ends()  # messages keep arriving while we wait
                log.warning("%s; retrying in %.1f s, offsets not committed", error, backoff)
                if self._wait_paused(backoff, stop):
                    log.warning("stopping during an outage: the batch will be read again")
                    return False
                backoff = min(2 * backoff, self._backoff_max_s)
        return True

    def _wait_paused(self, seconds: float, stop: threading.Event) -> bool:
        """Keep the group membership alive without taking new messages; True if stopped."""
        assignment = self._consumer.assignment()
        self._consumer.pause(assignment)
        try:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0 and not stop.is_set():
                for message in self._consumer.consume(1, min(left, 0.2)):
                    log.debug("paused consumer returned %s", message.error())
            return stop.is_set()
        finally:
            self._consumer.resume(self._consumer.assignment())

    def _commit(self, messages: list[Message]) -> None:
        """Commit the next offset of every partition in the batch. A failure (the partition
        moved to another worker meanwhile) is logged: that worker re-reads, sinks dedupe."""
        next_offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic(), message.partition())
            next_offsets[key] = max(next_offsets.get(key, 0), message.offset() + 1)
        offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            self.totals.commit_failures += 1
            log.warning("offset commit failed (%s): the batch will be read again", error)


def _positions(messages: list[Message]) -> list[pl.Series]:
    """Source partition, offset and broker timestamp of each accepted message."""
    return [
        pl.Series("kafka_partition", [m.partition() for m in messages], dtype=pl.Int32),
        pl.Series("kafka_offset", [m.offset() for m in messages], dtype=pl.Int64),
        pl.Series("ingested_at", [_timestamp_us(m) for m in messages], dtype=pl.Int64).cast(
            pl.Datetime("us", "UTC")
        ),
    ]


def _timestamp_us(message: Message) -> int | None:
    _, millis = message.timestamp()
    return None if millis < 0 else millis * 1000


def _dead_letter(message: Message, error: str, field: str) -> DeadLetter:
    raw = message.value()
    broker_us = _timestamp_us(message)
    received = datetime.fromtimestamp(broker_us / 1e6, UTC) if broker_us else datetime.now(UTC)
    return DeadLetter(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        raw=raw or b"",
        error=error if raw else EMPTY_MESSAGE,
        field=field if raw else "$",
        received_at=received,
    )
