"""Kernels for paying entities (card, customer): windows, amount profile, previous transaction,
and the card's first-seen values. Output rows use NaN for null."""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

from fraudstream.core.features.kernels import (
    BK_HEAD,
    BK_TAIL,
    COUNT,
    EV_HEAD,
    EV_TAIL,
    EVICTED_LAT,
    EVICTED_LOC_SEQ,
    EVICTED_LOC_TS,
    EVICTED_LON,
    EVICTED_SEQ,
    EVICTED_TS,
    LAST_TS,
    NEVER,
    SQUARES_HI,
    SQUARES_LO,
    SUM_HI,
    SUM_LO,
    US_PER_HOUR,
    US_PER_SECOND,
    drop_expired,
    haversine_km,
)
from fraudstream.core.features.moments import mean_and_variance, with_amount
from fraudstream.core.features.pool import NO_CHUNK, Pool, append_event, claim_record

MIN_STD = 1e-4
"""A deviation below a hundredth of a cent is no real spread (amounts equal up to rounding):
it counts as 0, so the z-score is null rather than astronomically large."""
BUCKET_RECORD_FIELDS = 3
"""A bucket record: start time (field 0), event count (1, int) and amount sum (2, float)."""
B_COUNT, B_SUM = 1, 2
ACCOUNT_SCALARS = 6
"""mean, std, zscore, seconds since previous, distance and speed from the previous location."""


@numba.njit(cache=True, nogil=True, inline="always")
def account_width(n_windows: int) -> int:
    return 2 * n_windows + ACCOUNT_SCALARS


