"""`FeatureState`: the in-memory per-entity state and the one call that advances it.

The Python side hashes identifiers (compiled, from the Arrow buffers, `core/text.py`) and
makes sure the pools and key tables have room; `FeatureColumns.to_frame` types the kernel's
NaN-for-null matrix when a frame is wanted. Everything per event,
including finding each entity's slot (`keys.py`), happens in the compiled walk (`walk.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from fraudstream.core.features.account import BUCKET_RECORD_FIELDS
from fraudstream.core.features.arena import growable_zeros, with_rows
from fraudstream.core.features.config import (
    ENTITY_KINDS,
    NOVELTY_FIELDS,
    PLACE_KINDS,
    FeatureConfig,
)
from fraudstream.core.features.kernels import (
    LAST_TS,
    M_HAS_WATERMARK,
    M_LATE,
    M_REPLAYED,
    M_WATERMARK,
    P_BUCKET,
    P_BUCKET_RETENTION,
    P_EVENT_RETENTION,
    P_LATENESS,
    P_TTL,
    window_columns,
)
from fraudstream.core.features.keys import live_keys, new_key_table, reserved
from fraudstream.core.features.novelty import NOVELTY_RECORD_FIELDS
from fraudstream.core.features.pool import (
    EVENT_FIELDS,
    Pool,
    chunk_bytes,
    chunks_in_use,
    grown,
    new_pool,
    retained_records,
)
from fraudstream.core.features.snapshot import (
    Arrays,
    check_same,
    key_table_arrays,
    pool_arrays,
    restored_key_table,
    restored_pool,
    saved_array,
    saved_rows,
)
from fraudstream.core.features.walk import (
    BatchColumns,
    Tables,
    evict_idle,
    new_scratch,
    walk_batch,
)
from fraudstream.core.text import hash_text

KEY_COLUMNS = {
    "card": "card_ref",
    "customer": "customer_id",
    "merchant": "merchant_id",
    "terminal": "terminal_id",
}
NOVELTY_COLUMNS = {"merchant": "merchant_id", "country": "country", "device": "device_id"}
BUCKET_CHUNK = 8
"""Bucket records per chunk: a typical card's month of hourly buckets in two or three chunks."""
NOVELTY_CHUNK = 8
_HASH_SEEDS = (0x5EED_F00D, 0x0DDB_A11, 0xC0FFEE, 0xB16B00B5)
_HASHED_COLUMNS = (
    "transaction_id", "card_ref", "customer_id", "merchant_id", "terminal_id", "country",
    "device_id",
)  # fmt: skip


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


@dataclass(frozen=True, slots=True)
class FeatureColumns:
    """One batch's features as the kernel computed them: float64 with NaN for null.

    Counts and flags are floats here too (exact: counts stay far below 2**53); `to_frame`
    gives them their Int64 / Boolean types. Rules read these arrays directly, so a batch only
    pays for a typed frame when something (a sink, a model) asks for one.
    """

    names: tuple[str, ...]
    index: Mapping[str, int]
    values: npt.NDArray[np.float64]
    """shape (len(names), n): one contiguous row per feature."""
    late: npt.NDArray[np.bool_]
    dtypes: Mapping[str, pl.DataType]
    """Int64 or Boolean for the features that are not Float64."""

    def column(self, name: str) -> npt.NDArray[np.float64]:
        row: npt.NDArray[np.float64] = self.values[self.index[name]]
        return row

    def select(self, rows: npt.NDArray[np.intp]) -> FeatureColumns:
        """Only the given rows, in that order."""
        values = np.ascontiguousarray(self.values[:, rows])
        return FeatureColumns(self.names, self.index, values, self.late[rows], self.dtypes)

    def to_frame(self) -> pl.DataFrame:
        """Typed, nullable columns (NaN becomes null) plus `is_late`, built through Arrow."""
        arrays = []
        for name in self.names:
            column = pa.array(self.column(name), from_pandas=True)  # NaN -> null
            dtype = self.dtypes.get(name)
            if dtype == pl.Int64:
                column = column.cast(pa.int64())
            elif dtype == pl.Boolean:
                column = column.cast(pa.bool_())
            arrays.append(column)
        arrays.append(pa.array(self.late))
        fields = [*self.names, "is_late"]
        frame = pl.from_arrow(pa.Table.from_arrays(arrays, names=fields))
        assert isinstance(frame, pl.DataFrame)
        return frame


