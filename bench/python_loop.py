"""The baseline the engine benchmark runs beside: a competent plain-Python per-event loop.

It computes the same default features the engine does (six windows of count and sum per card
and per customer, amount mean/std/z-score, time and distance since the previous transaction,
first-seen merchant/country/device, and merchant/terminal counts and distinct cards in two
windows) with the usual tools: a deque per entity and window with running totals, Welford
moments, sets and counters. It assumes in-order events and has no TTL or replay handling, so
it does less than the engine; it is what one would write without a compiled kernel.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

WINDOWS_US = (60e6, 600e6, 3600e6, 86400e6, 7 * 86400e6, 30 * 86400e6)
PLACE_WINDOWS_US = (600e6, 86400e6)


@dataclass
class _Account:
    windows: list[deque[tuple[int, float]]] = field(
        default_factory=lambda: [deque() for _ in WINDOWS_US]
    )
    sums: list[float] = field(default_factory=lambda: [0.0] * len(WINDOWS_US))
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    last_ts: int | None = None
    last_loc: tuple[int, float, float] | None = None
    seen: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class _Place:
    windows: list[deque[tuple[int, str]]] = field(
        default_factory=lambda: [deque() for _ in PLACE_WINDOWS_US]
    )
    cards: list[Counter[str]] = field(default_factory=lambda: [Counter() for _ in PLACE_WINDOWS_US])


def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


def _account(state: _Account, row: dict[str, object], ts: int, out: list[float | None]) -> None:
    amount = float(row["amount"])  # type: ignore[arg-type]
    for w, length in enumerate(WINDOWS_US):
        window = state.windows[w]
        window.append((ts, amount))
        state.sums[w] += amount
        while window and window[0][0] <= ts - length:
            state.sums[w] -= window.popleft()[1]
        out.append(len(window))
        out.append(state.sums[w])
    std = math.sqrt(state.m2 / (state.n - 1)) if state.n >= 2 else None
    out += [state.mean if state.n else None, std, (amount - state.mean) / std if std else None]
    out.append((ts - state.last_ts) / 1e6 if state.last_ts is not None else None)
    lat, lon = row["latitude"], row["longitude"]
    if lat is not None and state.last_loc is not None:
        km = _haversine(state.last_loc[1], state.last_loc[2], lat, lon)  # type: ignore[arg-type]
        out += [km, km / (max(ts - state.last_loc[0], 1e6) / 3.6e9)]
    else:
        out += [None, None]
    state.n += 1
    delta = amount - state.mean
    state.mean += delta / state.n
    state.m2 += delta * (amount - state.mean)
    state.last_ts = ts
    if lat is not None:
        state.last_loc = (ts, lat, lon)  # type: ignore[assignment]


def _place(state: _Place, payer: str, ts: int, out: list[float | None]) -> None:
    for w, length in enumerate(PLACE_WINDOWS_US):
        window, cards = state.windows[w], state.cards[w]
        window.append((ts, payer))
        cards[payer] += 1
        while window and window[0][0] <= ts - length:
            _, old = window.popleft()
            cards[old] -= 1
            if not cards[old]:
                del cards[old]
        out += [len(window), len(cards)]


def features(
    rows: list[dict[str, object]], timestamps_us: list[int]
) -> Iterator[list[float | None]]:
    """Yield one feature row per event, the plain-Python way."""
    accounts: dict[tuple[str, object], _Account] = {}
    places: dict[tuple[str, object], _Place] = {}
    for row, ts in zip(rows, timestamps_us, strict=True):
        out: list[float | None] = []
        for kind in ("card_ref", "customer_id"):
            key = row[kind]
            if key is None:
                out += [None] * (2 * len(WINDOWS_US) + 6)
                continue
            _account(accounts.setdefault((kind, key), _Account()), row, ts, out)
        card = accounts.get(("card_ref", row["card_ref"]))
        for name in ("merchant_id", "country", "device_id"):
            value = row[name]
            if card is None or value is None:
                out.append(None)
                continue
            out.append(float((name, value) not in card.seen))  # type: ignore[arg-type]
            card.seen.add((name, value))  # type: ignore[arg-type]
        payer = str(row["card_ref"] or row["customer_id"])
        for kind in ("merchant_id", "terminal_id"):
            key = row[kind]
            if key is None:
                out += [None] * (2 * len(PLACE_WINDOWS_US))
                continue
            _place(places.setdefault((kind, key), _Place()), payer, ts, out)
        yield out


def rate(frame: pl.DataFrame) -> float:
    """Events per second of `features` over a frame in the engine's schema (the conversion to
    Python rows is not timed)."""
    rows = frame.to_dicts()
    stamps = frame.get_column("timestamp").dt.epoch("us").to_list()
    start = time.perf_counter()
    for _ in features(rows, stamps):
        pass
    return frame.height / (time.perf_counter() - start)
