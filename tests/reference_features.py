"""A brute-force reference for the stateful features, written straight from the contract.

The contract is the docstring of `fraudstream.core.features.config`. This module shares no code
with the kernel: every entity keeps the plain list of its accepted events since its last reset,
and every feature of every event is computed by filtering that list (O(n²) overall, which is
fine for the short sequences property tests generate). It knows nothing of batches, buckets in
memory, pruning or `expire()`, so whatever the kernel does with those must not show here.

Amount statistics are computed with exact rational arithmetic, so the reference is the precise
value and the kernel is compared to it with a float tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import polars as pl

from fraudstream.core.features.config import (
    ACCOUNT_KINDS,
    ENTITY_KINDS,
    NOVELTY_FIELDS,
    PLACE_KINDS,
    FeatureConfig,
    window_label,
)

EARTH_RADIUS_KM = 6371.0088
SECOND_US = 1_000_000
MIN_STD = 1e-4
"""The contract counts a standard deviation below this as 0 (float residue, not spread)."""

ENTITY_COLUMNS: dict[str, str] = {
    "card": "card_ref",
    "customer": "customer_id",
    "merchant": "merchant_id",
    "terminal": "terminal_id",
}
NOVELTY_COLUMNS: dict[str, str] = {
    "merchant": "merchant_id",
    "country": "country",
    "device": "device_id",
}

Row = dict[str, object]


@dataclass(frozen=True, slots=True)
class RefEvent:
    """One input row, reduced to what the features read."""

    seq: int
    """Position in the processing order; breaks ties between equal event times."""
    transaction_id: str
    t: int
    amount: float
    keys: dict[str, str | None]
    card_or_customer: str | None
    location: tuple[float, float] | None
    novelty: dict[str, str | None]


@dataclass(slots=True)
class ReferenceRun:
    """Per-row features (keyed by `config.names` plus `is_late`) and the counters."""

    rows: list[Row]
    late_events: int
    replayed_events: int
    watermark_us: int | None
    latest_by_entity: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per kind, per key: the latest event time in the entity's history (after all events)."""


