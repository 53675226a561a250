"""Kernels for paid entities (merchant, terminal): transaction count and distinct paying cards
per window. Distinct counts are exact: the window's card hashes are sorted and counted."""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from fraudstream.core.features.kernels import EV_HEAD, EV_TAIL, LAST_TS, drop_expired
from fraudstream.core.features.pool import NO_CHUNK, Pool, append_record, chain_length


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
) -> None:
    """Write counts then distinct-card counts for each window into out[base:].

    `scratch` has shape (3, capacity); a busier entity gets a fresh, larger buffer.
    """
    n_windows = windows.shape[0]
    if s < 0:  # a null merchant or terminal: all-null features
        out[base : base + 2 * n_windows] = np.nan
        return
    longest = windows[n_windows - 1]
    size = chain_length(events, ei[s, EV_HEAD]) + 1
    if size > scratch.shape[1]:
        scratch = np.empty((3, size), np.int64)
    ages = scratch[0]
    payers = scratch[1]
    selected = scratch[2]
    m = 0
    chunk = ei[s, EV_HEAD]
    while chunk != NO_CHUNK:
        for j in range(events.m[chunk, 0]):
            e_ts = events.i[chunk, j, 0]
            if events.i[chunk, j, 1] == txh or e_ts > t or t - e_ts >= longest:
                continue
            ages[m] = t - e_ts
            payers[m] = events.i[chunk, j, 2]
            m += 1
        chunk = events.m[chunk, 1]
    ages[m] = 0
    payers[m] = payer
    m += 1
    for w in range(n_windows):
        k = 0
        for j in range(m):
            if ages[j] < windows[w]:
                selected[k] = payers[j]
                k += 1
        out[base + w] = k
        out[base + n_windows + w] = _distinct(selected[:k])


@numba.njit(cache=True, nogil=True, inline="always")
def _distinct(values: npt.NDArray[np.int64]) -> int:
    if values.shape[0] == 0:
        return 0
    ordered = values.copy()
    ordered.sort()
    distinct = 1
    for j in range(1, ordered.shape[0]):
        if ordered[j] != ordered[j - 1]:
            distinct += 1
    return distinct


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
    append_record(events, ei[s, EV_HEAD : EV_TAIL + 1], t, txh, payer, 0.0, np.nan, np.nan)
    ei[s, LAST_TS] = max(ei[s, LAST_TS], t)
