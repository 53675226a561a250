"""Kafka as a source for workers and a sink for what they decide.

Workers read the `transactions` topic in a consumer group with auto-commit off: the worker
commits a batch's offsets itself, after every sink confirmed it. Decisions go to the `decisions`
topic and rejected messages to `dead_letters`, each write confirmed by its delivery reports
before the batch counts as written (a sink that cannot confirm raises `SinkUnavailable`).
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from fraudstream.adapters.kafka import PRODUCER_DEFAULTS
from fraudstream.config import KafkaSettings
from fraudstream.ports import ScoredBatch, SinkUnavailable

CONSUMER_DEFAULTS = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "fetch.wait.max.ms": KafkaSettings.model_fields["fetch_wait_ms"].default,
    "enable.partition.eof": True,
    "partition.assignment.strategy": "cooperative-sticky",
}
"""Offsets are committed by the worker; a fresh group starts from the beginning of the log;
an empty fetch waits as long as `kafka.fetch_wait_ms` says by default; the end of a partition is
reported, so the worker's event-time alignment need not wait for it."""

DECISION_FIELDS = (
    "transaction_id", "card_ref", "customer_id", "merchant_id", "amount", "currency", "score",
    "model_score", "action", "is_flagged", "rules_fired", "reasons", "ruleset_version",
    "model_version", "shadow_score", "shadow_model_version", "shadow_rules_fired",
)  # fmt: skip
_RFC3339 = "%Y-%m-%dT%H:%M:%S%.6fZ"
_FLUSH_TIMEOUT_S = 30.0
Headers = list[tuple[str, bytes]]


def reader_config(fetch_wait_ms: int, prefetch_kb: int) -> dict[str, int]:
    """Consumer settings for a worker's reader (`runners/worker.py`): how long an empty fetch
    waits, and at most `prefetch_kb` fetched ahead. Once the reader took some of a full
    prefetch, fetching resumes within 1 ms (librdkafka's default wait of a second starved a
    reader with a small prefetch)."""
    return {
        "fetch.wait.max.ms": fetch_wait_ms,
        "queued.max.messages.kbytes": prefetch_kb,
        "fetch.queue.backoff.ms": 1,
    }


def new_consumer(
    kafka: dict[str, str], group_id: str, session_timeout_ms: int, **extra: object
) -> Consumer:
    """A group member that never commits on its own."""
    config = {
        **kafka,
        **CONSUMER_DEFAULTS,
        "group.id": group_id,
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(500, session_timeout_ms // 5),
        **extra,
    }
    return Consumer(config)


def topic_partitions(consumer: Consumer, topic: str, timeout_s: float) -> list[int]:
    """The topic's partition numbers, in order; raises `KafkaException` when it is missing."""
    metadata = consumer.list_topics(topic, timeout=timeout_s)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise KafkaException(found.error if found else f"topic {topic} not found")
    return sorted(found.partitions)


class _TopicSink:
    """Produce a batch's messages, then wait until the broker confirmed every one.

    Delivery reports come only for failures (`delivery.report.only.error`): a batch is
    confirmed when `flush` leaves nothing outstanding and no report came. Without a Python
    callback per message, a batch of 3 600 decisions took 12.5 ms of CPU instead of 15.4
    (medians of six rounds), time that held the GIL the worker's scoring needs."""

    def __init__(self, kafka: dict[str, str], topic: str) -> None:
        self.topic = topic
        self._failures: list[str] = []
        self._producer = Producer(
            {
                **PRODUCER_DEFAULTS,
                **kafka,
                "delivery.report.only.error": True,
                "on_delivery": self._on_failure,
            }
        )

    def _send(self, messages: Iterable[tuple[bytes | None, bytes, Headers | None]]) -> None:
        self._failures = []
        produce, topic = self._producer.produce, self.topic
        sent = 0
        for key, value, headers in messages:
            while True:
                try:
                    produce(topic, value, key, headers=headers)
                    break
                except BufferError:
                    self._producer.poll(0.05)
            sent += 1
        if not sent:
            return
        remaining = self._producer.flush(_FLUSH_TIMEOUT_S)
        if remaining or self._failures:
            failed = remaining + len(self._failures)
            raise SinkUnavailable(
                f"{failed} of {sent} messages to {self.topic} not confirmed: "
                f"{self._failures[:2] or 'delivery timed out'}"
            )

    def _on_failure(self, error: KafkaError | None, _: Message) -> None:
        if error is not None:
            self._failures.append(str(error))

    def close(self) -> None:
        self._producer.flush(_FLUSH_TIMEOUT_S)


class DecisionsTopicSink(_TopicSink):
    """One JSON decision per transaction, keyed by transaction id, for downstream systems."""

    def write(self, batch: ScoredBatch) -> None:
        frame = batch.frame
        if frame.is_empty():
            return
        rows = frame.select(
            *DECISION_FIELDS,
            pl.col("timestamp").dt.strftime(_RFC3339).alias("event_time"),
            pl.col("decided_at").dt.strftime(_RFC3339),
        )
        text = rows.write_ndjson().encode()  # JSON made in Rust, not row by row
        lines = text.rstrip(b"\n").split(b"\n")
        keys = frame.get_column("transaction_id").to_list()
        self._send((key.encode(), line, None) for key, line in zip(keys, lines, strict=True))


class DeadLetterTopicSink(_TopicSink):
    """Rejected messages as they arrived (raw bytes), with the reason and source in headers."""

    def write(self, batch: ScoredBatch) -> None:
        self._send(
            (
                None,
                letter.raw,
                [
                    ("error", letter.error.encode()),
                    ("field", letter.field.encode()),
                    ("source", f"{letter.topic}/{letter.partition}/{letter.offset}".encode()),
                ],
            )
            for letter in batch.dead_letters
        )