@dataclass(frozen=True, slots=True)
class ReferenceStats:
    late_events: int
    replayed_events: int
    watermark_us: int | None


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (latitude, longitude) points in degrees."""
    lat1, lon1 = math.radians(a[0]), math.radians(a[1])
    lat2, lon2 = math.radians(b[0]), math.radians(b[1])
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2.0 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def events_of(frame: pl.DataFrame) -> Iterator[RefEvent]:
    """The rows of a TRANSACTION_SCHEMA frame as `RefEvent`s, in row order."""
    plain = frame.with_columns(pl.col("timestamp").dt.epoch("us").alias("timestamp"))
    for seq, row in enumerate(plain.iter_rows(named=True)):
        lat, lon = row["latitude"], row["longitude"]
        card, customer = row["card_ref"], row["customer_id"]
        yield RefEvent(
            seq=seq,
            transaction_id=row["transaction_id"],
            t=int(row["timestamp"]),
            amount=float(row["amount"]),
            keys={kind: row[column] for kind, column in ENTITY_COLUMNS.items()},
            card_or_customer=card if card is not None else customer,
            location=(lat, lon) if lat is not None and lon is not None else None,
            novelty={name: row[column] for name, column in NOVELTY_COLUMNS.items()},
        )


def _latest_before(events: list[RefEvent], t: int) -> RefEvent | None:
    """The event with the greatest time <= t; among equal times the one processed later."""
    candidates = [e for e in events if e.t <= t]
    if not candidates:
        return None
    return max(candidates, key=lambda e: (e.t, e.seq))


class _Reference:
    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.watermark: int | None = None
        self.history: dict[str, dict[str, list[RefEvent]]] = {kind: {} for kind in ENTITY_KINDS}
        self.late_events = 0
        self.replayed_events = 0

    # -- windows ------------------------------------------------------------------------------

    def _in_window(self, h: int, t: int, w: int) -> bool:
        """Whether a history event at time `h` falls in the window of length `w` ending at `t`."""
        if w <= self.config.max_exact_window_us:
            return t - w < h <= t
        bucket = self.config.bucket_us
        end = (t // bucket) * bucket
        return end - w < (h // bucket) * bucket <= end

    # -- features -----------------------------------------------------------------------------

    def _account(self, kind: str, ev: RefEvent, past: list[RefEvent], out: Row) -> None:
        """`past` is the entity's history without this transaction id (the event not added)."""
        counted = [*past, ev]
        for w in self.config.account_windows_us:
            label = window_label(w)
            inside = [e for e in counted if self._in_window(e.t, ev.t, w)]
            out[f"tx_count_by_{kind}_{label}"] = len(inside)
            out[f"amount_sum_by_{kind}_{label}"] = math.fsum(e.amount for e in inside)

        amounts = [Fraction(e.amount) for e in past]
        if amounts:
            mean = sum(amounts, Fraction(0)) / len(amounts)
            out[f"amount_mean_by_{kind}"] = float(mean)
            if len(amounts) >= 2:
                variance = sum(((a - mean) ** 2 for a in amounts), Fraction(0)) / (len(amounts) - 1)
                std = math.sqrt(float(variance))
                if std < MIN_STD:
                    std = 0.0  # the contract: a deviation this small is float residue
                out[f"amount_std_by_{kind}"] = std
                if std > 0:
                    out[f"amount_zscore_by_{kind}"] = float(Fraction(ev.amount) - mean) / std

        prev = _latest_before(past, ev.t)
        if prev is not None:
            out[f"seconds_since_prev_by_{kind}"] = (ev.t - prev.t) / SECOND_US
        if ev.location is not None:
            located = _latest_before([e for e in past if e.location is not None], ev.t)
            if located is not None:
                assert located.location is not None
                km = haversine_km(located.location, ev.location)
                hours = max((ev.t - located.t) / SECOND_US, 1.0) / 3600.0
                out[f"distance_from_prev_km_by_{kind}"] = km
                out[f"speed_from_prev_kmh_by_{kind}"] = km / hours

    def _novelty(self, ev: RefEvent, past: list[RefEvent], out: Row) -> None:
        horizon = ev.t - self.config.ttl_us
        for name in NOVELTY_FIELDS:
            value = ev.novelty[name]
            if value is None:
                continue
            out[f"is_new_{name}_for_card"] = not any(
                e.novelty[name] == value and e.t > horizon for e in past
            )

    def _place(self, kind: str, ev: RefEvent, past: list[RefEvent], out: Row) -> None:
        counted = [*past, ev]
        for w in self.config.place_windows_us:
            label = window_label(w)
            inside = [e for e in counted if self._in_window(e.t, ev.t, w)]
            out[f"tx_count_by_{kind}_{label}"] = len(inside)
            out[f"distinct_cards_by_{kind}_{label}"] = len({e.card_or_customer for e in inside})

    # -- one event ----------------------------------------------------------------------------

    def process(self, ev: RefEvent) -> Row:
        out: Row = dict.fromkeys(self.config.names)
        lateness = self.config.allowed_lateness_us
        if self.watermark is not None and ev.t < self.watermark - lateness:
            self.late_events += 1
            out["is_late"] = True
            return out
        out["is_late"] = False

        live = {kind: key for kind, key in ev.keys.items() if key is not None}
        is_replay = any(
            e.transaction_id == ev.transaction_id
            for kind, key in live.items()
            for e in self.history[kind].get(key, [])
        )
        if is_replay:
            self.replayed_events += 1

        pasts: dict[str, list[RefEvent]] = {}
        for kind, key in live.items():
            history = self.history[kind].setdefault(key, [])
            if not is_replay and history and ev.t > max(e.t for e in history) + self.config.ttl_us:
                history.clear()
            pasts[kind] = [e for e in history if e.transaction_id != ev.transaction_id]

        for kind in ACCOUNT_KINDS:
            if kind in pasts:
                self._account(kind, ev, pasts[kind], out)
        if "card" in pasts:
            self._novelty(ev, pasts["card"], out)
        for kind in PLACE_KINDS:
            if kind in pasts:
                self._place(kind, ev, pasts[kind], out)

        if not is_replay:
            for kind, key in live.items():
                self.history[kind][key].append(ev)
            self.watermark = ev.t if self.watermark is None else max(self.watermark, ev.t)
        return out


def reference_run(frame: pl.DataFrame, config: FeatureConfig) -> ReferenceRun:
    """Features of every row of `frame` (processed in row order, as one stream) and counters."""
    reference = _Reference(config)
    rows = [reference.process(ev) for ev in events_of(frame)]
    latest = {
        kind: {key: max(e.t for e in events) for key, events in by_key.items() if events}
        for kind, by_key in reference.history.items()
    }
    return ReferenceRun(
        rows=rows,
        late_events=reference.late_events,
        replayed_events=reference.replayed_events,
        watermark_us=reference.watermark,
        latest_by_entity=latest,
    )


def reference_features(frame: pl.DataFrame, config: FeatureConfig) -> list[Row]:
    """One dict per row, keyed by `config.names` plus `is_late`; None stands for null."""
    return reference_run(frame, config).rows


def reference_stats(frame: pl.DataFrame, config: FeatureConfig) -> ReferenceStats:
    """How many rows are too late, how many are replays, and the final watermark."""
    run = reference_run(frame, config)
    return ReferenceStats(run.late_events, run.replayed_events, run.watermark_us)
