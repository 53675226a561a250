"""The batch walk: every event of a batch, in order, through all four entity kinds."""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import numpy.typing as npt

from fraudstream.core.features.account import (
    account_features,
    account_width,
    apply_account,
    apply_novelty,
    novelty_features,
)
from fraudstream.core.features.kernels import (
    EV_HEAD,
    LAST_TS,
    M_HAS_WATERMARK,
    M_LATE,
    M_REPLAYED,
    M_SEQUENCE,
    M_WATERMARK,
    P_BUCKET,
    P_BUCKET_RETENTION,
    P_EVENT_RETENTION,
    P_LATENESS,
    P_TTL,
    history_contains,
    release_entity,
)
from fraudstream.core.features.place import apply_place, place_features
from fraudstream.core.features.pool import NO_TIME, Pool

CARD, CUSTOMER, MERCHANT, TERMINAL = 0, 1, 2, 3
N_NOVELTY = 3


class BatchColumns(NamedTuple):
    """One batch as the kernel reads it; keys already mapped to entity slots (-1 = null)."""

    ts: npt.NDArray[np.int64]
    amount: npt.NDArray[np.float64]
    txh: npt.NDArray[np.int64]
    lat: npt.NDArray[np.float64]
    lon: npt.NDArray[np.float64]
    slots: npt.NDArray[np.int64]
    """shape (4, n): card, customer, merchant, terminal."""
    payer: npt.NDArray[np.int64]
    novelty: npt.NDArray[np.int64]
    """shape (3, n): merchant, country, device value hashes."""
    novelty_present: npt.NDArray[np.bool_]


class Tables(NamedTuple):
    """Everything the kernel mutates. Pools and entity tables are indexed by entity kind."""

    events: tuple[Pool, Pool, Pool, Pool]
    buckets: tuple[Pool, Pool]
    novelty: Pool
    ints: tuple[
        npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]
    ]
    floats: tuple[
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
    ]
    params: npt.NDArray[np.int64]
    meta: npt.NDArray[np.int64]
    account_windows: npt.NDArray[np.int64]
    place_windows: npt.NDArray[np.int64]


@numba.njit(cache=True, nogil=True)
def walk_batch(
    batch: BatchColumns,
    tables: Tables,
    n_exact: int,
    out: npt.NDArray[np.float64],
    late: npt.NDArray[np.bool_],
) -> None:
    """Compute features for every event of the batch into `out` and update the state."""
    params = tables.params
    meta = tables.meta
    n_account_windows = tables.account_windows.shape[0]
    width = account_width(n_account_windows)
    novelty_base = 2 * width
    place_base = novelty_base + N_NOVELTY
    place_width = 2 * tables.place_windows.shape[0]
    has_buckets = n_account_windows > n_exact
    scratch = np.empty(2 * n_account_windows, np.float64)
    for i in range(batch.ts.shape[0]):
        t = batch.ts[i]
        if meta[M_HAS_WATERMARK] == 1 and t < meta[M_WATERMARK] - params[P_LATENESS]:
            late[i] = True
            meta[M_LATE] += 1
            out[i, :] = np.nan
            continue
        late[i] = False
        replay = _is_replay(batch, tables, i)
        if not replay:
            _reset_idle_entities(batch, tables, i, t - params[P_TTL], has_buckets)
        for kind in range(2):
            s = batch.slots[kind, i]
            base = kind * width
            if s < 0:
                out[i, base : base + width] = np.nan
                continue
            account_features(
                tables.events[kind], tables.buckets[kind], tables.ints[kind],
                tables.floats[kind], s, t, batch.amount[i], batch.txh[i], batch.lat[i],
                batch.lon[i], replay, tables.account_windows, n_exact, params[P_BUCKET],
                out[i], base, scratch,
            )  # fmt: skip
        card = batch.slots[CARD, i]
        if card < 0:
            out[i, novelty_base:place_base] = np.nan
        else:
            novelty_features(
                tables.novelty, tables.ints[CARD], card, t, batch.txh[i],
                batch.novelty[:, i], batch.novelty_present[:, i], params[P_TTL], out[i],
                novelty_base,
            )  # fmt: skip
        for kind in range(2, 4):
            s = batch.slots[kind, i]
            base = place_base + (kind - 2) * place_width
            if s < 0:
                out[i, base : base + place_width] = np.nan
                continue
            place_features(
                tables.events[kind], tables.ints[kind], s, t, batch.txh[i], batch.payer[i],
                tables.place_windows, out[i], base,
            )  # fmt: skip
        if replay:
            meta[M_REPLAYED] += 1
            continue
        _apply(batch, tables, i, has_buckets)


