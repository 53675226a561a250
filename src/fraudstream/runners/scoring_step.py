"""One step of stream scoring, shared by every runner that reads a Kafka-like log: decode a
message into an `Arrival`, then fold a released run of arrivals into the feature state and
score it. The Kafka worker and the Spark runner both call these two functions, so a message
gets the same decision whichever runner read it.

A message the scoring API published carries the API's signed decision; it is folded like any
other, and the decision recorded for it is the API's (see `decision_record.py`)."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from fraudstream.core.decision_record import carried_decision, with_carried
from fraudstream.core.engine import Engine
from fraudstream.core.errors import InvalidTransaction
from fraudstream.core.events import Rejected, decode_transaction, event_time_us, to_frame
from fraudstream.core.features import FeatureState
from fraudstream.ports import ScoredBatch
from fraudstream.runners.alignment import Arrival, SourceMessage
from fraudstream.runners.messages import dead_letter, positions

_DECIDE = "_decide"


def decode_arrival(
    message: SourceMessage, frontier_us: int, arrived_s: float, decision_key: bytes | None = None
) -> Arrival:
    """A message decoded, or rejected with the reason; a rejected one takes `frontier_us` (its
    partition's newest event time) as its place in the event-time order, so it never waits.
    With `decision_key`, a decision the scoring API signed with it comes along."""
    value = message.value() or b""
    try:
        transaction = decode_transaction(value)
    except InvalidTransaction as error:
        return Arrival(message, None, Rejected(0, value, error), frontier_us, arrived_s)
    carried = None
    if decision_key is not None:
        headers = getattr(message, "headers", None)
        carried = carried_decision(
            decision_key, headers() if headers else None, value, transaction.transaction_id
        )
    return Arrival(message, transaction, None, event_time_us(transaction), arrived_s, carried)


def score_arrivals(
    engine: Engine, features: FeatureState, arrivals: list[Arrival], decided: list[bool]
) -> ScoredBatch:
    """Fold every decoded arrival into `features` and score those `decided` marks; the decided
    arrivals that did not decode become dead letters, those the API decided keep its decision."""
    accepted = [(a, d) for a, d in zip(arrivals, decided, strict=True) if a.transaction]
    transactions = [a.transaction for a, _ in accepted if a.transaction is not None]
    letters = tuple(
        dead_letter(a.message, a.rejected.error.reason, a.rejected.error.field)
        for a, d in zip(arrivals, decided, strict=True)
        if d and a.rejected is not None
    )
    frame = to_frame(transactions, [a.event_us for a, _ in accepted]).with_columns(
        *positions([a.message for a, _ in accepted]),
        pl.Series(_DECIDE, [d for _, d in accepted], dtype=pl.Boolean),
    )
    frame = frame.sort("timestamp", maintain_order=True)
    decisions = engine.process(frame, features, decide=_DECIDE)
    decided_at = pl.lit(datetime.now(UTC)).dt.cast_time_unit("us").alias("decided_at")
    carried = {
        a.carried.transaction_id: a.carried for a, d in accepted if d and a.carried is not None
    }
    outcome = with_carried(decisions.outcome.with_columns(decided_at), list(carried.values()))
    return ScoredBatch(outcome, letters)
