"""Writing a scored batch to every sink in the background, so the worker scores the next one.

The worker keeps at most one batch in flight: it scores batch N+1 while the sinks store batch N,
and before handing over N+1 it waits for N and commits N's offsets. So offsets are still
committed in order and only after every sink confirmed their batch, and a crash at any moment
leaves at most two batches uncommitted, both read again and written idempotently.

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
from dataclasses import dataclass

from fraudstream.ports import ScoredBatch, Sink, SinkUnavailable

log = logging.getLogger("fraudstream.worker")

_FIRST_BACKOFF_S = 0.1


@dataclass(frozen=True)
class InFlight:
    """A batch being written, and what to commit once it is."""

    next_offsets: dict[int, int]
    """Per partition the worker decided in the batch, the offset after its last message."""
    written: Future[bool]
    retries_before: int


class BatchWriter:
    """One batch at a time to every sink, each sink in its own thread (each mostly waits on its
    own server)."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        backoff_max_s: float,
        timed: Callable[[str, float], None],
    ) -> None:
        self._sinks = list(sinks)
        self._backoff_max_s = backoff_max_s
        self._timed = timed
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="writer")
        self._sink_threads = ThreadPoolExecutor(len(self._sinks) or 1, thread_name_prefix="sink")
        self.retries = 0

    def submit(
        self, batch: ScoredBatch, next_offsets: dict[int, int], stop: threading.Event
    ) -> InFlight:
        written = self._writer.submit(self._write, batch, stop)
        return InFlight(next_offsets, written, self.retries)

    def _write(self, batch: ScoredBatch, stop: threading.Event) -> bool:
        """Every sink confirms the batch, or (stop set during an outage) False."""
        pending = list(self._sinks)
        backoff = _FIRST_BACKOFF_S
        while pending:
            failures = self._write_side_by_side(pending, batch)
            pending = [sink for sink, _ in failures]
            if not pending:
                break
            self.retries += 1
            errors = "; ".join(str(error) for _, error in failures)
            log.warning("%s; retrying in %.1f s, offsets not committed", errors, backoff)
            if stop.wait(backoff):
                log.warning("stopping during an outage: the batch will be read again")
                return False
            backoff = min(2 * backoff, self._backoff_max_s)
        return True

    def _write_side_by_side(
        self, sinks: list[Sink], batch: ScoredBatch
    ) -> list[tuple[Sink, SinkUnavailable]]:
        """Write to every sink at once; returns the sinks that could not confirm, with why."""
        futures = [
            (sink, self._sink_threads.submit(self._timed_write, sink, batch)) for sink in sinks
        ]
        failures = []
        for sink, future in futures:
            try:
                future.result()
            except SinkUnavailable as error:
                failures.append((sink, error))
        return failures

    def _timed_write(self, sink: Sink, batch: ScoredBatch) -> None:
        started = time.perf_counter()
        sink.write(batch)
        self._timed(type(sink).__name__, started)

    def close(self) -> None:
        """Call once nothing is in flight."""
        self._writer.shutdown()
        self._sink_threads.shutdown()
        for sink in self._sinks:
            sink.close()
