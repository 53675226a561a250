"""Kafka: topics, and the producer that publishes transactions at a target rate.

Transactions are keyed by card reference (else customer id), so one card's events land in one
partition, in order, and one worker owns that card's state. Every message's delivery report is
checked: `publish` returns only when each one is confirmed, and raises if any failed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import polars as pl
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from fraudstream.core.errors import FraudstreamError
from fraudstream.generator.output import encode_json_lines

PRODUCER_DEFAULTS = {
    "acks": "all",
    "linger.ms": 50,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 1_000_000,
}
"""Few, large record batches. The embedded broker keeps one object per record batch and every
fetch lists all of a partition's objects (it has no retention), so its cost per fetch grows with
the number of batches ever produced: at 2 k msg/s over 4 partitions, `linger.ms` 5 made the
broker's own produce-to-consume p50 climb from 36 to 49 ms within 45 s, while 50 ms (~20
batches per second per partition) held it at 56 ms. A real cluster would do well with less."""


class DeliveryError(FraudstreamError):
    """Messages the broker did not confirm; nothing is reported sent that was not."""


def ensure_topics(kafka: dict[str, str], names: Sequence[str], partitions: int) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    admin = AdminClient(kafka)
    existing = set(admin.list_topics(timeout=15).topics)
    wanted = [NewTopic(name, num_partitions=partitions) for name in names if name not in existing]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, operation_timeout=15).items():
        try:
            future.result(timeout=30)
            created.append(name)
        except KafkaException as error:  # created meanwhile by another process: fine
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


@dataclass
class PublishReport:
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


class TransactionProducer:
    """Publishes transactions (engine schema, one JSON object per message) to a topic."""

    def __init__(self, kafka: dict[str, str], topic: str, linger_ms: int | None = None) -> None:
        self.topic = topic
        linger = {} if linger_ms is None else {"linger.ms": linger_ms}
        self._producer = Producer({**PRODUCER_DEFAULTS, **kafka, **linger})
        self._report = PublishReport()
        self._cancelled = False

    @property
    def report(self) -> PublishReport:
        """Figures of the current (or last) `publish`; readable from another thread."""
        return self._report

    def close(self) -> None:
        """Let go of the broker connections (a dropped broker is then not logged as lost)."""
        self._producer.flush(5)
        del self._producer

    def cancel(self) -> None:
        """Make a running `publish` stop sending; what was sent is still confirmed."""
        self._cancelled = True

    def publish(
        self,
        transactions: pl.DataFrame | Iterable[pl.DataFrame],
        *,
        rate: float | None = None,
    ) -> PublishReport:
        """Send every row, at about `rate` messages per second (None: as fast as possible),
        and wait for every delivery report. Raises `DeliveryError` if any message failed."""
        frames = [transactions] if isinstance(transactions, pl.DataFrame) else transactions
        chunk = max(1, min(500, int(rate / 100))) if rate else 500  # paced in ~10 ms steps
        report = self._report = PublishReport()
        start = time.monotonic()
        for piece in _pieces(frames, chunk):
            if self._cancelled:
                break
            self._send(piece)
            if rate:
                _sleep_until(start + report.sent / rate, self._producer)
        remaining = self._producer.flush(60)
        report.elapsed_s = time.monotonic() - start
        if remaining or report.failed:
            raise DeliveryError(
                f"{len(report.failed) + remaining} of {report.sent} messages to {self.topic} "
                f"not delivered; first errors: {report.failed[:3]}"
            )
        return report

    def _send(self, piece: pl.DataFrame) -> None:
        lines = encode_json_lines(piece)
        keys = [
            None if key is None else key.encode()
            for key in piece.select(pl.coalesce("card_ref", "customer_id")).to_series().to_list()
        ]
        for key, value in zip(keys, lines, strict=True):
            while True:
                try:
                    self._producer.produce(self.topic, value=value, key=key, on_delivery=self._on)
                    break
                except BufferError:  # local queue full: let deliveries drain, then retry
                    self._producer.poll(0.05)
            self._report.sent += 1
        self._producer.poll(0)

    def _on(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._report.failed.append(str(error))  # not the key: a card reference


def _pieces(frames: Iterable[pl.DataFrame], size: int) -> Iterator[pl.DataFrame]:
    for frame in frames:
        for offset in range(0, frame.height, size):
            yield frame.slice(offset, size)


def _sleep_until(deadline: float, producer: Producer) -> None:
    """Wait for the pacing deadline while serving delivery reports."""
    while (left := deadline - time.monotonic()) > 0:
        producer.poll(min(left, 0.05))
