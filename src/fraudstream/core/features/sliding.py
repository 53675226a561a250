"""Sliding windows with bounded work per event: running totals instead of a walk of the history.

An entity's event chain is sorted by time (`pool.insert_record`). For each exact window of
length w the entity row keeps the totals over the events with time in (M - w, M], M being
the newest event's time: how many (`W_COUNT`), their amount sum (float column), and for a
merchant or terminal how many distinct paying cards (`W_DISTINCT`), plus a cursor: the chunk
where that window's oldest event lies (every chunk before it is older than the window).

* An event at t >= M (in order, nearly every event) first moves every window's start up to
  t - w, taking out the events it passes (`advance`); each event is taken out of each window
  once, so the work is amortised O(windows) per event whatever the window's length.
* An event at t < M (late for this entity, by at most the allowed lateness) needs the totals
  over (t - w, t] instead. Those differ from the kept ones only by the events in two bands as
  wide as M - t: (t - w, M - w] just before each window and (t, M] at the newest end.
  `move_windows` shifts the totals across the bands, in place, and shifts them back after
  the features are read. Work is bounded by the events in the bands, not the window.
* Distinct cards use one more table per place kind: per (place, card) pair, how many of the
  pair's events are in each window, plus how many are in the chain at all (the pair is
  forgotten when its last event leaves the chain). A card joins a window's distinct count
  when its count there goes 0 -> 1 and leaves it on 1 -> 0.

A pair is keyed by a 64-bit mix of the place's slot and the card's hash, the same trade as
identity by hash elsewhere (`keys.py`).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

from fraudstream.core.features.kernels import (
    EV_HEAD,
    EV_TAIL,
    EVICTED_LAT,
    EVICTED_LOC_SEQ,
    EVICTED_LOC_TS,
    EVICTED_LON,
    EVICTED_SEQ,
    EVICTED_TS,
    N_FLOAT_COLUMNS,
    W_COUNT,
    W_CURSOR,
    W_DISTINCT,
    wcol,
)
from fraudstream.core.features.keys import KeyTable, add_key, find_slot, remove_key
from fraudstream.core.features.pool import NO_CHUNK, NO_TIME, PREV, Pool, release_chunk

PAIR_REFS = 0
"""Pair-count column: the pair's events in the place's chain; window w's count is 1 + w."""
_PAIR_MIX = np.int64(-7046029254386353131)  # 0x9E3779B97F4A7C15 as a signed 64-bit number


@numba.njit(cache=True, nogil=True, inline="always")
def pair_key(place: int, card: int) -> int:
    """The pair's key: odd (a key table's keys are non-zero), mixing the place slot in."""
    return int((card ^ ((place + 1) * _PAIR_MIX)) | 1)


@numba.njit(cache=True, nogil=True, inline="always")
def newest_time(events: Pool, ei: npt.NDArray[np.int64], s: int) -> int:
    """Time of the entity's newest event (the chain is sorted), or NO_TIME for none."""
    tail = ei[s, EV_TAIL]
    if tail == NO_CHUNK:
        return NO_TIME
    return int(events.i[tail, events.m[tail, 0] - 1, 0])


@numba.njit(cache=True, nogil=True, inline="always")
def count_record(
    events: Pool,
    chunk: int,
    j: int,
    ei: npt.NDArray[np.int64],
    ef: npt.NDArray[np.float64],
    s: int,
    w: int,
    sign: int,
    pairs: KeyTable,
    pair_counts: npt.NDArray[np.int64],
    is_place: bool,
) -> None:
    """Add (sign 1) or take out (-1) one event of the chain to or from window w's totals."""
    ei[s, wcol(w, W_COUNT)] += sign
    if not is_place:
        ef[s, N_FLOAT_COLUMNS + w] += sign * events.f[chunk, j, 3]
        return
    pair = find_slot(pairs, pair_key(s, events.i[chunk, j, 2]))
    before = pair_counts[pair, 1 + w]
    after = before + sign
    pair_counts[pair, 1 + w] = after
    if before == 0 and after > 0:
        ei[s, wcol(w, W_DISTINCT)] += 1
    elif before > 0 and after == 0:
        ei[s, wcol(w, W_DISTINCT)] -= 1


@numba.njit(cache=True, nogil=True, inline="always")
def card_in_window(
    pairs: KeyTable, pair_counts: npt.NDArray[np.int64], s: int, card: int, w: int
) -> bool:
    pair = find_slot(pairs, pair_key(s, card))
    return pair >= 0 and pair_counts[pair, 1 + w] > 0


