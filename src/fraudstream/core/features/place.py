"""Kernels for paid entities (merchant, terminal): transaction count and distinct paying cards
per window. Distinct counts are exact: every card hash in the window is kept in a hash set."""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from fraudstream.core.features.kernels import EV_HEAD, EV_TAIL, LAST_TS, drop_expired
from fraudstream.core.features.pool import NO_CHUNK, Pool, append_event, chain_length


@numba.njit(cache=True, nogil=True, inline="always")
def place_features(
    events: Pool,
    ei: npt.NDArray[np.int64],
    s: int,
    t: int,
    txh: int,
    payer: int,
    windows: npt.NDArray[np.int64],
    out: npt.NDArray[np.float64],
    base: int,
    scratch: npt.NDArray[np.int64],
    generation: npt.NDArray[np.int64],
    span: int,
) -> None:
    """Write counts then distinct-card counts for each window into out[base:].

    One pass over the place's history: each event in the longest window counts in the
    smallest window holding it, and each card is kept once, with the smallest window it was
    seen in, in a scratch hash set; prefix sums over the windows then give every window's
    figures. Linear in the history (a busy terminal sees hundreds of events a day), where
    sorting the cards per window was not. `scratch` is (4, at least `span`), the part of it
    in use is `span` = `place_span(...)` wide, and `generation` stamps its entries, so the
    set never needs clearing.
    """
    n_windows = windows.shape[0]
    if s < 0:  # a null merchant or terminal: all-null features
        out[base : base + 2 * n_windows] = np.nan
        return
    generation[0] += 1
    out[base : base + 2 * n_windows] = 0.0
    longest = windows[n_windows - 1]
    mask = span - 1
    cards = _visit(scratch, mask, generation[0], 0, payer, 0, windows, out, base)
    chunk = ei[s, EV_HEAD]
    while chunk != NO_CHUNK:
        for j in range(events.m[chunk, 0]):
            e_ts = events.i[chunk, j, 0]
            if events.i[chunk, j, 1] == txh or e_ts > t or t - e_ts >= longest:
                continue
            card, age = events.i[chunk, j, 2], t - e_ts
            cards = _visit(scratch, mask, generation[0], cards, card, age, windows, out, base)
        chunk = events.m[chunk, 1]
    for k in range(cards):
        out[base + n_windows + scratch[2, scratch[3, k]]] += 1.0
    for w in range(1, n_windows):
        out[base + w] += out[base + w - 1]
        out[base + n_windows + w] += out[base + n_windows + w - 1]


@numba.njit(cache=True, nogil=True, inline="always")
def place_span(events: Pool, ei: npt.NDArray[np.int64], s: int) -> int:
    """The width of distinct-card set a place's features need: a power of two at least
    twice its history (plus the event itself), so probes stay short; small sets stay in a
    few cache lines."""
    if s < 0:
        return 16
    size = chain_length(events, ei[s, EV_HEAD]) + 1
    span = 16
    while span < 2 * size:
        span *= 2
    return span


@numba.njit(cache=True, nogil=True, inline="always")
def _visit(
    scratch: npt.NDArray[np.int64],
    mask: int,
    stamp: int,
    cards: int,
    card: int,
    age: int,
    windows: npt.NDArray[np.int64],
    out: npt.NDArray[np.float64],
    base: int,
) -> int:
    """Count one event in its smallest window and note its card; returns the cards noted."""
    w = 0
    while age >= windows[w]:
        w += 1
    out[base + w] += 1.0
    at = (card >> 1) & mask
    while scratch[1, at] == stamp:
        if scratch[0, at] == card:
            scratch[2, at] = min(scratch[2, at], w)
            return cards
        at = (at + 1) & mask
    scratch[0, at] = card
    scratch[1, at] = stamp
    scratch[2, at] = w
    scratch[3, cards] = at
    return cards + 1


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
) -> None:
    drop_expired(events, ei, ef, s, EV_HEAD, horizon, False)
    append_event(events, ei[s, EV_HEAD : EV_TAIL + 1], t, txh, payer, 0.0, np.nan, np.nan)
    ei[s, LAST_TS] = max(ei[s, LAST_TS], t)