@numba.njit(cache=True, nogil=True)
def _is_replay(batch: BatchColumns, tables: Tables, i: int) -> bool:
    for kind in range(4):
        s = batch.slots[kind, i]
        if s >= 0:
            head = tables.ints[kind][s, EV_HEAD]
            return history_contains(tables.events[kind], head, batch.txh[i])
    return False


@numba.njit(cache=True, nogil=True)
def _reset_idle_entities(
    batch: BatchColumns, tables: Tables, i: int, idle_before: int, has_buckets: bool
) -> None:
    for kind in range(4):
        s = batch.slots[kind, i]
        if s < 0:
            continue
        last = tables.ints[kind][s, LAST_TS]
        if last != NO_TIME and last < idle_before:
            release_entity(
                tables.ints[kind], tables.floats[kind], s, tables.events[kind],
                tables.buckets[min(kind, 1)], tables.novelty, has_buckets and kind < 2,
                kind == CARD,
            )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _apply(batch: BatchColumns, tables: Tables, i: int, has_buckets: bool) -> None:
    params = tables.params
    meta = tables.meta
    t = batch.ts[i]
    watermark = t if meta[M_HAS_WATERMARK] == 0 else max(meta[M_WATERMARK], t)
    event_horizon = watermark - params[P_EVENT_RETENTION]
    seq = meta[M_SEQUENCE]
    for kind in range(2):
        s = batch.slots[kind, i]
        if s >= 0:
            apply_account(
                tables.events[kind], tables.buckets[kind], tables.ints[kind],
                tables.floats[kind], s, t, batch.amount[i], batch.txh[i], seq, batch.lat[i],
                batch.lon[i], has_buckets, params[P_BUCKET], event_horizon,
                watermark - params[P_BUCKET_RETENTION],
            )  # fmt: skip
    card = batch.slots[CARD, i]
    if card >= 0:
        apply_novelty(
            tables.novelty, tables.ints[CARD], tables.floats[CARD], card, t, batch.txh[i],
            batch.novelty[:, i], batch.novelty_present[:, i],
            watermark - params[P_LATENESS] - params[P_TTL],
        )  # fmt: skip
    for kind in range(2, 4):
        s = batch.slots[kind, i]
        if s >= 0:
            apply_place(
                tables.events[kind], tables.ints[kind], tables.floats[kind], s, t,
                batch.txh[i], batch.payer[i], event_horizon,
            )  # fmt: skip
    meta[M_WATERMARK] = watermark
    meta[M_HAS_WATERMARK] = 1
    meta[M_SEQUENCE] = seq + 1


@numba.njit(cache=True, nogil=True)
def evict_idle(tables: Tables, kind: int, slots: npt.NDArray[np.int64]) -> None:
    """Free the given entity slots of one kind (the sweep has decided they are past the TTL)."""
    has_buckets = tables.account_windows.shape[0] > 0 and kind < 2
    for s in slots:
        release_entity(
            tables.ints[kind], tables.floats[kind], s, tables.events[kind],
            tables.buckets[min(kind, 1)], tables.novelty, has_buckets, kind == CARD,
        )  # fmt: skip