@numba.njit(cache=True, nogil=True, inline="always")
def advance(
    events: Pool,
    ei: npt.NDArray[np.int64],
    ef: npt.NDArray[np.float64],
    s: int,
    t: int,
    windows: npt.NDArray[np.int64],
    n_windows: int,
    pairs: KeyTable,
    pair_counts: npt.NDArray[np.int64],
    is_place: bool,
) -> None:
    """Move every window's end up to t (t >= the newest event's time): take out the events
    that fall out of (t - w, t], from each window's cursor on."""
    newest = newest_time(events, ei, s)
    if newest == NO_TIME:
        return
    for w in range(n_windows):
        old_start, new_start = newest - windows[w], t - windows[w]
        if new_start <= old_start:
            continue
        chunk = ei[s, wcol(w, W_CURSOR)]
        if chunk == NO_CHUNK:
            chunk = ei[s, EV_HEAD]
        last = chunk
        while chunk != NO_CHUNK:
            last = chunk
            j = 0
            n = events.m[chunk, 0]
            while j < n and events.i[chunk, j, 0] <= new_start:
                if events.i[chunk, j, 0] > old_start:
                    count_record(events, chunk, j, ei, ef, s, w, -1, pairs, pair_counts, is_place)
                j += 1
            if j < n:
                break
            chunk = events.m[chunk, 1]
        ei[s, wcol(w, W_CURSOR)] = last
        if ei[s, wcol(w, W_COUNT)] == 0:
            ef[s, N_FLOAT_COLUMNS + w] = 0.0  # no float residue in an empty window


@numba.njit(cache=True, nogil=True, inline="always")
def move_windows(
    events: Pool,
    ei: npt.NDArray[np.int64],
    ef: npt.NDArray[np.float64],
    s: int,
    t: int,
    windows: npt.NDArray[np.int64],
    n_windows: int,
    pairs: KeyTable,
    pair_counts: npt.NDArray[np.int64],
    is_place: bool,
    sign: int,
) -> None:
    """For t < the newest event's time M: shift every window's totals from (M - w, M] to
    (t - w, t] (sign 1), or back (sign -1, after the features are read).

    Events in (max(t, M - w), M] leave the window and events in (t - w, min(t, M - w)] join
    it. The newest band is walked back from the tail, together with the joining band of the
    windows shorter than M - t (it lies just behind it); each longer window's joining band is
    walked back from its cursor.
    """
    newest = newest_time(events, ei, s)
    reach = t  # the newest band's walk stops at the first event at or before this time
    for w in range(n_windows):
        if t <= newest - windows[w]:
            reach = min(reach, t - windows[w])
    chunk = ei[s, EV_TAIL]
    while chunk != NO_CHUNK:
        for j in range(events.m[chunk, 0] - 1, -1, -1):
            ts = events.i[chunk, j, 0]
            if ts <= reach:
                break
            for w in range(n_windows):
                start = newest - windows[w]
                if ts > t:
                    if ts > start:
                        count_record(
                            events, chunk, j, ei, ef, s, w, -sign, pairs, pair_counts, is_place
                        )
                elif t <= start and ts > t - windows[w]:
                    count_record(events, chunk, j, ei, ef, s, w, sign, pairs, pair_counts, is_place)
        else:
            chunk = events.m[chunk, PREV]
            continue
        break
    for w in range(n_windows):
        start = newest - windows[w]
        if t > start:
            _join_before_cursor(
                events, ei, ef, s, w, start, t - windows[w], pairs, pair_counts, is_place, sign
            )


@numba.njit(cache=True, nogil=True, inline="always")
def _join_before_cursor(
    events: Pool,
    ei: npt.NDArray[np.int64],
    ef: npt.NDArray[np.float64],
    s: int,
    w: int,
    start: int,
    stop: int,
    pairs: KeyTable,
    pair_counts: npt.NDArray[np.int64],
    is_place: bool,
    sign: int,
) -> None:
    """Count (sign) the events in (stop, start] into window w, walking back from its cursor.

    The window's newest event at or before `start` is in the cursor's chunk or, when an
    event was inserted in front of the next one, in a chunk just after it."""
    chunk = ei[s, wcol(w, W_CURSOR)]
    if chunk == NO_CHUNK:
        chunk = ei[s, EV_HEAD]
    if chunk == NO_CHUNK:
        return
    following = events.m[chunk, 1]
    while following != NO_CHUNK and events.i[following, 0, 0] <= start:
        chunk = following
        following = events.m[chunk, 1]
    while chunk != NO_CHUNK:
        for j in range(events.m[chunk, 0] - 1, -1, -1):
            ts = events.i[chunk, j, 0]
            if ts > start:
                continue
            if ts <= stop:
                return
            count_record(events, chunk, j, ei, ef, s, w, sign, pairs, pair_counts, is_place)
        chunk = events.m[chunk, PREV]


@numba.njit(cache=True, nogil=True, inline="always")
def find_self(events: Pool, ei: npt.NDArray[np.int64], s: int, t: int, txh: int) -> tuple[int, int]:
    """(chunk, slot) of the event with transaction hash `txh` at time t in the chain, or
    (NO_CHUNK, 0): a replay is the same transaction at the same time, so only the events
    at or after t are looked at, walking back from the newest."""
    chunk = ei[s, EV_TAIL] if s >= 0 else NO_CHUNK
    while chunk != NO_CHUNK:
        for j in range(events.m[chunk, 0] - 1, -1, -1):
            ts = events.i[chunk, j, 0]
            if ts < t:
                return NO_CHUNK, 0
            if ts == t and events.i[chunk, j, 1] == txh:
                return chunk, j
        chunk = events.m[chunk, PREV]
    return NO_CHUNK, 0


