"""What the capture tests share: a core-banking `payments` table, settings that capture it, a
capture process, and reading a whole topic back without a group join."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from fraudstream.config import Settings
from fraudstream.runners.local import worker_environment

PAYMENTS = """
CREATE TYPE payment_channel AS ENUM ('card_present', 'online');
CREATE TABLE payments (
    id           bigserial PRIMARY KEY,
    payment_ref  text NOT NULL UNIQUE,
    booked_at    timestamptz NOT NULL,
    amount       numeric(12, 2) NOT NULL,
    card_token   text,
    merchant     text,
    currency     char(3) NOT NULL DEFAULT 'EUR',
    channel      payment_channel,
    status       text NOT NULL DEFAULT 'booked'
);
"""
"""A table as a core banking system might keep it; `channel` is an enum, so the stream
carries a Type message too."""

MAPPING = {
    "transaction_id": "payment_ref",
    "timestamp": "booked_at",
    "card_ref": "card_token",
    "merchant_id": "merchant",
}

INSERT_RANGE = """
INSERT INTO payments (payment_ref, booked_at, amount, card_token, merchant, channel)
SELECT 'p-' || i, timestamptz '2026-01-01 00:00:00+00' + i * interval '7 seconds',
       (i %% 700) + 0.25, 'card-' || (i %% 300), 'm-' || (i %% 40),
       (ARRAY['online', 'card_present'])[1 + i %% 2]::payment_channel
FROM generate_series(%s::int, %s::int) AS i
ON CONFLICT (payment_ref) DO NOTHING
"""
"""Rows `p-<first>` to `p-<last>`; inserting them again adds nothing (for retries)."""


def capture_settings(base: Settings, **capture: Any) -> Settings:
    """`base` with a capture of its database's `payments` table under a slot of its own."""
    slot = f"fs_{uuid.uuid4().hex[:10]}"
    section = {
        "table": "payments",
        "columns": MAPPING,
        "slot": slot,
        "max_wait_ms": 50,
        "retry_backoff_max_s": 1.0,
        **capture,
    }
    return base.model_copy(update={"capture": base.capture.model_validate(section)})


def drop_slots(url: str) -> None:
    """Drop the database's replication slots, so the database itself can be dropped."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE database = current_database() AND NOT active"
        )


class CaptureProcess:
    """`fraudstream capture run` as a process of its own, with the settings in its
    environment and its output in a log file."""

    def __init__(self, settings: Settings, log: Path, *args: str) -> None:
        self._environment = worker_environment(settings)
        self._args = args
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as output:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "fraudstream", "capture", "run", *self._args],
                env=self._environment,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: nothing confirmed, stored or acknowledged on the way out."""
        assert self._process is not None
        self._process.kill()
        self._process.wait()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, and the exit code (None: killed after `timeout_s`)."""
        if self._process is None:
            return None
        self._process.send_signal(signal.SIGTERM)
        try:
            return self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            return None


def read_topic(
    kafka: dict[str, str], topic: str, at_least: int, quiet_s: float = 1.0, timeout_s: float = 30
) -> list[Message]:
    """Every message of `topic`'s partitions, read by assignment (no group to join): at least
    `at_least` of them, then whatever else arrives within `quiet_s`."""
    consumer = Consumer({**kafka, "group.id": f"read-{uuid.uuid4().hex[:8]}"})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, number, OFFSET_BEGINNING) for number in partitions])
    seen: list[Message] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    while time.monotonic() < deadline and (
        len(seen) < at_least or time.monotonic() - last < quiet_s
    ):
        batch = [message for message in consumer.consume(1000, 0.2) if message.error() is None]
        if batch:
            seen.extend(batch)
            last = time.monotonic()
    consumer.close()
    return seen
