"""Writing scored batches to every sink in the background, so the worker scores the next one.

The worker keeps up to `in_flight` batches being written (two by default): it scores batch N+2
while the sinks store N and N+1, and before handing over N+2 it waits for N and commits N's
offsets. Offsets are still committed in order and only after every sink confirmed the batch;
a crash at any moment leaves at most `in_flight` + 1 batches uncommitted, all read again and
written idempotently.

Each sink has a lane of its own. A sink that takes concurrent writes (`concurrent_writes`, as
`PostgresSink` does with a connection per writing thread) writes the batches in flight side by
side; any other sink writes them one at a time, in the order they were handed over, each batch
retried until it is confirmed before the next is begun. That order matters to sinks whose
idempotence follows the source offsets (the Delta history), and none of them is ever asked to
write a batch after an earlier one was given up.

Two batches in flight rather than one: one worker catching up on 200 k transactions
(`python bench/pipeline.py --parts throughput`) stored 25.5 k and 30.2 k tx/s with one, 34.1 k
and 35.9 k with two (medians of two sets of three alternating runs); three gave no more (34.6 k
and 35.2 k, beside 36.9 k and 36.0 k with two). With one, PostgreSQL, the slowest sink, was
still writing a batch when the next was scored, and the worker waited for it.

A sink that cannot confirm is retried with capped exponential backoff; the sinks that did
confirm are not asked again. A stop during an outage gives the batch up (`False`): nothing of
it is committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from fraudstream.ports import ScoredBatch, Sink, SinkUnavailable

log = logging.getLogger("fraudstream.worker")

_FIRST_BACKOFF_S = 0.1


@dataclass
class Retries:
    """Failed attempts to write one batch, over all its sinks."""

    count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self) -> None:
        with self.lock:
            self.count += 1


@dataclass(frozen=True)
class InFlight:
    """A batch being written, and what to commit once it is."""

    next_offsets: dict[int, int]
    """Per partition the worker decided in the batch, the offset after its last message."""
    written: Future[bool]
    retries: Retries


class _Lane:
    """One sink's writes: each batch retried until the sink confirms it, or given up when the
    runner stops meanwhile or the sink raises anything but `SinkUnavailable` (which then
    reaches the worker); after a batch is given up, every later one is too."""

    def __init__(
        self,
        sink: Sink,
        threads: int,
        backoff_max_s: float,
        timed: Callable[[str, float], None],
    ) -> None:
        self.sink = sink
        self._backoff_max_s = backoff_max_s
        self._timed = timed
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix=type(sink).__name__)
        self._gave_up = False

    def submit(self, batch: ScoredBatch, stop: threading.Event, retries: Retries) -> Future[bool]:
        return self._threads.submit(self._write, batch, stop, retries)

    def _write(self, batch: ScoredBatch, stop: threading.Event, retries: Retries) -> bool:
        backoff = _FIRST_BACKOFF_S
        while not self._gave_up:
            started = time.perf_counter()
            try:
                self.sink.write(batch)
            except BaseException as error:
                if not isinstance(error, SinkUnavailable):
                    self._gave_up = True  # no later batch may get ahead of this one
                    raise
                retries.add()
                log.warning("%s; retrying in %.1f s, offsets not committed", error, backoff)
                if stop.wait(backoff):
                    log.warning("stopping during an outage: the batch will be read again")
                    self._gave_up = True
                    break
                backoff = min(2 * backoff, self._backoff_max_s)
                continue
            self._timed(type(self.sink).__name__, started)
            return True
        return False

    def close(self) -> None:
        self._threads.shutdown()
        self.sink.close()


class BatchWriter:
    """Up to `in_flight` batches at a time to every sink, each sink in its own lane (each
    mostly waits on its own server)."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        backoff_max_s: float,
        timed: Callable[[str, float], None],
        in_flight: int = 1,
    ) -> None:
        self.in_flight = in_flight
        self._lanes = [
            _Lane(
                sink,
                in_flight if getattr(sink, "concurrent_writes", False) else 1,
                backoff_max_s,
                timed,
            )
            for sink in sinks
        ]
        self._writer = ThreadPoolExecutor(in_flight, thread_name_prefix="writer")

    def submit(
        self, batch: ScoredBatch, next_offsets: dict[int, int], stop: threading.Event
    ) -> InFlight:
        retries = Retries()
        writes = [lane.submit(batch, stop, retries) for lane in self._lanes]
        return InFlight(next_offsets, self._writer.submit(_all_confirmed, writes), retries)

    def close(self) -> None:
        """Call once nothing is in flight."""
        self._writer.shutdown()
        for lane in self._lanes:
            lane.close()


def _all_confirmed(writes: list[Future[bool]]) -> bool:
    """Every sink confirmed the batch. Each write is waited for, even after one gave up; a
    write that raised ends the wait with its error."""
    confirmed = [write.result() for write in writes]
    return all(confirmed)
