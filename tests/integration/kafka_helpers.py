"""Reading topics back in tests: a fresh consumer group from the earliest offset."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Message


def fresh_consumer(kafka: dict[str, str], *topics: str) -> Consumer:
    """A consumer in a group of its own, reading from the start, committing nothing; group
    joins on the embedded broker take half the session timeout, so it is short."""
    consumer = Consumer(
        {
            **kafka,
            "group.id": f"check-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe(list(topics))
    return consumer


def read_messages(
    kafka: dict[str, str], topic: str, count: int, timeout: float = 90
) -> list[Message]:
    """Up to `count` messages of `topic` (fewer only if `timeout` runs out first)."""
    consumer = fresh_consumer(kafka, topic)
    seen: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        seen.extend(m for m in consumer.consume(500, timeout=0.5) if m.error() is None)
    consumer.close()
    return seen


def read_all(
    kafka: dict[str, str], topic: str, quiet_s: float = 3.0, timeout: float = 60
) -> list[Message]:
    """Every message of `topic`: read until nothing more arrived for `quiet_s` after the
    first one (which may take a group join), or `timeout` in all."""
    consumer = fresh_consumer(kafka, topic)
    seen: list[Message] = []
    started = last = time.monotonic()
    while time.monotonic() - started < timeout and not (seen and time.monotonic() - last > quiet_s):
        batch = [m for m in consumer.consume(500, timeout=0.5) if m.error() is None]
        if batch:
            seen.extend(batch)
            last = time.monotonic()
    consumer.close()
    return seen
