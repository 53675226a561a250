"""The Kafka worker: read the whole stream, fold it into feature state, score the partitions the
group gave this worker, write to every sink, then commit.

Two consumers: `group`, a member of the scoring consumer group whose partitions are this worker's
to score and commit (it never fetches: its partitions stay paused), and `reader`, assigned every
partition of the topic, which feeds the event-time aligner. Every released message advances the
feature state; only the group's partitions, from their committed offsets on, are scored and
written (see `stream_state.py` for why every worker folds everything).

Delivery is effectively once. Offsets are committed only after every sink confirmed the batch,
and every sink is idempotent (on `transaction_id`, or on the source position for dead letters),
so a crash at any point means the batch is read and written again, adding nothing twice; and
since the state is rebuilt to just before the committed offsets, it is scored the same way
again. The sinks write up to `in_flight` batches in the background while the next is read and
scored (`batch_writer.py`), and the batches are committed in the order they were read. While a
sink is down the writer retries only the sinks that have not confirmed the batch yet, with
capped exponential backoff, and nothing is committed; reading pauses meanwhile, and the group
membership stays alive.

Undecodable or invalid messages become dead letters (raw bytes, reason, partition and offset);
they are committed with their batch, so one bad record never stalls the stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from fraudstream.adapters.kafka_sinks import topic_partitions
from fraudstream.core.engine import Engine
from fraudstream.ports import ScoredBatch, Sink
from fraudstream.runners.alignment import Arrival, EventTimeAligner
from fraudstream.runners.batch_writer import BatchWriter, InFlight
from fraudstream.runners.heap import freeze_startup_heap
from fraudstream.runners.scoring_step import decode_arrival, score_arrivals
from fraudstream.runners.stream_state import StreamState

if TYPE_CHECKING:
    from fraudstream.adapters.metrics import WorkerMetrics

log = logging.getLogger("fraudstream.worker")

_SHORT_WAIT_S = 0.1
_METADATA_TIMEOUT_S = 30.0


@dataclass
class WorkerTotals:
    """What one worker did since it started."""

    batches: int = 0
    scored: int = 0
    folded: int = 0
    """Messages that only advanced the state (other workers' partitions, or already committed)."""
    flagged: int = 0
    dead_letters: int = 0
    sink_retries: int = 0
    commit_failures: int = 0
    restarts: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    """Time spent per stage (`poll`, `score`, `wait_for_sinks`, each sink by class name,
    `commit`); the sinks write side by side and beside the scoring, so their times overlap."""

    def add_time(self, stage: str, started: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started


class Worker:
    """One member of the scoring consumer group.

    `engine` is called for the current engine before each batch, so a hot-reloaded ruleset takes
    effect between batches, never inside one. `metrics`, when given, hears of every batch.
    """

    def __init__(
        self,
        *,
        group: Consumer,
        reader: Consumer,
        topic: str,
        engine: Callable[[], Engine],
        state: StreamState,
        sinks: Sequence[Sink],
        max_batch: int = 4000,
        max_wait_s: float = 0.05,
        in_flight: int = 2,
        backoff_max_s: float = 5.0,
        max_idle_s: float = 1.0,
        partition_buffer: int = 10_000,
        end_grace_s: float = 0.2,
        handover_wait_s: float = 10.0,
        on_assignment: Callable[[list[int]], None] | None = None,
        metrics: WorkerMetrics | None = None,
        decision_key: bytes | None = None,
    ) -> None:
        self._group = group
        self._reader = reader
        self._topic = topic
        self._engine = engine
        self.state = state
        self.totals = WorkerTotals()
        self._metrics = metrics
        if metrics is not None:
            metrics.follow(self.totals)
        self._writer = BatchWriter(
            sinks, backoff_max_s=backoff_max_s, timed=self._sink_timed, in_flight=in_flight
        )
        self._in_flight: deque[InFlight] = deque()
        """Batches handed to the writer and not committed yet, oldest first."""
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._max_idle_s = max_idle_s
        self._partition_buffer = partition_buffer
        self._on_assignment = on_assignment or (lambda _: None)
        self._end_grace_s = end_grace_s
        self._handover_wait_s = handover_wait_s
        self._aligner = self._new_aligner()
        self._partitions: set[int] = set()
        self._floors: dict[int, int] = {}
        """This worker's partitions -> the first offset it scores: the committed offset."""
        self._expected: dict[int, int] = {}
        self._held: set[int] = set()
        """Partitions paused because their buffer is full."""
        self._joined = False
        self._restart_needed = True
        self._decision_key = decision_key
        """Verifies the decisions the scoring API sends along (`decision_record.py`)."""

    @property
    def assignment(self) -> set[int]:
        return set(self._floors)

    def run(self, stop: threading.Event) -> WorkerTotals:
        """Score batches until `stop` is set; the batch in hand is finished and committed
        first (unless a sink is down, when it is left uncommitted to be read again)."""
        # Kernels load (or, on a machine's first run, compile) while the group is joined; the
        # first batch waits for them, so no transaction's latency includes loading them.
        warm_up = threading.Thread(target=self._warm_up, name="warm-up", daemon=True)
        warm_up.start()
        self._group.subscribe(
            [self._topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        last_release = time.monotonic()
        backlog = False
        try:
            while not stop.is_set():
                started = time.perf_counter()
                self._serve_group(0.0 if self._joined else self._max_wait_s)
                if not self._joined:
                    continue
                if self._restart_needed:
                    self._restart()
                    last_release = time.monotonic()  # the wait to join was not idleness
                self._read(0.0 if backlog else self._max_wait_s)
                self.totals.add_time("poll", started)
                idle = time.monotonic() - last_release > self._max_idle_s
                arrivals = self._aligner.release(
                    self._max_batch, force=idle, now_s=time.monotonic()
                )
                backlog = len(arrivals) == self._max_batch  # more is ready: read without waiting
                if arrivals:
                    warm_up.join()
                    self.process(arrivals, stop)
                    last_release = time.monotonic()  # idle = waiting for data, not working
                elif not self._aligner.buffered:
                    last_release = time.monotonic()
                self._settle(wait=False)
                if self.state.checkpoint_due():
                    self.state.save_checkpoint()
                if self._metrics is not None:
                    self._metrics.state(self.state.features)
        finally:
            self._settle_before_leaving()
            if self._joined:
                self.state.save_checkpoint(wait=True)  # whoever starts next starts from here
            self.state.close()
            self._group.close()  # leaves the group at once: partitions move without delay
            self._reader.close()
            self._writer.close()
        return self.totals

    def _warm_up(self) -> None:
        self._engine().warm_up(self.state.config)
        freeze_startup_heap()

    def _settle_before_leaving(self) -> None:
        try:
            self._settle()
        except Exception:  # leaving anyway: what is not committed is read again
            log.exception("the last batch could not be committed")

    # -- the group: which partitions are ours ------------------------------------------------

    def _serve_group(self, timeout_s: float) -> None:
        """Let the group member run its callbacks and heartbeat; it fetches nothing."""
        for message in self._group.consume(16, timeout_s):
            error = message.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                log.warning("group consumer: %s", error)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions added (incrementally: the group rebalances cooperatively). Scoring starts
        at each one's committed offset; if the state already folded past it, start over."""
        consumer.incremental_assign(partitions)
        consumer.pause(partitions)
        self._joined = True
        if partitions:
            committed = consumer.committed(partitions, timeout=_METADATA_TIMEOUT_S)
            for tp in committed:
                floor = max(tp.offset, 0)  # nothing committed yet: score from the beginning
                self._floors[tp.partition] = floor
                if self.state.has_seen(tp.partition, floor) or tp.partition not in self._partitions:
                    self._restart_needed = True
        log.info("assigned %s; scoring %s", [p.partition for p in partitions], self._floors)
        self._on_assignment(sorted(self._floors))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away: from now on they are only folded. The batches in flight
        hold some of their messages, so they are written and committed first: their new
        owner then starts after them, instead of scoring and writing them a second time (which
        the Delta sink, idempotent only for one writer per partition, would keep twice)."""
        self._commit_in_flight()
        self._on_lost(consumer, partitions)

    def _on_lost(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions gone without a handover (the membership expired): nothing can be
        committed for them any more; their new owner reads again what was not."""
        for tp in partitions:
            self._floors.pop(tp.partition, None)
        log.info("gave up %s", sorted(p.partition for p in partitions))
        self._on_assignment(sorted(self._floors))

    def _commit_in_flight(self) -> None:
        """Wait for every batch in flight and commit it, oldest first, for up to
        `worker.handover_wait_s`. Runs inside the group's callback, so it waits without serving
        the group (the callback may itself run inside `_wait_serving`, which leaves the batch it
        waits for at the head of `_in_flight` for this reason)."""
        deadline = time.monotonic() + self._handover_wait_s
        while self._in_flight:
            try:
                self._in_flight[0].written.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                log.warning(
                    "partitions revoked with %d batches still being written: their new owner"
                    " reads those again", len(self._in_flight),
                )  # fmt: skip
                return
            if not self._settle(keep=len(self._in_flight) - 1):
                return

    # -- the reader: every partition, in event-time order --------------------------------------

    def _restart(self) -> None:
        """Rebuild the state to just before every committed offset of ours, and read every
        partition on from where the state stops."""
        self._restart_needed = False
        self.totals.restarts += 1
        self._partitions |= set(
            topic_partitions(self._reader, self._topic, _METADATA_TIMEOUT_S)
        ) | set(self._floors)
        self.state.restart(self._floors)
        self._aligner = self._new_aligner()
        self._aligner.assign([(self._topic, p) for p in self._partitions])
        self._expected = {p: self.state.seen[p] for p in self._partitions if p in self.state.seen}
        self._held = set()
        self._reader.unassign()
        self._reader.assign(
            [
                TopicPartition(self._topic, p, self.state.seen.get(p, OFFSET_BEGINNING))
                for p in sorted(self._partitions)
            ]
        )
        log.info(
            "reading %d partitions from %s (checkpoint %s)",
            len(self._partitions), self.state.seen or "the beginning", self.state.restored_from,
        )  # fmt: skip

    def _sink_timed(self, sink: str, started: float) -> None:
        """A sink stored a batch: its time goes to the totals and, served, to the metrics."""
        self.totals.add_time(sink, started)
        if self._metrics is not None:
            self._metrics.sink_wrote(sink, time.perf_counter() - started)

    def _new_aligner(self) -> EventTimeAligner:
        # Memory is bounded by pausing full partitions (`_hold_full_partitions`), not by
        # releasing out of order.
        return EventTimeAligner(max_buffered=1 << 62, end_grace_s=self._end_grace_s)

    def _read(self, wait_s: float) -> None:
        """Decode what arrived (waiting up to `wait_s` for a full batch) into the aligner's
        partition buffers."""
        for message in self._reader.consume(self._max_batch, wait_s):
            partition = message.partition() or 0
            key = (self._topic, partition)
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._aligner.reached_end(key)
                else:
                    log.warning("reader: %s", error)
                continue
            offset = message.offset() or 0
            if offset < self._expected.get(partition, 0):
                continue  # fetched before a restart moved the position back or on
            self._expected[partition] = offset + 1
            self._aligner.add(key, self._arrival(key, message))
        self._hold_full_partitions()

    def _hold_full_partitions(self) -> None:
        """Pause a partition whose buffer is full, resume it once it drained to half: the
        aligner then waits for slow partitions without holding the whole backlog in memory."""
        for partition in self._partitions:
            queued = self._aligner.queued((self._topic, partition))
            if partition not in self._held and queued >= self._partition_buffer:
                self._reader.pause([TopicPartition(self._topic, partition)])
                self._held.add(partition)
            elif partition in self._held and queued <= self._partition_buffer // 2:
                self._reader.resume([TopicPartition(self._topic, partition)])
                self._held.discard(partition)

    def _arrival(self, key: tuple[str, int], message: Message) -> Arrival:
        return decode_arrival(
            message, self._aligner.frontier(key), time.monotonic(), self._decision_key
        )

    # -- one batch -----------------------------------------------------------------------------

    def _decides(self, message: Message) -> bool:
        floor = self._floors.get(message.partition() or 0)
        return floor is not None and (message.offset() or 0) >= floor

    def process(self, arrivals: list[Arrival], stop: threading.Event) -> bool:
        """Fold and score one batch and hand it to the writer, once the batch before it is
        written and committed; False when that one was abandoned (stop during an outage), in
        which case neither is committed and both will be read again."""
        started = time.perf_counter()
        decided = [self._decides(a.message) for a in arrivals]
        batch = self.score(arrivals, decided)
        self.state.folded(_next_offsets([a.message for a in arrivals]))
        scored_s = time.perf_counter() - started
        self.totals.add_time("score", started)
        mine = [a.message for a, d in zip(arrivals, decided, strict=True) if d]
        self.totals.folded += len(arrivals) - len(mine)
        if not mine:
            return True
        if not self._settle(keep=self._writer.in_flight - 1):
            return False
        in_flight = self._writer.submit(batch, _next_offsets(mine), stop)
        self._in_flight.append(in_flight)
        self.totals.batches += 1
        self.totals.scored += batch.frame.height
        self.totals.flagged += int(batch.frame.get_column("is_flagged").sum())
        self.totals.dead_letters += len(batch.dead_letters)
        if self._metrics is not None:
            letters = len(batch.dead_letters)
            self._metrics.batch_scored(batch.frame, letters, scored_s, in_flight.written)
        return True

    def score(self, arrivals: list[Arrival], decided: list[bool]) -> ScoredBatch:
        """Fold every decoded arrival into the state and score those `decided` marks."""
        return score_arrivals(self._engine(), self.state.features, arrivals, decided)

    def _settle(self, keep: int = 0, *, wait: bool = True) -> bool:
        """Commit the oldest batches in flight, in order, until `keep` remain (or, without
        `wait`, those already written); False if one was abandoned, and then none after it is
        committed either: they will all be read again."""
        while len(self._in_flight) > keep and (wait or self._in_flight[0].written.done()):
            if not self._settle_oldest():
                self._in_flight.clear()
                return False
        return True

    def _settle_oldest(self) -> bool:
        """Wait for the oldest batch in flight and commit it; False if it was abandoned. The
        group is served meanwhile, and reading pauses if the wait is long (a sink is down)."""
        in_flight = self._in_flight[0]
        if not in_flight.written.done():
            started = time.perf_counter()
            self._wait_serving(in_flight)
            self.totals.add_time("wait_for_sinks", started)
            if not self._in_flight or self._in_flight[0] is not in_flight:
                # A revocation came while the group was served, and settled it meanwhile.
                return bool(in_flight.written.result())
        self._in_flight.popleft()
        written = in_flight.written.result()
        retried = in_flight.retries.count
        self.totals.sink_retries += retried
        if not written:
            return False
        if retried:
            self._aligner.forget_ends()  # messages kept arriving while we waited
        started = time.perf_counter()
        self._commit(in_flight.next_offsets)
        self.totals.add_time("commit", started)
        return True

    def _wait_serving(self, in_flight: InFlight) -> None:
        """Wait for a write while keeping the group membership alive, without reading on if
        it takes long."""
        try:
            in_flight.written.result(timeout=_SHORT_WAIT_S)
            return
        except FutureTimeout:
            pass
        reading = self._reader.assignment()
        self._reader.pause(reading)
        try:
            while not in_flight.written.done():
                self._serve_group(_SHORT_WAIT_S)
        finally:
            self._reader.resume([tp for tp in reading if tp.partition not in self._held])

    def _commit(self, next_offsets: dict[int, int]) -> None:
        """Commit the next offsets of a written batch, for the partitions still ours. One taken
        away meanwhile is left to its new owner, which reads it again from its own committed
        offset (the sinks ignore what is already stored); a failed commit is logged, likewise."""
        ours = {p: o for p, o in next_offsets.items() if p in self._floors}
        if not ours:
            return
        try:
            self._group.commit(
                offsets=[TopicPartition(self._topic, p, o) for p, o in ours.items()],
                asynchronous=False,
            )
            for partition, offset in ours.items():  # a restart re-scores from here on
                self._floors[partition] = max(self._floors[partition], offset)
        except KafkaException as error:
            self.totals.commit_failures += 1
            log.warning("offset commit failed (%s): the batch will be read again", error)


def _next_offsets(messages: list[Message]) -> dict[int, int]:
    """Per partition, the offset after the last of `messages`."""
    next_offsets: dict[int, int] = {}
    for message in messages:
        partition = message.partition() or 0
        next_offsets[partition] = max(next_offsets.get(partition, 0), (message.offset() or 0) + 1)
    return next_offsets
