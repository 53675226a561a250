"""Merge a worker's partitions by event time before scoring.

Feature state has one watermark, and an event more than `allowed_lateness` behind it gets null
features. A worker reading several partitions of a backlog gets them unevenly (one fetch may bring
thousands of one partition's messages and a few of another's), so scoring them as they arrive
would push the watermark ahead of the slower partitions and make their events late. The aligner
holds arrived messages per partition and releases only what no assigned partition can undercut:
events up to the smallest *frontier* (newest event time seen) among the partitions that may still
deliver something. A partition whose buffer is empty and that reached the end of its log (an EOF
event) does not hold the others back; nor does anything once `max_idle_s` passed without a
release, or the buffers hold `max_buffered` messages (bounded memory, bounded latency).

Each partition is released as a prefix in offset order (dead letters travel in their place), so
the next offset to commit is simply the first one not yet released.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from confluent_kafka import Message

from fraudstream.core.events import Rejected, Transaction

NO_TIME = -(2**63)
FOREVER = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Arrival:
    """One consumed message, decoded (`transaction`) or not (`rejected`)."""

    message: Message
    transaction: Transaction | None
    rejected: Rejected | None
    event_us: int
    """Event time in µs; dead letters carry the event time before them (they never wait)."""


@dataclass
class _Partition:
    queue: deque[Arrival] = field(default_factory=deque)
    frontier_us: int = NO_TIME
    at_end: bool = False


class EventTimeAligner:
    """Per-partition buffers of arrivals, released in event-time order."""

    def __init__(self, max_buffered: int) -> None:
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._max_buffered = max_buffered
        self.buffered = 0

    def assign(self, keys: list[tuple[str, int]]) -> None:
        for key in keys:
            self._partitions.setdefault(key, _Partition())

    def revoke(self, keys: list[tuple[str, int]]) -> None:
        """Forget revoked partitions: their unreleased messages are re-read by the new owner."""
        for key in keys:
            dropped = self._partitions.pop(key, None)
            if dropped is not None:
                self.buffered -= len(dropped.queue)

    def reached_end(self, key: tuple[str, int]) -> None:
        if key in self._partitions:
            self._partitions[key].at_end = True

    def frontier(self, key: tuple[str, int]) -> int:
        """The newest event time seen on a partition: a dead letter's place in event time."""
        partition = self._partitions.get(key)
        return NO_TIME if partition is None else partition.frontier_us

    def forget_ends(self) -> None:
        """After a long pause (a sink outage) a partition's end of log is long past: every
        partition may deliver again until it reports its end anew."""
        for partition in self._partitions.values():
            partition.at_end = False

    def add(self, key: tuple[str, int], arrival: Arrival) -> None:
        partition = self._partitions.setdefault(key, _Partition())
        partition.queue.append(arrival)
        partition.at_end = False
        partition.frontier_us = max(partition.frontier_us, arrival.event_us)
        self.buffered += 1

    def release(self, limit: int, *, force: bool = False) -> list[Arrival]:
        """Up to `limit` arrivals no partition can undercut, oldest event first (all that are
        buffered, by event time, when `force` or the buffers are full)."""
        bound = FOREVER if force or self.buffered >= self._max_buffered else self._bound()
        heads = [
            (p.queue[0].event_us, key)
            for key, p in self._partitions.items()
            if p.queue and p.queue[0].event_us <= bound
        ]
        heapq.heapify(heads)
        released: list[Arrival] = []
        while heads and len(released) < limit:
            _, key = heapq.heappop(heads)
            queue = self._partitions[key].queue
            released.append(queue.popleft())
            if queue and queue[0].event_us <= bound:
                heapq.heappush(heads, (queue[0].event_us, key))
        self.buffered -= len(released)
        return released

    def _bound(self) -> int:
        """The newest event time every partition that may still deliver has reached."""
        frontiers = [p.frontier_us for p in self._partitions.values() if p.queue or not p.at_end]
        return min(frontiers, default=FOREVER)