_TXID, _CARD, _CUSTOMER = 0, 1, 2
_KEY_ROWS = [_HASHED_COLUMNS.index(KEY_COLUMNS[kind]) for kind in ENTITY_KINDS]
_NOVELTY_ROWS = [_HASHED_COLUMNS.index(NOVELTY_COLUMNS[field]) for field in NOVELTY_FIELDS]


def hash_identifiers(frame: pl.DataFrame) -> npt.NDArray[np.int64]:
    """Shape (len(_HASHED_COLUMNS), n): stable 64-bit hashes of the identifier columns.

    Every non-null value hashes to an odd number and a null to 0 (see `core/text.py`).
    """
    hashes = np.empty((len(_HASHED_COLUMNS), frame.height), dtype=np.int64)
    for row, name in enumerate(_HASHED_COLUMNS):
        seed = _HASH_SEEDS[row % len(_HASH_SEEDS)]
        hashes[row] = hash_text(frame.get_column(name), seed)
    return hashes


class _Rows:
    """Rows of state indexed by slot, and the key table that hands the slots out.

    Entities are one use (a row per card, merchant, ...: `int_columns` and `float_columns`
    wide); the (place, card) pairs of the sliding windows another (int rows only). A row is
    cleared by the kernel when its slot is handed to a key, so rows start as plain zeros here
    and free rows are never read. The rows are growable arrays (`arena.py`): a key table
    that doubles lengthens them in place.
    """

    def __init__(self, capacity: int, int_columns: int, float_columns: int) -> None:
        self.keys = new_key_table(capacity)
        self.ints: npt.NDArray[np.int64] = growable_zeros(capacity, (int_columns,), np.int64)
        self.floats: npt.NDArray[np.float64] = growable_zeros(
            capacity, (float_columns,), np.float64
        )

    def reserve(self, new_keys: int) -> None:
        """Room for `new_keys` first-seen keys; rows keep their slots."""
        self.keys = reserved(self.keys, new_keys)
        self.ints = with_rows(self.ints, self.keys.keys.shape[0])
        self.floats = with_rows(self.floats, self.keys.keys.shape[0])

    @property
    def live(self) -> int:
        return live_keys(self.keys)

    def memory_bytes(self) -> int:
        """Rows and key-table entries of live keys (the table's load is at most 1/2)."""
        row = int(self.ints.shape[1] + self.floats.shape[1]) * 8
        key = 8 + 2 * 16
        return self.live * (row + key)


