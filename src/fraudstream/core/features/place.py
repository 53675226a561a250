"""Kernels for paid entities (merchant, terminal): transaction count and distinct paying cards
per window, from the running totals of `sliding.py`. Distinct counts are exact: every
(place, card) pair in the chain has its count per window."""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from fraudstream.core.features.kernels import (
    EV_HEAD,
    EV_TAIL,
    LAST_TS,
    W_COUNT,
    W_DISTINCT,
    wcol,
)
from fraudstream.core.features.keys import KeyTable
from fraudstream.core.features.pool import NO_CHUNK, NO_TIME, Pool, append_event
from fraudstream.core.features.sliding import (
    add_event,
    advance,
    card_in_window,
    drop_old_events,
    find_self,
    move_windows,
    newest_time,
)


@numba.njit(cache=True, nogil=True, inline="always")
def place_features(
    events: Pool,
    ei: npt.NDArray[np.int64],
    ef: npt.NDArray[np.float64],
    s: int,
    t: int,
    txh: int,
    payer: int,
    windows: npt.NDArray[np.int64],
    out: npt.NDArray[np.float64],
    base: int,
    pairs: KeyTable,
    pair_counts: npt.NDArray[np.int64],
) -> None:
    """Write counts then distinct-card counts for each window into out[base:].

    A replay (the same transaction at the same time already in the chain) is counted by its
    stored event; any other event counts itself, and its card when the card is not yet in
    the window."""
    n_windows = windows.shape[0]
    if s < 0:  # a null merchant or terminal: all-null features
        out[base : base + 2 * n_windows] = np.nan
        return
    self_chunk, _ = find_self(events, ei, s, t, txh)
    newest = newest_time(events, ei, s)
    late = newest != NO_TIME and t < newest
    if late:
        move_windows(events, ei, ef, s, t, windows, n_windows, pairs, pair_counts, True, 1)
    else:
        advance(events, ei, ef, s, t, windows, n_windows, pairs, pair_counts, True)
    for w in range(n_windows):
        count = ei[s, wcol(w, W_COUNT)]
        distinct = ei[s, wcol(w, W_DISTINCT)]
        if self_chunk == NO_CHUNK:
            count += 1
            if not card_in_window(pairs, pair_counts, s, payer, w):
                distinct += 1
        out[base + w] = float(count)
        out[base + n_windows + w] = float(distinct)
    if late:
        move_windows(events, ei, ef, s, t, windows, n_windows, pairs, pair_counts, True, -1)


@numba.njit(cache=True, nogil=True, inline="always")
def apply_place(
    events: Pool,
    ei: npt.NDArray[np.int64],
    ef: npt.NDArray[np.float64],
    s: int,
    t: int,
    txh: int,
    payer: int,
    horizon: int,
    windows: npt.NDArray[np.int64],
    pairs: KeyTable,
    pair_counts: npt.NDArray[np.int64],
) -> None:
    n_windows = windows.shape[0]
    drop_old_events(events, ei, ef, s, horizon, n_windows, pairs, pair_counts, True)
    newest = newest_time(events, ei, s)
    chain = ei[s, EV_HEAD : EV_TAIL + 1]
    chunk, j = append_event(events, chain, t, txh, payer, 0.0, np.nan, np.nan)
    add_event(events, chunk, j, ei, ef, s, newest, windows, n_windows, pairs, pair_counts, True)
    ei[s, LAST_TS] = max(ei[s, LAST_TS], t)