@numba.njit(cache=True, nogil=True, inline="always")
def _window_totals(
    events: Pool,
    buckets: Pool,
    ei: npt.NDArray[np.int64],
    s: int,
    t: int,
    amount: float,
    txh: int,
    replay: bool,
    windows: npt.NDArray[np.int64],
    n_exact: int,
    bucket: int,
    counts: npt.NDArray[np.float64],
    sums: npt.NDArray[np.float64],
    prev: npt.NDArray[np.int64],
    prev_loc: npt.NDArray[np.float64],
) -> None:
    """Window counts and sums, and the previous (located) event, in one walk of the history.

    prev = [ts, seq] of the previous event; prev_loc = [ts, seq, lat, lon] of the previous
    located one (as floats; ts of NEVER when there is none).
    """
    n_windows = windows.shape[0]
    counts[:] = 0.0
    sums[:] = 0.0
    chunk = ei[s, EV_HEAD]
    while chunk != NO_CHUNK:
        for j in range(events.m[chunk, 0]):
            if events.i[chunk, j, 1] == txh:
                continue
            e_ts = events.i[chunk, j, 0]
            if e_ts > t:
                continue
            age = t - e_ts
            for w in range(n_exact):
                if age < windows[w]:
                    counts[w] += 1.0
                    sums[w] += events.f[chunk, j, 3]
            seq = events.i[chunk, j, 2]
            if e_ts > prev[0] or (e_ts == prev[0] and seq > prev[1]):
                prev[0] = e_ts
                prev[1] = seq
            if not math.isnan(events.f[chunk, j, 4]) and (
                e_ts > prev_loc[0] or (e_ts == prev_loc[0] and seq > prev_loc[1])
            ):
                prev_loc[0] = e_ts
                prev_loc[1] = seq
                prev_loc[2] = events.f[chunk, j, 4]
                prev_loc[3] = events.f[chunk, j, 5]
        chunk = events.m[chunk, 1]
    for w in range(n_exact):
        counts[w] += 1.0
        sums[w] += amount
    if n_windows == n_exact:
        return
    current = (t // bucket) * bucket
    chunk = ei[s, BK_HEAD]
    while chunk != NO_CHUNK:
        for j in range(buckets.m[chunk, 0]):
            start = buckets.i[chunk, j, 0]
            if start > current:
                continue
            for w in range(n_exact, n_windows):
                if start > current - windows[w]:
                    counts[w] += buckets.i[chunk, j, B_COUNT]
                    sums[w] += buckets.f[chunk, j, B_SUM]
        chunk = buckets.m[chunk, 1]
    if not replay:  # a replayed event is already inside its bucket
        for w in range(n_exact, n_windows):
            counts[w] += 1.0
            sums[w] += amount


@numba.njit(cache=True, nogil=True, inline="always")
def account_features(
    events: Pool,
    buckets: Pool,
    ei: npt.NDArray[np.int64],
    ef: npt.NDArray[np.float64],
    s: int,
    t: int,
    amount: float,
    txh: int,
    lat: float,
    lon: float,
    replay: bool,
    windows: npt.NDArray[np.int64],
    n_exact: int,
    bucket: int,
    out: npt.NDArray[np.float64],
    base: int,
    scratch: npt.NDArray[np.float64],
    prev_scratch: npt.NDArray[np.int64],
) -> None:
    """Write one paying entity's features for one event into out[base:base + width].

    A null entity (slot -1) gets all-null features."""
    n_windows = windows.shape[0]
    if s < 0:
        out[base : base + account_width(n_windows)] = np.nan
        return
    counts = scratch[:n_windows]
    sums = scratch[n_windows : 2 * n_windows]
    prev = prev_scratch
    prev[0] = ei[s, EVICTED_TS]
    prev[1] = ei[s, EVICTED_SEQ]
    prev_loc = scratch[2 * n_windows : 2 * n_windows + 4]
    has_evicted_loc = ei[s, EVICTED_LOC_TS] != np.iinfo(np.int64).min
    prev_loc[0] = float(ei[s, EVICTED_LOC_TS]) if has_evicted_loc else NEVER
    prev_loc[1] = float(ei[s, EVICTED_LOC_SEQ])
    prev_loc[2] = ef[s, EVICTED_LAT]
    prev_loc[3] = ef[s, EVICTED_LON]
    _window_totals(
        events, buckets, ei, s, t, amount, txh, replay, windows, n_exact, bucket,
        counts, sums, prev, prev_loc,
    )  # fmt: skip
    for w in range(n_windows):
        out[base + w] = counts[w]
        out[base + n_windows + w] = sums[w]
    _amount_profile(ei, ef, s, amount, replay, out, base + 2 * n_windows)
    _previous_transaction(t, lat, lon, prev, prev_loc, out, base + 2 * n_windows + 3)


@numba.njit(cache=True, nogil=True, inline="always")
def _amount_profile(
    ei: npt.NDArray[np.int64],
    ef: npt.NDArray[np.float64],
    s: int,
    amount: float,
    replay: bool,
    out: npt.NDArray[np.float64],
    at: int,
) -> None:
    """Mean, sample deviation and z-score of the amount against the entity's own history
    (for a replay: every accepted event but itself)."""
    n = float(ei[s, COUNT])
    sums = (ef[s, SUM_HI], ef[s, SUM_LO], ef[s, SQUARES_HI], ef[s, SQUARES_LO])
    if replay and n > 0:
        sums = with_amount(sums[0], sums[1], sums[2], sums[3], amount, -1.0)
        n -= 1.0
    if n < 1:
        out[at : at + 3] = np.nan
        return
    mean, variance = mean_and_variance(n, sums[0], sums[1], sums[2], sums[3])
    out[at] = mean
    std = math.sqrt(variance) if n >= 2 else np.nan
    if n >= 2 and std < MIN_STD:
        std = 0.0
    out[at + 1] = std
    out[at + 2] = (amount - mean) / std if n >= 2 and std > 0 else np.nan


@numba.njit(cache=True, nogil=True, inline="always")
def _previous_transaction(
    t: int,
    lat: float,
    lon: float,
    prev: npt.NDArray[np.int64],
    prev_loc: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
    at: int,
) -> None:
    has_prev = prev[0] != np.iinfo(np.int64).min
    out[at] = (t - prev[0]) / US_PER_SECOND if has_prev else np.nan
    if math.isnan(lat) or prev_loc[0] == NEVER:
        out[at + 1] = np.nan
        out[at + 2] = np.nan
        return
    km = haversine_km(prev_loc[2], prev_loc[3], lat, lon)
    elapsed = max(float(t) - prev_loc[0], float(US_PER_SECOND))
    out[at + 1] = km
    out[at + 2] = km / (elapsed / US_PER_HOUR)


@numba.njit(cache=True, nogil=True, inline="always")
def apply_account(
    events: Pool,
    buckets: Pool,
    ei: npt.NDArray[np.int64],
    ef: npt.NDArray[np.float64],
    s: int,
    t: int,
    amount: float,
    txh: int,
    seq: int,
    lat: float,
    lon: float,
    has_buckets: bool,
    bucket: int,
    event_horizon: int,
    bucket_horizon: int,
) -> None:
    """Add an accepted event to a paying entity's history."""
    drop_expired(events, ei, ef, s, EV_HEAD, event_horizon, True)
    append_event(events, ei[s, EV_HEAD : EV_TAIL + 1], t, txh, seq, amount, lat, lon)
    if has_buckets:
        drop_expired(buckets, ei, ef, s, BK_HEAD, bucket_horizon, False)
        _add_to_bucket(buckets, ei, s, (t // bucket) * bucket, amount)
    sums = with_amount(ef[s, SUM_HI], ef[s, SUM_LO], ef[s, SQUARES_HI], ef[s, SQUARES_LO],
                       amount, 1.0)  # fmt: skip
    ef[s, SUM_HI], ef[s, SUM_LO], ef[s, SQUARES_HI], ef[s, SQUARES_LO] = sums
    ei[s, COUNT] += 1
    ei[s, LAST_TS] = max(ei[s, LAST_TS], t)


@numba.njit(cache=True, nogil=True, inline="always")
def _add_to_bucket(
    buckets: Pool, ei: npt.NDArray[np.int64], s: int, start: int, amount: float
) -> None:
    """Add to the bucket starting at `start`: nearly always the newest, so the tail chunk is
    searched first and the whole chain only when it is not there."""
    tail = ei[s, BK_TAIL]
    if tail != NO_CHUNK and _add_in_chunk(buckets, tail, start, amount):
        return
    chunk = ei[s, BK_HEAD]
    while chunk != NO_CHUNK and chunk != tail:  # noqa: PLR1714 (numba: plain compares)
        if _add_in_chunk(buckets, chunk, start, amount):
            return
        chunk = buckets.m[chunk, 1]
    chunk, j = claim_record(buckets, ei[s, BK_HEAD : BK_TAIL + 1], start)
    buckets.i[chunk, j, B_COUNT] = 1
    buckets.f[chunk, j, B_SUM] = amount


@numba.njit(cache=True, nogil=True, inline="always")
def _add_in_chunk(buckets: Pool, chunk: int, start: int, amount: float) -> bool:
    for j in range(buckets.m[chunk, 0] - 1, -1, -1):
        if buckets.i[chunk, j, 0] == start:
            buckets.i[chunk, j, B_COUNT] += 1
            buckets.f[chunk, j, B_SUM] += amount
            return True
    return False
