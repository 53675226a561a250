"""What runners and adapters hand each other: plain records and the protocols sinks follow.

A runner scores a batch, then gives every sink the same `ScoredBatch`. A sink either confirms the
whole batch (its `write` returns) or raises; the runner commits its source offsets only after
every sink has returned. Sinks are idempotent on `transaction_id` (and on the source position for
dead letters), so writing a batch again after a crash adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import polars as pl

from fraudstream.core.errors import FraudstreamError

POSITION_COLUMNS = {
    "kafka_partition": pl.Int32(),
    "kafka_offset": pl.Int64(),
    "ingested_at": pl.Datetime("us", "UTC"),
    "decided_at": pl.Datetime("us", "UTC"),
}
"""Columns a runner adds to the engine's `Decisions.frame`: where each transaction was read
from, when the source received it (the Kafka message timestamp) and when it was decided."""


class SinkUnavailable(FraudstreamError):  # noqa: N818 - reads as what it is
    """A sink could not confirm a batch (server down, connection lost); retry the same batch."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be decoded or validated, kept with where it came from and why."""

    topic: str
    partition: int
    offset: int
    raw: bytes
    error: str
    field: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """One micro-batch after scoring: every decided transaction and every rejected message.

    `frame` is the engine's `Decisions.outcome` (transaction and decision columns; sinks select
    theirs by name, so `Decisions.frame` with the features also fits) plus `POSITION_COLUMNS`.
    """

    frame: pl.DataFrame
    dead_letters: tuple[DeadLetter, ...]


class Sink(Protocol):
    """Somewhere scored batches go (Postgres, a Kafka topic, ...)."""

    def write(self, batch: ScoredBatch) -> None:
        """Confirm the whole batch durably, or raise (`SinkUnavailable` when a retry may work)."""

    def close(self) -> None: ...
