"""The compiled per-event state walk: features for each event, then the state update.

Events of a batch are visited in order (state is sequential per key); for each one the kernel
reads the histories of its card, customer, merchant and terminal, writes the event's features
into one row of the output matrix (NaN = null), and, unless the event is too late or a replay,
appends it to those histories. The semantics are spelled out in `config.py`; this file is only
the fast way to compute them.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

from fraudstream.core.features.pool import (
    NO_CHUNK,
    NO_TIME,
    Pool,
    free_chain,
    release_chunk,
)

# Integer entity columns.
EV_HEAD, EV_TAIL, BK_HEAD, BK_TAIL, NV_HEAD, NV_TAIL = 0, 1, 2, 3, 4, 5
LAST_TS, ACTIVE, COUNT = 6, 7, 8
EVICTED_TS, EVICTED_SEQ, EVICTED_LOC_TS, EVICTED_LOC_SEQ = 9, 10, 11, 12
LAST_LOC_TS, LAST_LOC_SEQ = 13, 14
N_INT_COLUMNS = 15
"""Columns every entity has; the sliding windows' columns follow (`window_columns`)."""
W_COUNT, W_CURSOR, W_DISTINCT = 0, 1, 2
W_STRIDE = 3
"""Per exact window: events in it, the chunk its oldest event is in, distinct paying cards."""
# Float entity columns.
SUM_HI, SUM_LO, SQUARES_HI, SQUARES_LO, EVICTED_LAT, EVICTED_LON = 0, 1, 2, 3, 4, 5
LAST_LAT, LAST_LON = 6, 7
N_FLOAT_COLUMNS = 8
"""Columns every entity has; the sum of amounts in each exact window follows."""


def window_columns(n_windows: int) -> tuple[int, int]:
    """(int columns, float columns) of an entity row with `n_windows` sliding windows."""
    return N_INT_COLUMNS + W_STRIDE * n_windows, N_FLOAT_COLUMNS + n_windows


@numba.njit(cache=True, nogil=True, inline="always")
def wcol(w: int, field: int) -> int:
    """The int column of field `field` (W_COUNT, ...) of sliding window `w`."""
    return N_INT_COLUMNS + W_STRIDE * w + field


# Parameters, one int64 array so the kernel signature stays short.
P_LATENESS, P_TTL, P_BUCKET, P_EVENT_RETENTION, P_BUCKET_RETENTION = 0, 1, 2, 3, 4
# Meta counters kept between batches.
M_WATERMARK, M_HAS_WATERMARK, M_SEQUENCE, M_LATE, M_REPLAYED = 0, 1, 2, 3, 4

EARTH_RADIUS_KM = 6371.0088
US_PER_HOUR = 3_600_000_000.0
US_PER_SECOND = 1_000_000
NEVER = -9.0e18


@numba.njit(cache=True, nogil=True, inline="always")
def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


@numba.njit(cache=True, nogil=True, inline="always")
def reset_entity(ei: npt.NDArray[np.int64], ef: npt.NDArray[np.float64], s: int) -> None:
    ei[s, EV_HEAD : NV_TAIL + 1] = NO_CHUNK
    ei[s, LAST_TS] = NO_TIME
    ei[s, ACTIVE] = 1
    ei[s, COUNT] = 0
    ei[s, EVICTED_TS] = NO_TIME
    ei[s, EVICTED_SEQ] = NO_TIME
    ei[s, EVICTED_LOC_TS] = NO_TIME
    ei[s, EVICTED_LOC_SEQ] = NO_TIME
    ei[s, LAST_LOC_TS] = NO_TIME
    ei[s, LAST_LOC_SEQ] = NO_TIME
    for c in range(N_INT_COLUMNS, ei.shape[1]):
        ei[s, c] = NO_CHUNK if (c - N_INT_COLUMNS) % W_STRIDE == W_CURSOR else 0
    ef[s, :] = 0.0


@numba.njit(cache=True, nogil=True, inline="always")
def release_entity(
    ei: npt.NDArray[np.int64],
    ef: npt.NDArray[np.float64],
    s: int,
    events: Pool,
    buckets: Pool,
    novelty: Pool,
    has_buckets: bool,
    has_novelty: bool,
) -> None:
    """Free every chain of entity slot `s` and clear it (TTL reset or eviction)."""
    free_chain(events, ei[s, EV_HEAD : EV_TAIL + 1])
    if has_buckets:
        free_chain(buckets, ei[s, BK_HEAD : BK_TAIL + 1])
    if has_novelty:
        free_chain(novelty, ei[s, NV_HEAD : NV_TAIL + 1])
    reset_entity(ei, ef, s)


@numba.njit(cache=True, nogil=True, inline="always")
def drop_expired(
    pool: Pool,
    ei: npt.NDArray[np.int64],
    s: int,
    head_col: int,
    horizon: int,
) -> None:
    """Unlink and free the leading chunks of a bucket chain whose records are all older than
    `horizon` (event chains have their own, `sliding.drop_old_events`).

    Only a prefix is dropped: chains are in processing order, so older chunks come first and
    the walk stops at the first live one (usually the head) instead of visiting every chunk
    on every event. An expired chunk behind a live one waits its turn; readers filter by time,
    so that only delays freeing memory.
    """
    chunk = ei[s, head_col]
    while chunk != NO_CHUNK and pool.m[chunk, 2] < horizon:
        following = pool.m[chunk, 1]
        ei[s, head_col] = following
        if ei[s, head_col + 1] == chunk:
            ei[s, head_col + 1] = NO_CHUNK
        release_chunk(pool, chunk)
        chunk = following
