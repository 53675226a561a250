"""Scoring requests in micro-batches: the scoring API's hot path.

Requests queue up while a batch is scored; the batch task takes everything queued as the next
batch, so at one request at a time a batch is one transaction and under load the engine's fixed
cost per batch is shared. It all runs on the server's event loop: the database is asked with
psycopg's async connection, and the broker's confirmations come from a delivery thread that
blocks in librdkafka (`api_publish.py`), so the next batch is scored meanwhile. (A scoring
thread of its own was tried first: it and the event loop handed the GIL to each other at every
step, and a batch spent most of its time waiting for it.)
For each batch, in this order:

1. Replays are answered with the first answer: from the replay memory (recent answers by replay
   key: the `Idempotency-Key` header, else the transaction id), else from `transactions` (a
   transaction the stream or an earlier request already stored). A key reused for another body
   is refused.
2. The rest are scored by the engine against the stream-wide feature state, folding them into it.
3. Each transaction is published to the `transactions` topic with its signed decision, and the
   broker's confirmation awaited: the worker that owns its partition folds it and records the
   decision through its sinks, so nothing is answered that will not be recorded. (A transaction
   the broker refuses gets a 503; it stays folded in this process's state, never recorded.)
4. The answers are remembered and handed back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from fraudstream.adapters.stored_decisions import StoredDecisions
from fraudstream.core.decision_record import DecisionRecord, encode, records
from fraudstream.core.engine import Engine
from fraudstream.core.errors import FraudstreamError
from fraudstream.core.events import Transaction, encode_transaction, to_frame
from fraudstream.ports import SinkUnavailable
from fraudstream.runners.api_fold import StreamFollower
from fraudstream.runners.api_publish import DecisionPublisher, Outgoing

log = logging.getLogger("fraudstream.api")
_PUBLISH_TIMEOUT_S = 10.0


class ReplayConflict(FraudstreamError):  # noqa: N818 - reads as what it is
    """An idempotency key already used for a different transaction."""


class NotReady(FraudstreamError):  # noqa: N818 - reads as what it is
    """The API has not folded the stream up to its end yet."""


@dataclass(frozen=True, slots=True)
class Answer:
    body: bytes
    """The JSON answer, byte for byte what the first request got."""
    replayed: bool


def id_key(transaction_id: str) -> str:
    return f"id:{transaction_id}"


@dataclass(slots=True)
class _Request:
    transaction: Transaction
    value: bytes
    """The transaction as published: its canonical JSON."""
    key: str
    digest: bytes
    future: asyncio.Future[Answer]


class ReplayMemory:
    """The newest answers by replay key, with the digest of the body they answered."""

    def __init__(self, capacity: int) -> None:
        self._entries: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[bytes, bytes] | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, digest: bytes, body: bytes) -> None:
        with self._lock:
            self._entries.setdefault(key, (digest, body))
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def answered(self, request: _Request, body: bytes) -> None:
        """An answer given here."""
        self._keep(request.key, request.digest, request.transaction.transaction_id, body)

    def remember(self, key: str, digest: bytes, record: DecisionRecord) -> None:
        """Another API process's answer, heard from the topic."""
        self._keep(key, digest, record.transaction_id, encode(record))

    def _keep(self, key: str, digest: bytes, transaction_id: str, body: bytes) -> None:
        """Under the request's replay key and under its transaction id."""
        self.put(key, digest, body)
        self.put(id_key(transaction_id), digest, body)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class ScoringTotals:
    requests: int = 0
    scored: int = 0
    replayed: int = 0
    conflicts: int = 0
    batches: int = 0
    replay_checks_skipped: int = 0
    """Batches scored while the database could not be asked for stored decisions."""