@numba.njit(cache=True, nogil=True, inline="always")
def add_event(
    events: Pool,
    chunk: int,
    j: int,
    ei: npt.NDArray[np.int64],
    ef: npt.NDArray[np.float64],
    s: int,
    newest_before: int,
    windows: npt.NDArray[np.int64],
    n_windows: int,
    pairs: KeyTable,
    pair_counts: npt.NDArray[np.int64],
    is_place: bool,
) -> None:
    """Count the event just stored at (chunk, j) into the windows it falls in (all of them
    when it is the newest; `newest_before` is the newest time before it was stored)."""
    t = events.i[chunk, j, 0]
    if is_place:
        key = pair_key(s, events.i[chunk, j, 2])
        pair = find_slot(pairs, key)
        if pair < 0:
            pair = add_key(pairs, key)
            pair_counts[pair, :] = 0
        pair_counts[pair, PAIR_REFS] += 1
    for w in range(n_windows):
        if newest_before == NO_TIME or t > newest_before - windows[w]:
            count_record(events, chunk, j, ei, ef, s, w, 1, pairs, pair_counts, is_place)


@numba.njit(cache=True, nogil=True, inline="always")
def _forget_pairs_of(
    events: Pool, chunk: int, s: int, pairs: KeyTable, pair_counts: npt.NDArray[np.int64]
) -> None:
    """A chunk of a place's chain is going away: release its events' pairs."""
    for j in range(events.m[chunk, 0]):
        pair = find_slot(pairs, pair_key(s, events.i[chunk, j, 2]))
        pair_counts[pair, PAIR_REFS] -= 1
        if pair_counts[pair, PAIR_REFS] == 0:
            remove_key(pairs, pair)


@numba.njit(cache=True, nogil=True, inline="always")
def forget_pairs(
    events: Pool,
    ei: npt.NDArray[np.int64],
    s: int,
    pairs: KeyTable,
    pair_counts: npt.NDArray[np.int64],
) -> None:
    """Release the pairs of every event of a place about to be reset or evicted."""
    chunk = ei[s, EV_HEAD]
    while chunk != NO_CHUNK:
        _forget_pairs_of(events, chunk, s, pairs, pair_counts)
        chunk = events.m[chunk, 1]


@numba.njit(cache=True, nogil=True, inline="always")
def drop_old_events(
    events: Pool,
    ei: npt.NDArray[np.int64],
    ef: npt.NDArray[np.float64],
    s: int,
    horizon: int,
    n_windows: int,
    pairs: KeyTable,
    pair_counts: npt.NDArray[np.int64],
    is_place: bool,
) -> None:
    """Free the leading chunks whose events are all older than `horizon`.

    The horizon lies behind every window's start, so those events are already out of every
    window's totals. A paying entity remembers the newest dropped event (and newest dropped
    located event), so "time since the previous transaction" survives the drop.
    """
    chunk = ei[s, EV_HEAD]
    while chunk != NO_CHUNK and events.m[chunk, 2] < horizon:
        following = events.m[chunk, 1]
        if is_place:
            _forget_pairs_of(events, chunk, s, pairs, pair_counts)
        else:
            _fold_into_evicted(events, chunk, ei, ef, s)
        for w in range(n_windows):
            if ei[s, wcol(w, W_CURSOR)] == chunk:
                ei[s, wcol(w, W_CURSOR)] = NO_CHUNK  # start from the head
        ei[s, EV_HEAD] = following
        if following == NO_CHUNK:
            ei[s, EV_TAIL] = NO_CHUNK
        else:
            events.m[following, PREV] = NO_CHUNK
        release_chunk(events, chunk)
        chunk = following


@numba.njit(cache=True, nogil=True, inline="always")
def _fold_into_evicted(
    pool: Pool, chunk: int, ei: npt.NDArray[np.int64], ef: npt.NDArray[np.float64], s: int
) -> None:
    for j in range(pool.m[chunk, 0]):
        ts = pool.i[chunk, j, 0]
        seq = pool.i[chunk, j, 2]
        if ts > ei[s, EVICTED_TS] or (ts == ei[s, EVICTED_TS] and seq > ei[s, EVICTED_SEQ]):
            ei[s, EVICTED_TS] = ts
            ei[s, EVICTED_SEQ] = seq
        if not math.isnan(pool.f[chunk, j, 4]) and (
            ts > ei[s, EVICTED_LOC_TS]
            or (ts == ei[s, EVICTED_LOC_TS] and seq > ei[s, EVICTED_LOC_SEQ])
        ):
            ei[s, EVICTED_LOC_TS] = ts
            ei[s, EVICTED_LOC_SEQ] = seq
            ef[s, EVICTED_LAT] = pool.f[chunk, j, 4]
            ef[s, EVICTED_LON] = pool.f[chunk, j, 5]
