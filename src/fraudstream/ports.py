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
    """Somewhere scored batches go (Postgres, a Kafka topic, ...).

    A sink is written one batch at a time, in order, unless its class sets
    `concurrent_writes = True`: then several batches may be written at once from different
    threads (`runners/batch_writer.py`)."""

    def write(self, batch: ScoredBatch) -> None:
        """Confirm the whole batch durably, or raise (`SinkUnavailable` when a retry may work)."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert from the outbox, with what a person needs to read it."""

    id: int
    route: str
    channel: str
    transaction_id: str
    card_ref: str | None
    card_last4: str | None
    customer_id: str | None
    merchant_id: str | None
    country: str | None
    amount: float
    currency: str
    action: str
    severity: str
    score: float
    rules_fired: tuple[str, ...]
    reasons: tuple[str, ...]
    event_time: datetime
    created_at: datetime
    attempts: int


class DeliveryFailed(FraudstreamError):  # noqa: N818 - reads as what it is
    """A channel could not deliver (server down, refused, timed out); try again later."""


class AlertChannel(Protocol):
    """Somewhere alerts go: email, Slack, a webhook, a Kafka topic.

    `deliver` sends `alerts` and returns an id of what carried them, or raises `DeliveryFailed`.
    With `digest` true, the alerts become one message (an email digest); otherwise each is its
    own message and one call takes at most `batch` of them. It must be safe to call again with
    the same alerts: every message names its alert ids, so a receiver can drop a repeat.
    """

    digest: bool
    batch: int

    def deliver(self, alerts: list[Alert], recipients: list[str]) -> str: ...

    def close(self) -> None: ...
