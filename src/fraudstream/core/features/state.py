"""`FeatureState`: the in-memory per-entity state and the one call that advances it.

The Python side maps entity keys to slots, hashes identifiers, makes sure the pools have room,
and turns the kernel's NaN-for-null matrix into typed columns. Everything per event happens in
the compiled walk (`walk.py`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from fraudstream.core.features.config import ENTITY_KINDS, NOVELTY_FIELDS, FeatureConfig
from fraudstream.core.features.kernels import (
    LAST_TS,
    M_HAS_WATERMARK,
    M_LATE,
    M_REPLAYED,
    M_WATERMARK,
    N_FLOAT_COLUMNS,
    N_INT_COLUMNS,
    P_BUCKET,
    P_BUCKET_RETENTION,
    P_EVENT_RETENTION,
    P_LATENESS,
    P_TTL,
)
from fraudstream.core.features.pool import (
    NO_CHUNK,
    NO_TIME,
    Pool,
    chunk_bytes,
    chunks_in_use,
    grown,
    new_pool,
    retained_records,
)
from fraudstream.core.features.walk import BatchColumns, Tables, evict_idle, walk_batch

KEY_COLUMNS = {
    "card": "card_ref",
    "customer": "customer_id",
    "merchant": "merchant_id",
    "terminal": "terminal_id",
}
NOVELTY_COLUMNS = {"merchant": "merchant_id", "country": "country", "device": "device_id"}
_HASH_SEEDS = (0x5EED_F00D, 0x0DDB_A11, 0xC0FFEE, 0xB16B00B5)
_EMPTY_INT_ROW = np.array(
    [NO_CHUNK] * 6 + [NO_TIME, 1, 0] + [NO_TIME] * 4, dtype=np.int64
)
assert _EMPTY_INT_ROW.shape[0] == N_INT_COLUMNS


@dataclass(frozen=True, slots=True)
class StateStats:
    """How big the state is and what it has seen; cheap to compute."""

    entities: dict[str, int]
    retained_events: int
    memory_bytes: int
    allocated_bytes: int
    late_events: int
    replayed_events: int
    watermark_us: int | None


def stable_hash(column: pl.Series, seed_index: int = 0) -> npt.NDArray[np.int64]:
    """64-bit hashes of a string column (nulls included), as int64 for the kernels."""
    seeds = _HASH_SEEDS[seed_index % len(_HASH_SEEDS)]
    hashed = column.hash(seed=seeds)
    return hashed.to_numpy().view(np.int64)


class _Entities:
    """Key -> slot mapping of one entity kind, with slot reuse after eviction."""

    def __init__(self, capacity: int) -> None:
        self.slots: dict[str, int] = {}
        self.keys: list[str | None] = []
        self.free: list[int] = []
        self.ints = np.tile(_EMPTY_INT_ROW, (capacity, 1))
        self.floats = np.zeros((capacity, N_FLOAT_COLUMNS), np.float64)

    def lookup(self, keys: list[str | None]) -> npt.NDArray[np.int64]:
        found = self.slots.get
        result = [(-1 if key is None else found(key, -2)) for key in keys]
        if -2 in result:
            for index, key in enumerate(keys):
                if result[index] == -2:
                    assert key is not None
                    slot = self.slots.get(key)
                    result[index] = self._allocate(key) if slot is None else slot
        return np.array(result, dtype=np.int64)

    def _allocate(self, key: str) -> int:
        if self.free:
            slot = self.free.pop()
            self.keys[slot] = key
        else:
            slot = len(self.keys)
            self.keys.append(key)
            if slot >= self.ints.shape[0]:
                self._grow()
        self.ints[slot] = _EMPTY_INT_ROW
        self.floats[slot] = 0.0
        self.slots[key] = slot
        return slot

    def _grow(self) -> None:
        old = self.ints.shape[0]
        ints = np.tile(_EMPTY_INT_ROW, (2 * old, 1))
        ints[:old] = self.ints
        floats = np.zeros((2 * old, N_FLOAT_COLUMNS), np.float64)
        floats[:old] = self.floats
        self.ints, self.floats = ints, floats

    def release(self, slots: npt.NDArray[np.int64]) -> None:
        for slot in slots.tolist():
            key = self.keys[slot]
            if key is not None:
                del self.slots[key]
            self.keys[slot] = None
            self.free.append(slot)

    def memory_bytes(self) -> int:
        live = len(self.slots)
        row = (N_INT_COLUMNS + N_FLOAT_COLUMNS) * 8
        keys = sum(sys.getsizeof(k) for k in self.slots) + sys.getsizeof(self.slots)
        return live * row + keys


class FeatureState:
    """Per-entity feature state in memory, advanced one batch at a time by `update`."""

    def __init__(self, config: FeatureConfig | None = None, initial_entities: int = 1024) -> None:
        self.config = config or FeatureConfig()
        c = self.config
        self._entities = {kind: _Entities(initial_entities) for kind in ENTITY_KINDS}
        chunks = max(64, initial_entities)
        self._events = [new_pool(chunks, c.chunk_size) for _ in ENTITY_KINDS]
        self._buckets = [new_pool(chunks, 4), new_pool(chunks, 4)]
        self._novelty = new_pool(chunks, 4)
        self._params = np.array(
            [
                c.allowed_lateness_us,
                c.ttl_us,
                c.bucket_us,
                c.event_retention_us,
                c.bucket_retention_us,
            ],
            dtype=np.int64,
        )
        assert self._params[P_LATENESS] == c.allowed_lateness_us
        assert (P_TTL, P_BUCKET, P_EVENT_RETENTION, P_BUCKET_RETENTION) == (1, 2, 3, 4)
        self._meta = np.zeros(8, dtype=np.int64)
        self._account_windows = np.array(c.account_windows_us, dtype=np.int64)
        self._place_windows = np.array(c.place_windows_us, dtype=np.int64)
        self._n_exact = len(c.exact_account_windows)
        self._dtypes: dict[str, pl.DataType] = {
            **{name: pl.Int64() for name in c.count_features},
            **{name: pl.Boolean() for name in c.boolean_features},
        }

    # -- the hot path ---------------------------------------------------------------------

    def update(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Features for every row of `frame` (processed in row order); advances the state.

        `frame` has the engine's transaction schema. The result has one column per name in
        `config.names` plus `is_late`, row-aligned with the input.
        """
        n = frame.height
        batch = self._columns(frame)
        self._reserve(n)
        out = np.empty((n, len(self.config.names)), dtype=np.float64)
        late = np.empty(n, dtype=np.bool_)
        walk_batch(batch, self._tables(), self._n_exact, out, late)
        return self._typed(out, late)

    def _columns(self, frame: pl.DataFrame) -> BatchColumns:
        slots = np.empty((len(ENTITY_KINDS), frame.height), dtype=np.int64)
        for k, kind in enumerate(ENTITY_KINDS):
            keys = frame.get_column(KEY_COLUMNS[kind]).to_list()
            slots[k] = self._entities[kind].lookup(keys)
        payer = frame.select(pl.coalesce("card_ref", "customer_id")).to_series()
        novelty = np.empty((len(NOVELTY_FIELDS), frame.height), dtype=np.int64)
        present = np.empty((len(NOVELTY_FIELDS), frame.height), dtype=np.bool_)
        for f, field in enumerate(NOVELTY_FIELDS):
            column = frame.get_column(NOVELTY_COLUMNS[field])
            novelty[f] = stable_hash(column, f + 1)
            present[f] = column.is_not_null().to_numpy()
        return BatchColumns(
            ts=frame.get_column("timestamp").dt.epoch("us").to_numpy().astype(np.int64),
            amount=frame.get_column("amount").to_numpy().astype(np.float64),
            txh=stable_hash(frame.get_column("transaction_id")),
            lat=_with_nan(frame.get_column("latitude")),
            lon=_with_nan(frame.get_column("longitude")),
            slots=slots,
            payer=stable_hash(payer),
            novelty=novelty,
            novelty_present=present,
        )

    def _reserve(self, n: int) -> None:
        """Make sure no pool can run out of chunks during a batch of n events."""
        self._events = [grown(pool, n + 1) for pool in self._events]
        self._buckets = [grown(pool, n + 1) for pool in self._buckets]
        self._novelty = grown(self._novelty, len(NOVELTY_FIELDS) * n + 1)

    def _tables(self) -> Tables:
        e = [self._entities[kind] for kind in ENTITY_KINDS]
        return Tables(
            events=(self._events[0], self._events[1], self._events[2], self._events[3]),
            buckets=(self._buckets[0], self._buckets[1]),
            novelty=self._novelty,
            ints=(e[0].ints, e[1].ints, e[2].ints, e[3].ints),
            floats=(e[0].floats, e[1].floats, e[2].floats, e[3].floats),
            params=self._params,
            meta=self._meta,
            account_windows=self._account_windows,
            place_windows=self._place_windows,
        )

    def _typed(self, out: npt.NDArray[np.float64], late: npt.NDArray[np.bool_]) -> pl.DataFrame:
        """The kernel's NaN-for-null matrix as typed, nullable columns."""
        columns = np.ascontiguousarray(out.T)
        series = []
        for index, name in enumerate(self.config.names):
            column = pl.Series(name, columns[index], nan_to_null=True)
            dtype = self._dtypes.get(name)
            series.append(column if dtype is None else column.cast(dtype))
        series.append(pl.Series("is_late", late))
        return pl.DataFrame(series)

    # -- housekeeping -----------------------------------------------------------------------

    def expire(self) -> int:
        """Evict entities idle for longer than the TTL; returns how many were evicted.

        Safe at any time: an evicted entity would have been reset by its next accepted event
        anyway, so no future feature changes.
        """
        if self._meta[M_HAS_WATERMARK] == 0:
            return 0
        cutoff = self._meta[M_WATERMARK] - self.config.allowed_lateness_us - self.config.ttl_us
        tables = self._tables()
        evicted = 0
        for k, kind in enumerate(ENTITY_KINDS):
            entities = self._entities[kind]
            used = len(entities.keys)
            live = np.array([key is not None for key in entities.keys], dtype=np.bool_)
            last = entities.ints[:used, LAST_TS]
            idle = np.flatnonzero(live & (last < cutoff))
            if idle.size:
                evict_idle(tables, k, idle.astype(np.int64))
                entities.release(idle)
                evicted += int(idle.size)
        return evicted

    def stats(self) -> StateStats:
        pools: list[Pool] = [*self._events, *self._buckets, self._novelty]
        in_use = sum(chunks_in_use(p) * chunk_bytes(p) for p in pools)
        allocated = sum(p.i.shape[0] * chunk_bytes(p) for p in pools)
        entity_bytes = sum(e.memory_bytes() for e in self._entities.values())
        retained = sum(retained_records(pool) for pool in self._events)
        has_watermark = bool(self._meta[M_HAS_WATERMARK])
        return StateStats(
            entities={kind: len(e.slots) for kind, e in self._entities.items()},
            retained_events=retained,
            memory_bytes=in_use + entity_bytes,
            allocated_bytes=allocated + entity_bytes,
            late_events=int(self._meta[M_LATE]),
            replayed_events=int(self._meta[M_REPLAYED]),
            watermark_us=int(self._meta[M_WATERMARK]) if has_watermark else None,
        )

    @property
    def watermark_us(self) -> int | None:
        return int(self._meta[M_WATERMARK]) if self._meta[M_HAS_WATERMARK] else None


def _with_nan(column: pl.Series) -> npt.NDArray[np.float64]:
    return column.cast(pl.Float64).fill_null(np.nan).to_numpy().astype(np.float64)
