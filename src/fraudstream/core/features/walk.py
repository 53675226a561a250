"""The batch walk: every event of a batch, in order, through all four entity kinds.

The walk is compiled without numba's reference counting (`_nrt=False`): with it, every array
view and every array handed to an inlined helper cost a pair of atomic counter updates, and
those were a third of the walk's time. So nothing here allocates: the scratch space comes
from the caller (`Scratch`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

from fraudstream.core.features.account import (
    account_features,
    account_width,
    apply_account,
)
from fraudstream.core.features.kernels import (
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
    release_entity,
    reset_entity,
)
from fraudstream.core.features.keys import KeyTable, add_key, find_slot, remove_key
from fraudstream.core.features.novelty import N_NOVELTY, novelty_step
from fraudstream.core.features.place import apply_place, place_features
from fraudstream.core.features.pool import NO_CHUNK, NO_TIME, Pool
from fraudstream.core.features.sliding import find_self, forget_pairs

CARD, CUSTOMER, MERCHANT, TERMINAL = 0, 1, 2, 3
_F = TypeVar("_F", bound=Callable[..., Any])


def _without_reference_counting(function: _F) -> _F:
    """`numba.njit(cache=True, nogil=True)` for code that never allocates, with numba's
    reference counting off (its `_nrt` option, which numba's type stubs do not list)."""
    options: dict[str, Any] = {"cache": True, "nogil": True, "_nrt": False}
    return cast(_F, numba.njit(**options)(function))


class BatchColumns(NamedTuple):
    """One batch as the kernel reads it: every identifier already a 64-bit hash."""

    ts: npt.NDArray[np.int64]
    amount: npt.NDArray[np.float64]
    txh: npt.NDArray[np.int64]
    lat: npt.NDArray[np.float64]
    lon: npt.NDArray[np.float64]
    keys: npt.NDArray[np.int64]
    """shape (4, n): card, customer, merchant, terminal key hashes (0 = null)."""
    payer: npt.NDArray[np.int64]
    novelty: npt.NDArray[np.int64]
    """shape (3, n): merchant, country, device value hashes (0 = null)."""


class Scratch(NamedTuple):
    """Working space for the walk, kept between batches by the caller (`new_scratch`)."""

    windows: npt.NDArray[np.float64]
    """Saved window totals and the previous located event of one paying entity."""
    previous: npt.NDArray[np.int64]
    latest_seen: npt.NDArray[np.float64]
    found: npt.NDArray[np.bool_]


def new_scratch(n_account_windows: int) -> Scratch:
    return Scratch(
        windows=np.empty(2 * n_account_windows + 4, np.float64),
        previous=np.empty(2, np.int64),
        latest_seen=np.empty(N_NOVELTY, np.float64),
        found=np.empty(N_NOVELTY, np.bool_),
    )


class Tables(NamedTuple):
    """Everything the kernel mutates. Pools and entity tables are indexed by entity kind."""

    keys: tuple[KeyTable, KeyTable, KeyTable, KeyTable]
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
    pairs: tuple[KeyTable, KeyTable]
    """Per place kind (merchant, terminal): the (place, card) pairs of `sliding.py`."""
    pair_counts: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]
    params: npt.NDArray[np.int64]
    meta: npt.NDArray[np.int64]
    account_windows: npt.NDArray[np.int64]
    place_windows: npt.NDArray[np.int64]