class FeatureState:
    """Per-entity feature state in memory, advanced one batch at a time by `update`."""

    def __init__(self, config: FeatureConfig | None = None, initial_entities: int = 1024) -> None:
        self.config = config or FeatureConfig()
        c = self.config
        account_columns = window_columns(len(c.exact_account_windows))
        place_columns = window_columns(len(c.place_windows_us))
        columns = {
            kind: place_columns if kind in PLACE_KINDS else account_columns for kind in ENTITY_KINDS
        }
        self._entities = {kind: _Rows(initial_entities, *columns[kind]) for kind in ENTITY_KINDS}
        self._pairs = [_Rows(initial_entities, 1 + len(c.place_windows_us), 0) for _ in PLACE_KINDS]
        chunks = max(64, initial_entities)
        self._events = [
            new_pool(chunks, c.chunk_size, EVENT_FIELDS, back_links=True) for _ in ENTITY_KINDS
        ]
        self._buckets = [new_pool(chunks, BUCKET_CHUNK, BUCKET_RECORD_FIELDS) for _ in range(2)]
        self._novelty = new_pool(chunks, NOVELTY_CHUNK, NOVELTY_RECORD_FIELDS)
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
        self._scratch = new_scratch(len(c.account_windows_us))
        self._account_windows = np.array(c.account_windows_us, dtype=np.int64)
        self._place_windows = np.array(c.place_windows_us, dtype=np.int64)
        self._n_exact = len(c.exact_account_windows)
        self._dtypes: dict[str, pl.DataType] = {
            **{name: pl.Int64() for name in c.count_features},
            **{name: pl.Boolean() for name in c.boolean_features},
        }
        self._index = {name: position for position, name in enumerate(c.names)}

    # -- the hot path ---------------------------------------------------------------------

    def update(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Features for every row of `frame` (processed in row order); advances the state.

        `frame` has the engine's transaction schema. The result has one column per name in
        `config.names` plus `is_late`, row-aligned with the input.
        """
        return self.advance(frame).to_frame()

    def advance(self, frame: pl.DataFrame) -> FeatureColumns:
        """Like `update`, but the features stay the kernel's float arrays (no frame built)."""
        n = frame.height
        batch = self._columns(frame)
        self._reserve(n)
        out = np.empty((n, len(self.config.names)), dtype=np.float64)
        late = np.empty(n, dtype=np.bool_)
        walk_batch(batch, self._tables(), self._n_exact, out, late, self._scratch)
        return FeatureColumns(
            self.config.names, self._index, np.ascontiguousarray(out.T), late, self._dtypes
        )

    def _columns(self, frame: pl.DataFrame) -> BatchColumns:
        """The batch as kernel arrays. Numbers come straight out of Polars (nulls as NaN)."""
        hashes = hash_identifiers(frame)
        card, customer = hashes[_CARD], hashes[_CUSTOMER]
        return BatchColumns(
            ts=_epoch_us(frame.get_column("timestamp")),
            amount=_float64(frame.get_column("amount")),
            txh=hashes[_TXID],
            lat=_float64(frame.get_column("latitude")),
            lon=_float64(frame.get_column("longitude")),
            keys=hashes[_KEY_ROWS],
            payer=np.where(card != 0, card, customer),
            novelty=hashes[_NOVELTY_ROWS],
        )

    def _reserve(self, n: int) -> None:
        """Make sure no pool can run out of chunks during a batch of n events."""
        self._events = [grown(pool, n + 1) for pool in self._events]
        self._buckets = [grown(pool, n + 1) for pool in self._buckets]
        self._novelty = grown(self._novelty, len(NOVELTY_FIELDS) * n + 1)
        for rows in [*self._entities.values(), *self._pairs]:
            rows.reserve(n)

    def _tables(self) -> Tables:
        e = [self._entities[kind] for kind in ENTITY_KINDS]
        return Tables(
            keys=(e[0].keys, e[1].keys, e[2].keys, e[3].keys),
            events=(self._events[0], self._events[1], self._events[2], self._events[3]),
            buckets=(self._buckets[0], self._buckets[1]),
            novelty=self._novelty,
            ints=(e[0].ints, e[1].ints, e[2].ints, e[3].ints),
            floats=(e[0].floats, e[1].floats, e[2].floats, e[3].floats),
            pairs=(self._pairs[0].keys, self._pairs[1].keys),
            pair_counts=(self._pairs[0].ints, self._pairs[1].ints),
            params=self._params,
            meta=self._meta,
            account_windows=self._account_windows,
            place_windows=self._place_windows,
        )

    # -- checkpoints ------------------------------------------------------------------------

    def snapshot(self, copy: bool = True) -> Arrays:
        """The whole state as named arrays, copied: safe to serialise while batches go on.
        `copy=False` hands the entity rows and key tables over as they are (the pools are
        gathered into new blocks either way): for a forked child, whose memory is already
        frozen, where copies only cost memory."""

        def kept(array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
            return array.copy() if copy else array

        arrays: Arrays = {
            "params": kept(self._params),
            "account_windows": kept(self._account_windows),
            "place_windows": kept(self._place_windows),
            "meta": kept(self._meta),
        }
        for k, kind in enumerate(ENTITY_KINDS):
            entities = self._entities[kind]
            arrays |= key_table_arrays(f"{kind}.keys", entities.keys, copy)
            arrays[f"{kind}.ints"] = kept(entities.ints)
            arrays[f"{kind}.floats"] = kept(entities.floats)
            arrays |= pool_arrays(f"{kind}.events", self._events[k])
        for kind, pairs in zip(PLACE_KINDS, self._pairs, strict=True):
            arrays |= key_table_arrays(f"{kind}.pairs.keys", pairs.keys, copy)
            arrays[f"{kind}.pairs.counts"] = kept(pairs.ints)
        for b, pool in enumerate(self._buckets):
            arrays |= pool_arrays(f"buckets{b}", pool)
        arrays |= pool_arrays("novelty", self._novelty)
        return arrays

    @classmethod
    def restore(
        cls, config: FeatureConfig, arrays: Mapping[str, npt.NDArray[np.generic]]
    ) -> FeatureState:
        """The state a `snapshot` describes; `SnapshotError` when it was taken under another
        feature configuration or is incomplete."""
        state = cls(config, initial_entities=1)
        for name in ("params", "account_windows", "place_windows"):
            check_same(name, arrays, getattr(state, f"_{name}"))
        state._meta[:] = saved_array(arrays, "meta", np.int64)
        for k, kind in enumerate(ENTITY_KINDS):
            entities = state._entities[kind]
            entities.keys = restored_key_table(f"{kind}.keys", arrays)
            entities.ints = saved_rows(arrays, f"{kind}.ints", entities.ints)
            entities.floats = saved_rows(arrays, f"{kind}.floats", entities.floats)
            state._events[k] = restored_pool(
                f"{kind}.events", arrays, config.chunk_size, EVENT_FIELDS, back_links=True
            )
        for kind, pairs in zip(PLACE_KINDS, state._pairs, strict=True):
            pairs.keys = restored_key_table(f"{kind}.pairs.keys", arrays)
            pairs.ints = saved_rows(arrays, f"{kind}.pairs.counts", pairs.ints)
        for b in range(len(state._buckets)):
            state._buckets[b] = restored_pool(
                f"buckets{b}", arrays, BUCKET_CHUNK, BUCKET_RECORD_FIELDS
            )
        state._novelty = restored_pool("novelty", arrays, NOVELTY_CHUNK, NOVELTY_RECORD_FIELDS)
        return state

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
            live = entities.keys.keys != 0
            idle = np.flatnonzero(live & (entities.ints[:, LAST_TS] < cutoff))
            if idle.size:
                evict_idle(tables, k, idle.astype(np.int64))
                evicted += int(idle.size)
        return evicted

    def stats(self) -> StateStats:
        pools: list[Pool] = [*self._events, *self._buckets, self._novelty]
        in_use = sum(chunks_in_use(p) * chunk_bytes(p) for p in pools)
        allocated = sum(p.i.shape[0] * chunk_bytes(p) for p in pools)
        entity_bytes = sum(e.memory_bytes() for e in [*self._entities.values(), *self._pairs])
        retained = sum(retained_records(pool) for pool in self._events)
        has_watermark = bool(self._meta[M_HAS_WATERMARK])
        return StateStats(
            entities={kind: e.live for kind, e in self._entities.items()},
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


_Array = TypeVar("_Array", npt.NDArray[np.int64], npt.NDArray[np.float64])


def _epoch_us(column: pl.Series) -> npt.NDArray[np.int64]:
    if column.dtype != pl.Datetime("us", column.dtype.time_zone):  # type: ignore[attr-defined]
        column = column.dt.cast_time_unit("us")
    return _writable(column.to_numpy().view(np.int64))


def _float64(column: pl.Series) -> npt.NDArray[np.float64]:
    """The column as float64 with NaN for null."""
    return _writable(column.cast(pl.Float64).to_numpy())


def _writable(array: _Array) -> _Array:
    """Polars hands out a read-only view when it can share memory and a fresh array when it
    cannot (a column with nulls); numba compiles the walk once per combination of the two, and a
    compile takes half a minute, so the walk always gets writable arrays."""
    return array if array.flags.writeable else array.copy()