class ScoringService:
    """Scores requests in batches on the event loop it is started on."""

    def __init__(
        self,
        *,
        follower: StreamFollower,
        engine: Callable[[], Engine],
        publisher: DecisionPublisher,
        stored: StoredDecisions,
        memory: ReplayMemory,
        max_batch: int = 256,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._follower = follower
        self._engine = engine
        self._publisher = publisher
        self._stored = stored
        self.memory = memory
        self._max_batch = max_batch
        self._on_batch = on_batch or (lambda _: None)
        self._pending: list[_Request] = []
        self._in_flight: dict[str, list[_Request]] = {}
        """Scored, not yet confirmed: first request and its repeats, by both replay keys."""
        self._confirming: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.totals = ScoringTotals()

    async def score(self, transaction: Transaction, idempotency_key: str | None) -> Answer:
        """The answer to one request; raises `ReplayConflict`, `NotReady`, or
        `SinkUnavailable` (the broker did not confirm the transaction)."""
        if not self._follower.ready.is_set():
            raise NotReady("catching up with the stream; retry shortly")
        value = encode_transaction(transaction)
        request = _Request(
            transaction,
            value,
            f"key:{idempotency_key}" if idempotency_key else id_key(transaction.transaction_id),
            hashlib.sha256(value).digest(),
            asyncio.get_running_loop().create_future(),
        )
        self._pending.append(request)
        self._wake.set()
        return await request.future

    def start(self) -> None:
        """Start the batch task on the running event loop."""
        self._publisher.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scoring")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._confirming, return_exceptions=True)
        await asyncio.to_thread(self._publisher.close, _PUBLISH_TIMEOUT_S)
        await self._stored.close()

    async def _run(self) -> None:
        last_batch = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            if last_batch > 1:
                # Under load, let the loop take in the requests that have already arrived
                # before this batch is taken: one pass over the sockets doubled the batches
                # (and the engine's cost per batch is mostly fixed). One at a time, it waits
                # for nothing.
                await asyncio.sleep(0)
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                last_batch = len(batch)
                try:
                    await self._process(batch)
                except Exception as error:
                    log.exception("a batch of %d requests failed", len(batch))
                    for request in batch:
                        _fail(request, error)

    async def _process(self, batch: list[_Request]) -> None:
        """Answer replays, score the rest and publish them; their answers go out once the
        broker confirmed them, while the next batch is scored."""
        self.totals.requests += len(batch)
        self.totals.batches += 1
        self._on_batch(len(batch))
        groups = list((await self._answer_replays(batch)).values())
        if not groups:
            return
        firsts = [group[0] for group in groups]
        frame = to_frame([r.transaction for r in firsts])
        engine = self._engine()
        with self._follower.lock:
            decisions = engine.process(frame, self._follower.state.features)
        self.totals.scored += len(firsts)
        bodies = {r.transaction_id: encode(r) for r in records(decisions, datetime.now(UTC))}
        outgoing = []
        for group in groups:
            first = group[0]
            transaction_id = first.transaction.transaction_id
            self._in_flight[first.key] = self._in_flight[id_key(transaction_id)] = group
            request = first.digest.hex().encode() + b" " + first.key.encode()
            outgoing.append(
                Outgoing(first.transaction, first.value, bodies[transaction_id], request)
            )
        task = asyncio.create_task(self._answer(groups, bodies, self._publisher.publish(outgoing)))
        self._confirming.add(task)
        task.add_done_callback(self._confirming.discard)

    async def _answer(
        self,
        groups: list[list[_Request]],
        bodies: dict[str, bytes],
        confirmed: asyncio.Future[dict[str, str]],
    ) -> None:
        """Once the broker confirmed the batch: remember and hand out the answers (or the
        failure, for what it refused)."""
        try:
            failures = await asyncio.wait_for(confirmed, _PUBLISH_TIMEOUT_S)
        except TimeoutError:
            failures = {"*": "the broker did not confirm in time"}
        if failures:
            log.error("publishing failed: %s", sorted(set(failures.values()))[:3])
        for group in groups:
            first = group[0]
            transaction_id = first.transaction.transaction_id
            self._in_flight.pop(first.key, None)
            self._in_flight.pop(id_key(transaction_id), None)
            reason = failures.get(transaction_id) or failures.get("*")
            if reason is not None:
                for request in group:
                    _fail(request, SinkUnavailable(f"not recorded: {reason}"))
                continue
            body = bodies[transaction_id]
            self.memory.answered(first, body)
            _settle(first, Answer(body, replayed=False))
            for repeat in group[1:]:
                self._replay(repeat, first.digest, body)

    async def _answer_replays(self, batch: list[_Request]) -> dict[str, list[_Request]]:
        """Answer what was answered before, attach what is being answered now to its first
        request; group the rest by transaction id."""
        fresh: dict[str, list[_Request]] = {}
        for request in batch:
            by_id = id_key(request.transaction.transaction_id)
            seen = self.memory.get(request.key) or self.memory.get(by_id)
            if seen is not None:
                self._replay(request, *seen)
                continue
            group = self._in_flight.get(request.key) or self._in_flight.get(by_id)
            if group is not None:
                group.append(request)
                continue
            fresh.setdefault(request.transaction.transaction_id, []).append(request)
        if not fresh:
            return fresh
        try:
            stored = await self._stored.find(list(fresh))
        except SinkUnavailable as error:
            self.totals.replay_checks_skipped += 1
            log.warning("cannot look up stored decisions, scoring without: %s", error)
            return fresh
        for transaction_id, record in stored.items():
            body = encode(record)
            for request in fresh.pop(transaction_id):
                self.memory.answered(request, body)
                self._replay(request, request.digest, body)
        return fresh

    def _replay(self, request: _Request, digest: bytes, body: bytes) -> None:
        if digest != request.digest:
            self.totals.conflicts += 1
            _fail(
                request,
                ReplayConflict(
                    "this Idempotency-Key was used for a different transaction"
                    if request.key.startswith("key:")
                    else "this transaction_id was scored before with a different body"
                ),
            )
            return
        self.totals.replayed += 1
        _settle(request, Answer(body, replayed=True))


def _settle(request: _Request, answer: Answer) -> None:
    if not request.future.done():  # its client may have gone
        request.future.set_result(answer)


def _fail(request: _Request, error: Exception) -> None:
    if not request.future.done():
        request.future.set_exception(error)