@_without_reference_counting
def walk_batch(
    batch: BatchColumns,
    tables: Tables,
    n_exact: int,
    out: npt.NDArray[np.float64],
    late: npt.NDArray[np.bool_],
    scratch: Scratch,
) -> None:
    """Compute features for every event of the batch into `out` and update the state.

    Pools are unpacked once into locals and passed per kind with constant indices: a runtime
    index into a tuple of pools copies the whole pool struct on every access, which costs more
    than the features themselves.
    """
    cards, customers, merchants, terminals = tables.events
    card_buckets, customer_buckets = tables.buckets
    novelty = tables.novelty
    card_i, customer_i, merchant_i, terminal_i = tables.ints
    card_f, customer_f, merchant_f, terminal_f = tables.floats
    card_k, customer_k, merchant_k, terminal_k = tables.keys
    merchant_pairs, terminal_pairs = tables.pairs
    merchant_counts, terminal_counts = tables.pair_counts
    params = tables.params
    meta = tables.meta
    windows = tables.account_windows
    place_windows = tables.place_windows
    lateness, ttl, bucket = params[P_LATENESS], params[P_TTL], params[P_BUCKET]
    width = account_width(windows.shape[0])
    novelty_base = 2 * width
    place_base = novelty_base + N_NOVELTY
    place_width = 2 * place_windows.shape[0]
    has_buckets = windows.shape[0] > n_exact
    for i in range(batch.ts.shape[0]):
        t = batch.ts[i]
        if meta[M_HAS_WATERMARK] == 1 and t < meta[M_WATERMARK] - lateness:
            late[i] = True
            meta[M_LATE] += 1
            out[i, :] = np.nan
            continue
        late[i] = False
        card = _slot(card_k, card_i, card_f, batch.keys[CARD, i])
        customer = _slot(customer_k, customer_i, customer_f, batch.keys[CUSTOMER, i])
        merchant = _slot(merchant_k, merchant_i, merchant_f, batch.keys[MERCHANT, i])
        terminal = _slot(terminal_k, terminal_i, terminal_f, batch.keys[TERMINAL, i])
        amount, txh, lat, lon = batch.amount[i], batch.txh[i], batch.lat[i], batch.lon[i]
        payer = batch.payer[i]
        row = out[i]
        if card >= 0:
            replay = find_self(cards, card_i, card, t, txh)[0] != NO_CHUNK
        else:
            replay = find_self(customers, customer_i, customer, t, txh)[0] != NO_CHUNK
        if not replay:
            idle_before = t - ttl
            _reset_if_idle(card_i, card_f, card, cards, card_buckets, novelty, idle_before)
            _reset_if_idle(
                customer_i, customer_f, customer, customers, customer_buckets, novelty,
                idle_before,
            )  # fmt: skip
            _reset_place_if_idle(merchant_i, merchant_f, merchant, merchants, card_buckets,
                                 novelty, merchant_pairs, merchant_counts, idle_before)  # fmt: skip
            _reset_place_if_idle(terminal_i, terminal_f, terminal, terminals, card_buckets,
                                 novelty, terminal_pairs, terminal_counts, idle_before)  # fmt: skip
        account_features(
            cards, card_buckets, card_i, card_f, card, t, amount, txh, lat, lon, replay,
            windows, n_exact, bucket, row, 0, scratch.windows, scratch.previous,
            merchant_pairs, merchant_counts,
        )  # fmt: skip
        account_features(
            customers, customer_buckets, customer_i, customer_f, customer, t, amount, txh, lat,
            lon, replay, windows, n_exact, bucket, row, width, scratch.windows, scratch.previous,
            merchant_pairs, merchant_counts,
        )  # fmt: skip
        watermark = t if meta[M_HAS_WATERMARK] == 0 else max(meta[M_WATERMARK], t)
        if card < 0:
            row[novelty_base:place_base] = np.nan
        else:
            novelty_step(
                novelty, card_i, card, t, txh, batch.novelty[:, i], ttl, row, novelty_base,
                not replay, watermark - lateness - ttl, scratch.latest_seen, scratch.found,
            )  # fmt: skip
        place_features(
            merchants, merchant_i, merchant_f, merchant, t, txh, payer, place_windows, row,
            place_base, merchant_pairs, merchant_counts,
        )  # fmt: skip
        place_features(
            terminals, terminal_i, terminal_f, terminal, t, txh, payer, place_windows, row,
            place_base + place_width, terminal_pairs, terminal_counts,
        )  # fmt: skip
        if replay:
            meta[M_REPLAYED] += 1
            continue
        event_horizon = watermark - params[P_EVENT_RETENTION]
        bucket_horizon = watermark - params[P_BUCKET_RETENTION]
        seq = meta[M_SEQUENCE]
        if card >= 0:
            apply_account(
                cards, card_buckets, card_i, card_f, card, t, amount, txh, seq, lat, lon,
                has_buckets, bucket, event_horizon, bucket_horizon, windows, n_exact,
                merchant_pairs, merchant_counts,
            )  # fmt: skip
        if customer >= 0:
            apply_account(
                customers, customer_buckets, customer_i, customer_f, customer, t, amount, txh,
                seq, lat, lon, has_buckets, bucket, event_horizon, bucket_horizon, windows,
                n_exact, merchant_pairs, merchant_counts,
            )  # fmt: skip
        if merchant >= 0:
            apply_place(merchants, merchant_i, merchant_f, merchant, t, txh, payer, event_horizon,
                        place_windows, merchant_pairs, merchant_counts)  # fmt: skip
        if terminal >= 0:
            apply_place(terminals, terminal_i, terminal_f, terminal, t, txh, payer, event_horizon,
                        place_windows, terminal_pairs, terminal_counts)  # fmt: skip
        meta[M_WATERMARK] = watermark
        meta[M_HAS_WATERMARK] = 1
        meta[M_SEQUENCE] = seq + 1


