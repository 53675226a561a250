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
    LAST_LAT,
    LAST_LOC_SEQ,
    LAST_LOC_TS,
    LAST_LON,
    LAST_TS,
    N_FLOAT_COLUMNS,
    NEVER,
    SQUARES_HI,
    SQUARES_LO,
    SUM_HI,
    SUM_LO,
    US_PER_HOUR,
    US_PER_SECOND,
    W_COUNT,
    drop_expired,
    haversine_km,
    wcol,
)
from fraudstream.core.features.keys import KeyTable
from fraudstream.core.features.moments import mean_and_variance, with_amount
from fraudstream.core.features.pool import (
    NO_CHUNK,
    NO_TIME,
    PREV,
    Pool,
    append_event,
    claim_record,
)
from fraudstream.core.features.sliding import (
    add_event,
    advance,
    drop_old_events,
    find_self,
    move_windows,
    newest_time,
)

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
def _bucket_totals(
    buckets: Pool,
    ei: npt.NDArray[np.int64],
    s: int,
    t: int,
    amount: float,
    replay: bool,
    windows: npt.NDArray[np.int64],
    n_exact: int,
    bucket: int,
    out: npt.NDArray[np.float64],
    base: int,
) -> None:
    """Counts and sums of the bucketed (longer than a day) windows, from the bucket chain."""
    n_windows = windows.shape[0]
    for w in range(n_exact, n_windows):
        out[base + w] = 0.0
        out[base + n_windows + w] = 0.0
    current = (t // bucket) * bucket
    chunk = ei[s, BK_HEAD]
    while chunk != NO_CHUNK:
        for j in range(buckets.m[chunk, 0]):
            start = buckets.i[chunk, j, 0]
            if start > current:
                continue
            for w in range(n_exact, n_windows):
                if start > current - windows[w]:
                    out[base + w] += buckets.i[chunk, j, B_COUNT]
                    out[base + n_windows + w] += buckets.f[chunk, j, B_SUM]
        chunk = buckets.m[chunk, 1]
    if not replay:  # a replayed event is already inside its bucket
        for w in range(n_exact, n_windows):
            out[base + w] += 1.0
            out[base + n_windows + w] += amount


@numba.njit(cache=True, nogil=True, inline="always")
def _exact_totals(
    events: Pool,
    ei: npt.NDArray[np.int64],
    ef: npt.NDArray[np.float64],
    s: int,
    t: int,
    amount: float,
    self_chunk: int,
    self_j: int,
    windows: npt.NDArray[np.int64],
    n_exact: int,
    out: npt.NDArray[np.float64],
    base: int,
    saved: npt.NDArray[np.float64],
    pairs: KeyTable,
    pair_counts: npt.NDArray[np.int64],
) -> None:
    """Counts and sums of the exact windows from the running totals (`sliding.py`).

    For an event older than the entity's newest the totals are moved to its windows, read,
    and put back as they were (`saved` holds them: putting back by subtraction could leave
    float residue in the sums)."""
    n_windows = windows.shape[0]
    newest = newest_time(events, ei, s)
    late = newest != NO_TIME and t < newest
    if late:
        for w in range(n_exact):
            saved[w] = ei[s, wcol(w, W_COUNT)]
            saved[n_exact + w] = ef[s, N_FLOAT_COLUMNS + w]
        move_windows(events, ei, ef, s, t, windows, n_exact, pairs, pair_counts, False, 1)
    else:
        advance(events, ei, ef, s, t, windows, n_exact, pairs, pair_counts, False)
    for w in range(n_exact):
        count = float(ei[s, wcol(w, W_COUNT)])
        total = ef[s, N_FLOAT_COLUMNS + w] + amount
        if self_chunk == NO_CHUNK:
            count += 1.0
        else:  # a replay: its stored event stands for it
            total -= events.f[self_chunk, self_j, 3]
        out[base + w] = count
        out[base + n_windows + w] = total
    if late:
        for w in range(n_exact):
            ei[s, wcol(w, W_COUNT)] = int(saved[w])
            ef[s, N_FLOAT_COLUMNS + w] = saved[n_exact + w]


@numba.njit(cache=True, nogil=True, inline="always")
def _previous_events(
    events: Pool,
    ei: npt.NDArray[np.int64],
    ef: npt.NDArray[np.float64],
    s: int,
    t: int,
    txh: int,
    self_chunk: int,
    self_j: int,
    prev: npt.NDArray[np.int64],
    prev_loc: npt.NDArray[np.float64],
) -> None:
    """The previous event (prev = [ts, seq]) and previous located event (prev_loc = [ts,
    seq, lat, lon] as floats, ts NEVER for none): the newest at or before t, not itself.

    Walking back from the newest, the previous event is found past the events later than t
    (none, unless this one is late). The previous located one is the entity's newest located
    event unless that is later than t or is this very event; only then is it searched for.
    """
    prev[0] = ei[s, EVICTED_TS]
    prev[1] = ei[s, EVICTED_SEQ]
    tail = ei[s, EV_TAIL]
    chunk, j = NO_CHUNK, 0
    if tail != NO_CHUNK:
        chunk, j = _newest_at_or_before(events, tail, events.m[tail, 0] - 1, t, txh)
    if chunk != NO_CHUNK:
        prev[0] = events.i[chunk, j, 0]
        prev[1] = events.i[chunk, j, 2]
    last_loc = ei[s, LAST_LOC_TS]
    is_self = self_chunk != NO_CHUNK and ei[s, LAST_LOC_SEQ] == events.i[self_chunk, self_j, 2]
    if last_loc != NO_TIME and last_loc <= t and not is_self:
        prev_loc[0] = float(last_loc)
        prev_loc[1] = float(ei[s, LAST_LOC_SEQ])
        prev_loc[2] = ef[s, LAST_LAT]
        prev_loc[3] = ef[s, LAST_LON]
        return
    while chunk != NO_CHUNK:
        if not math.isnan(events.f[chunk, j, 4]):
            prev_loc[0] = float(events.i[chunk, j, 0])
            prev_loc[1] = float(events.i[chunk, j, 2])
            prev_loc[2] = events.f[chunk, j, 4]
            prev_loc[3] = events.f[chunk, j, 5]
            return
        chunk, j = _step_back(events, chunk, j)
        chunk, j = _newest_at_or_before(events, chunk, j, t, txh)
    has_evicted_loc = ei[s, EVICTED_LOC_TS] != NO_TIME
    prev_loc[0] = float(ei[s, EVICTED_LOC_TS]) if has_evicted_loc else NEVER
    prev_loc[1] = float(ei[s, EVICTED_LOC_SEQ])
    prev_loc[2] = ef[s, EVICTED_LAT]
    prev_loc[3] = ef[s, EVICTED_LON]


@numba.njit(cache=True, nogil=True, inline="always")
def _step_back(events: Pool, chunk: int, j: int) -> tuple[int, int]:
    """The position before (chunk, j) in the chain, or (NO_CHUNK, 0)."""
    if j > 0:
        return chunk, j - 1
    chunk = events.m[chunk, PREV]
    if chunk == NO_CHUNK:
        return NO_CHUNK, 0
    return chunk, int(events.m[chunk, 0] - 1)


@numba.njit(cache=True, nogil=True, inline="always")
def _newest_at_or_before(events: Pool, chunk: int, j: int, t: int, txh: int) -> tuple[int, int]:
    """From (chunk, j) backwards: the first event at or before t that is not `txh`."""
    while chunk != NO_CHUNK and (events.i[chunk, j, 0] > t or events.i[chunk, j, 1] == txh):
        chunk, j = _step_back(events, chunk, j)
    return chunk, j


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
    pairs: KeyTable,
    pair_counts: npt.NDArray[np.int64],
) -> None:
    """Write one paying entity's features for one event into out[base:base + width].

    A null entity (slot -1) gets all-null features. `pairs` and `pair_counts` are a place
    kind's (the sliding-window helpers take them; paying entities never touch them)."""
    n_windows = windows.shape[0]
    if s < 0:
        out[base : base + account_width(n_windows)] = np.nan
        return
    self_chunk, self_j = find_self(events, ei, s, t, txh)
    _exact_totals(
        events, ei, ef, s, t, amount, self_chunk, self_j, windows, n_exact, out, base,
        scratch, pairs, pair_counts,
    )  # fmt: skip
    if n_windows > n_exact:
        _bucket_totals(buckets, ei, s, t, amount, replay, windows, n_exact, bucket, out, base)
    prev_loc = scratch[2 * n_windows : 2 * n_windows + 4]
    _previous_events(events, ei, ef, s, t, txh, self_chunk, self_j, prev_scratch, prev_loc)
    _amount_profile(ei, ef, s, amount, replay, out, base + 2 * n_windows)
    _previous_transaction(t, lat, lon, prev_scratch, prev_loc, out, base + 2 * n_windows + 3)


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
    windows: npt.NDArray[np.int64],
    n_exact: int,
    pairs: KeyTable,
    pair_counts: npt.NDArray[np.int64],
) -> None:
    """Add an accepted event to a paying entity's history and its windows' totals."""
    drop_old_events(events, ei, ef, s, event_horizon, n_exact, pairs, pair_counts, False)
    newest = newest_time(events, ei, s)
    chunk, j = append_event(events, ei[s, EV_HEAD : EV_TAIL + 1], t, txh, seq, amount, lat, lon)
    add_event(events, chunk, j, ei, ef, s, newest, windows, n_exact, pairs, pair_counts, False)
    if not math.isnan(lat) and t >= ei[s, LAST_LOC_TS]:
        ei[s, LAST_LOC_TS] = t
        ei[s, LAST_LOC_SEQ] = seq
        ef[s, LAST_LAT] = lat
        ef[s, LAST_LON] = lon
    if has_buckets:
        drop_expired(buckets, ei, s, BK_HEAD, bucket_horizon)
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
