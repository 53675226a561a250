"""Publishing the API's scored transactions, and awaiting the broker's confirmations.

Each batch of requests is produced and its confirmation awaited on its own, so the next batch
is scored while the broker confirms this one: a thread blocks in librdkafka's `poll` and runs
the delivery callbacks, each of which counts down its batch and, at zero, wakes the batch's
future on the event loop. Per partition the broker keeps the order the batches were produced in.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from fraudstream.core.decision_record import (
    DECISION_HEADER,
    ORIGIN_HEADER,
    REQUEST_HEADER,
    SIGNATURE_HEADER,
    sign,
)
from fraudstream.core.events import Transaction

_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One scored transaction, as it goes to the topic."""

    transaction: Transaction
    value: bytes
    """Its canonical JSON: what the signature covers."""
    decision: bytes
    request: bytes
    """`<body digest hex> <replay key>`, for other API processes' replay memory."""


@dataclass
class _Confirmation:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[dict[str, str]]
    waiting: int
    failures: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def delivered(self, transaction_id: str, failure: str | None) -> None:
        with self.lock:
            if failure is not None:
                self.failures[transaction_id] = failure
            self.waiting -= 1
            done = self.waiting == 0
        if done:
            self.loop.call_soon_threadsafe(_resolve, self.future, self.failures)


def _resolve(future: asyncio.Future[dict[str, str]], failures: dict[str, str]) -> None:
    if not future.done():
        future.set_result(failures)


class DecisionPublisher:
    """Produces to the transactions topic with signed decisions; `publish` returns a future of
    the failures (transaction id -> reason; empty when the broker confirmed all)."""

    def __init__(self, producer: Producer, topic: str, decision_key: bytes, origin: str) -> None:
        self._producer = producer
        self._topic = topic
        self._key = decision_key
        self._origin = origin.encode()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="deliveries", daemon=True)

    def start(self) -> None:
        self._poller.start()

    def close(self, timeout_s: float) -> int:
        """Stop polling and wait up to `timeout_s` for what is in flight; returns how many
        messages remain unconfirmed."""
        self._stop.set()
        self._poller.join(timeout_s)
        return self._producer.flush(timeout_s)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(_POLL_S)

    def publish(self, batch: list[Outgoing]) -> asyncio.Future[dict[str, str]]:
        loop = asyncio.get_running_loop()
        confirmation = _Confirmation(loop, loop.create_future(), len(batch))
        if not batch:
            confirmation.future.set_result({})
        for outgoing in batch:
            self._produce(outgoing, confirmation)
        return confirmation.future

    def _produce(self, outgoing: Outgoing, confirmation: _Confirmation) -> None:
        transaction = outgoing.transaction
        key = transaction.card_ref or transaction.customer_id
        headers = [
            (DECISION_HEADER, outgoing.decision),
            (SIGNATURE_HEADER, sign(self._key, outgoing.value, outgoing.decision)),
            (ORIGIN_HEADER, self._origin),
            (REQUEST_HEADER, outgoing.request),
        ]
        transaction_id = transaction.transaction_id

        def delivered(error: KafkaError | None, _: Message) -> None:
            confirmation.delivered(transaction_id, None if error is None else str(error))

        while True:
            try:
                self._producer.produce(
                    self._topic,
                    value=outgoing.value,
                    key=None if key is None else key.encode(),
                    headers=headers,
                    on_delivery=delivered,
                )
                return
            except BufferError:  # the local queue is full: the poller drains it
                self._producer.poll(_POLL_S)
            except KafkaException as error:
                confirmation.delivered(transaction_id, str(error))
                return