@numba.njit(cache=True, nogil=True, inline="always")
def _slot(
    keys: KeyTable, ints: npt.NDArray[np.int64], floats: npt.NDArray[np.float64], key: int
) -> int:
    """The entity's state slot; a key seen for the first time gets a fresh, empty one."""
    if key == 0:
        return -1
    slot = find_slot(keys, key)
    if slot < 0:
        slot = add_key(keys, key)
        reset_entity(ints, floats, slot)
    return slot


@numba.njit(cache=True, nogil=True, inline="always")
def _reset_if_idle(
    ints: npt.NDArray[np.int64],
    floats: npt.NDArray[np.float64],
    s: int,
    events: Pool,
    buckets: Pool,
    novelty: Pool,
    idle_before: int,
) -> None:
    """Forget an entity whose latest event is more than the TTL before this one.

    Only paying entities own bucket and novelty chains; for the others those heads are empty,
    so freeing them is a no-op whichever pool is passed.
    """
    if s < 0:
        return
    last = ints[s, LAST_TS]
    if last != NO_TIME and last < idle_before:
        release_entity(ints, floats, s, events, buckets, novelty, True, True)


@numba.njit(cache=True, nogil=True, inline="always")
def _reset_place_if_idle(
    ints: npt.NDArray[np.int64],
    floats: npt.NDArray[np.float64],
    s: int,
    events: Pool,
    buckets: Pool,
    novelty: Pool,
    pairs: KeyTable,
    pair_counts: npt.NDArray[np.int64],
    idle_before: int,
) -> None:
    """`_reset_if_idle` for a merchant or terminal, which first lets go of its card pairs."""
    if s < 0:
        return
    last = ints[s, LAST_TS]
    if last != NO_TIME and last < idle_before:
        forget_pairs(events, ints, s, pairs, pair_counts)
        release_entity(ints, floats, s, events, buckets, novelty, False, False)


@numba.njit(cache=True, nogil=True)
def evict_idle(tables: Tables, kind: int, slots: npt.NDArray[np.int64]) -> None:
    """Free the given entity slots of one kind (the sweep has decided they are past the TTL)."""
    events = tables.events[kind]
    buckets = tables.buckets[min(kind, 1)]
    pairs = tables.pairs[max(kind - 2, 0)]
    pair_counts = tables.pair_counts[max(kind - 2, 0)]
    for s in slots:
        if kind >= MERCHANT:
            forget_pairs(events, tables.ints[kind], s, pairs, pair_counts)
        release_entity(
            tables.ints[kind], tables.floats[kind], s, events, buckets, tables.novelty,
            kind < 2, kind == CARD,
        )  # fmt: skip
        remove_key(tables.keys[kind], s)
