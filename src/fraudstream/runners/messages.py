"""What a consumed Kafka message gives the sinks: its source position, or a dead letter."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from fraudstream.ports import DeadLetter
from fraudstream.runners.alignment import SourceMessage

EMPTY_MESSAGE = "message has no value"


def positions(messages: list[SourceMessage]) -> list[pl.Series]:
    """Source partition, offset and broker timestamp of each accepted message."""
    return [
        pl.Series("kafka_partition", [m.partition() for m in messages], dtype=pl.Int32),
        pl.Series("kafka_offset", [m.offset() for m in messages], dtype=pl.Int64),
        pl.Series("ingested_at", [_timestamp_us(m) for m in messages], dtype=pl.Int64).cast(
            pl.Datetime("us", "UTC")
        ),
    ]


def _timestamp_us(message: SourceMessage) -> int | None:
    _, millis = message.timestamp()
    return None if millis < 0 else millis * 1000


def dead_letter(message: SourceMessage, error: str, field: str) -> DeadLetter:
    raw = message.value()
    broker_us = _timestamp_us(message)
    received = datetime.fromtimestamp(broker_us / 1e6, UTC) if broker_us else datetime.now(UTC)
    return DeadLetter(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        raw=raw or b"",
        error=error if raw else EMPTY_MESSAGE,
        field=field if raw else "$",
        received_at=received,
    )
