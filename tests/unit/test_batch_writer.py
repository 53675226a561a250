"""The batch writer's order and give-up rules, with sinks that record what they were asked.

The real sinks are exercised end to end by the pipeline, crash, outage and Delta tests; here
the point is the writer's own promises with two batches in flight: a sink without
`concurrent_writes` writes batches in the order they were handed over, a failed batch blocks
the later ones on that sink until it is confirmed, a concurrent sink writes two at once, and
after a batch is given up no later one is written to that sink.
"""

from __future__ import annotations

import threading
import time
from typing import ClassVar

import polars as pl
import pytest

from fraudstream.ports import ScoredBatch, SinkUnavailable
from fraudstream.runners.batch_writer import BatchWriter

WAIT_S = 10.0


def batch(number: int) -> ScoredBatch:
    return ScoredBatch(pl.DataFrame({"n": [number]}), ())


def number_of(scored: ScoredBatch) -> int:
    return int(scored.frame.get_column("n")[0])


class OrderedSink:
    """Writes one batch at a time; fails `failures[n]` times on batch n, sleeps on request."""

    def __init__(self, failures: dict[int, int] | None = None, slow: float = 0.0) -> None:
        self.failures = dict(failures or {})
        self.slow = slow
        self.attempts: list[int] = []
        self.confirmed: list[int] = []

    def write(self, scored: ScoredBatch) -> None:
        number = number_of(scored)
        self.attempts.append(number)
        if number == 1 and self.slow:
            time.sleep(self.slow)
        if self.failures.get(number, 0) > 0:
            self.failures[number] -= 1
            raise SinkUnavailable(f"batch {number} refused")
        self.confirmed.append(number)

    def close(self) -> None:
        pass


class SideBySideSink:
    """Takes concurrent writes; every write waits until two are under way at once."""

    concurrent_writes: ClassVar[bool] = True

    def __init__(self) -> None:
        self.both_writing = threading.Barrier(2, timeout=WAIT_S)
        self.confirmed: list[int] = []

    def write(self, scored: ScoredBatch) -> None:
        self.both_writing.wait()  # breaks (and fails the test) if writes do not overlap
        self.confirmed.append(number_of(scored))

    def close(self) -> None:
        pass


def writer(*sinks: object, in_flight: int = 2) -> BatchWriter:
    timings: list[str] = []
    return BatchWriter(
        sinks,  # type: ignore[arg-type]
        backoff_max_s=0.02,
        timed=lambda name, _: timings.append(name),
        in_flight=in_flight,
    )


def test_a_concurrent_sink_writes_two_batches_at_once_and_an_ordered_one_in_order() -> None:
    ordered, side_by_side = OrderedSink(slow=0.2), SideBySideSink()
    batch_writer = writer(ordered, side_by_side)
    stop = threading.Event()
    first = batch_writer.submit(batch(1), {0: 10}, stop)
    second = batch_writer.submit(batch(2), {0: 20}, stop)
    assert first.written.result(WAIT_S) and second.written.result(WAIT_S)
    assert ordered.confirmed == [1, 2]  # the slow first batch was not overtaken
    assert sorted(side_by_side.confirmed) == [1, 2]
    assert (first.next_offsets, second.next_offsets) == ({0: 10}, {0: 20})
    batch_writer.close()


def test_a_failed_batch_is_retried_before_the_next_is_begun_on_that_sink() -> None:
    ordered = OrderedSink(failures={1: 2})
    batch_writer = writer(ordered)
    stop = threading.Event()
    first = batch_writer.submit(batch(1), {}, stop)
    second = batch_writer.submit(batch(2), {}, stop)
    assert first.written.result(WAIT_S) and second.written.result(WAIT_S)
    assert ordered.attempts == [1, 1, 1, 2]
    assert ordered.confirmed == [1, 2]
    assert (first.retries.count, second.retries.count) == (2, 0)
    batch_writer.close()


def test_after_a_batch_is_given_up_no_later_one_is_written_to_that_sink() -> None:
    down, up = OrderedSink(failures={1: 1_000_000}), OrderedSink()
    batch_writer = writer(down, up)
    stop = threading.Event()
    first = batch_writer.submit(batch(1), {}, stop)
    second = batch_writer.submit(batch(2), {}, stop)
    deadline = time.monotonic() + WAIT_S
    while first.retries.count < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()  # a stop during the outage
    assert first.written.result(WAIT_S) is False
    assert second.written.result(WAIT_S) is False
    assert set(down.attempts) == {1}  # batch 2 never reached the sink that gave batch 1 up
    assert up.confirmed == [1, 2]  # the other sink stored both: idempotent, read again later
    batch_writer.close()


class RefusingSink(OrderedSink):
    """Refuses batch 1 for good: a value the store will never take."""

    def write(self, scored: ScoredBatch) -> None:
        if number_of(scored) == 1:
            self.attempts.append(1)
            time.sleep(0.1)  # batch 2 is handed over meanwhile
            raise ValueError("batch 1 cannot be stored")
        super().write(scored)


def test_a_batch_a_sink_refuses_for_good_fails_and_no_later_one_gets_ahead_of_it() -> None:
    refusing = RefusingSink()
    batch_writer = writer(refusing)
    stop = threading.Event()
    first = batch_writer.submit(batch(1), {}, stop)
    second = batch_writer.submit(batch(2), {}, stop)
    with pytest.raises(ValueError, match="cannot be stored"):
        first.written.result(WAIT_S)
    assert second.written.result(WAIT_S) is False
    assert refusing.attempts == [1]  # batch 2 was never written past the refused batch 1
    batch_writer.close()
