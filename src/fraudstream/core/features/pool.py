"""Chunked record pools: per-entity histories of variable length in flat arrays numba can walk.

Each entity owns a singly linked chain of fixed-size chunks taken from a shared pool. A record
is a few 8-byte fields stored together, so one chunk is one contiguous block of memory (random
access by entity is the norm, and a field-per-array layout costs a cache miss per field). Each
kind of pool has only the fields it needs, since the walk is bound by how many cache lines an
event touches; field 0 is always a time:

    events    time, transaction-id hash, sequence | paying card, amount, latitude, longitude
    buckets   bucket start, count, sum                                      (see account.py)
    novelty   latest time seen, value hash, latest transaction id, time seen before that

`i` and `f` are two views (int64 and float64) of the same buffer. `m[c]` holds the chunk's
length, next chunk id and newest time, and in a pool made with back links the previous chunk
id; it is a view of one extra record at the start of the chunk's block, so visiting a chunk
does not cost a separate cache miss for its meta.

Event chains are sorted by time (a late event is inserted in its place, `insert_record`), and
doubly linked, so the sliding windows (`sliding.py`) can walk back from the newest event.
Bucket and novelty chains are in processing order. Whole chunks are freed once every record
in them is older than the retention horizon, so memory follows activity, not the number of
entities ever seen. The pool never grows inside a kernel: the Python side guarantees enough
free chunks first.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import numpy.typing as npt

from fraudstream.core.features.arena import growable_zeros, start_address, with_rows

NO_CHUNK = -1
NO_TIME = np.iinfo(np.int64).min
EVENT_FIELDS = 6
META_FIELDS = 3
"""Length, next chunk, newest time."""
PREV = 3
"""The meta field holding the previous chunk, in pools made with back links."""


class Pool(NamedTuple):
    i: npt.NDArray[np.int64]
    f: npt.NDArray[np.float64]
    m: npt.NDArray[np.int64]
    free: npt.NDArray[np.int64]
    top: npt.NDArray[np.int64]
    """top[0] = number of chunk ids on the free stack."""


def new_pool(n_chunks: int, chunk_size: int, fields: int, back_links: bool = False) -> Pool:
    meta_fields = META_FIELDS + int(back_links)
    if fields < meta_fields:
        raise ValueError(f"a pool record needs at least {meta_fields} fields")
    block = growable_zeros(n_chunks, (chunk_size + 1, fields), np.int64)
    free = growable_zeros(n_chunks, (), np.int64)
    free[:] = np.arange(n_chunks - 1, -1, -1, dtype=np.int64)
    return _over_block(block, meta_fields, free, top=n_chunks)


def grown(pool: Pool, min_free: int) -> Pool:
    """The same pool with at least `min_free` free chunks (doubling), or the pool itself.

    The pool's block and free stack are growable arrays (`arena.py`): growing lengthens them
    in place, and the new chunks' memory is only touched when the walk takes them (a free
    chunk's meta is never read: `take_chunk` sets it). The pool handed in shares its memory
    with the one returned and must not be used again. Growing is then as cheap as writing the
    new chunk ids onto the free stack, where a copy of a 1.7 GB pool into fresh memory took
    1-3.5 s on the benchmark's VM.
    """
    free = int(pool.top[0])
    if free >= min_free:
        return pool
    old_block = _block_of(pool)
    old = old_block.shape[0]
    new = max(2 * old, old + min_free - free)
    block = with_rows(old_block, new)
    stack = with_rows(pool.free, new)
    added = new - old
    stack[added : added + free] = stack[:free].copy()  # the chunks freed before go on top
    stack[:added] = np.arange(new - 1, old - 1, -1, dtype=np.int64)
    return _over_block(block, int(pool.m.shape[1]), stack, top=added + free)


def _over_block(
    block: npt.NDArray[np.int64], meta_fields: int, free: npt.NDArray[np.int64], top: int
) -> Pool:
    """The pool whose chunks are the rows of `block`: row 0 of each chunk its meta, the
    rest its records."""
    return Pool(
        i=block[:, 1:, :],
        f=block.view(np.float64)[:, 1:, :],
        m=block[:, 0, :meta_fields],
        free=free,
        top=np.array([top], np.int64),
    )


def _block_of(pool: Pool) -> npt.NDArray[np.int64]:
    """The block a pool's records are a view of (every pool is made by `new_pool`): the
    leading rows of its growable mapping, or the array the fallback allocated."""
    n_chunks, chunk_size, fields = pool.i.shape
    shape = (n_chunks, chunk_size + 1, fields)
    base = pool.i.base
    if isinstance(base, np.ndarray) and base.ndim == 1 and base.size >= np.prod(shape):
        base = base[: int(np.prod(shape))].reshape(shape)
    if (
        not isinstance(base, np.ndarray)
        or base.shape != shape
        or start_address(base) != start_address(pool.m)
    ):
        raise TypeError("not a pool made by new_pool")
    return base


def has_back_links(pool: Pool) -> bool:
    return bool(pool.m.shape[1] > META_FIELDS)


def chunks_in_use(pool: Pool) -> int:
    return int(pool.i.shape[0]) - int(pool.top[0])


def chunk_bytes(pool: Pool) -> int:
    """Bytes one chunk occupies: its records, its meta row and its free-stack entry."""
    return (int(pool.i.shape[1]) + 1) * int(pool.i.shape[2]) * 8 + 8


def retained_records(pool: Pool) -> int:
    return int(pool.m[:, 0].sum())


@numba.njit(cache=True, nogil=True, inline="always")
def take_chunk(pool: Pool) -> int:
    top = pool.top[0] - 1
    pool.top[0] = top
    chunk = pool.free[top]
    pool.m[chunk, 0] = 0
    pool.m[chunk, 1] = NO_CHUNK
    pool.m[chunk, 2] = NO_TIME
    if pool.m.shape[1] > PREV:
        pool.m[chunk, PREV] = NO_CHUNK
    return int(chunk)


@numba.njit(cache=True, nogil=True, inline="always")
def release_chunk(pool: Pool, chunk: int) -> None:
    pool.m[chunk, 0] = 0
    pool.m[chunk, 2] = NO_TIME
    pool.free[pool.top[0]] = chunk
    pool.top[0] += 1


@numba.njit(cache=True, nogil=True, inline="always")
def claim_record(pool: Pool, head_tail: npt.NDArray[np.int64], a: int) -> tuple[int, int]:
    """(chunk, slot) of a new record with time `a` at the end of the chain whose head and
    tail chunk ids are head_tail[0] and head_tail[1]; the caller fills its other fields."""
    tail = head_tail[1]
    if tail == NO_CHUNK or pool.m[tail, 0] == pool.i.shape[1]:
        chunk = take_chunk(pool)
        if tail == NO_CHUNK:
            head_tail[0] = chunk
        else:
            pool.m[tail, 1] = chunk
            if pool.m.shape[1] > PREV:
                pool.m[chunk, PREV] = tail
        head_tail[1] = chunk
        tail = chunk
    slot = pool.m[tail, 0]
    pool.i[tail, slot, 0] = a
    pool.m[tail, 0] = slot + 1
    pool.m[tail, 2] = max(pool.m[tail, 2], a)
    return int(tail), int(slot)


@numba.njit(cache=True, nogil=True, inline="always")
def insert_record(pool: Pool, head_tail: npt.NDArray[np.int64], a: int) -> tuple[int, int]:
    """(chunk, slot) of a new record with time `a`, placed before the first record later than
    `a` in a time-sorted, back-linked chain (so equal times keep their arrival order). The
    caller knows the chain's newest record is later than `a`.

    The record goes into the chunk of the record it precedes; a full chunk is split, its
    records from that point on moving to a new chunk linked after it. So a record only ever
    moves later in the chain, never into an earlier chunk (the window cursors rely on this).
    """
    chunk = head_tail[1]
    while True:
        before = pool.m[chunk, PREV]
        if before == NO_CHUNK or pool.i[before, pool.m[before, 0] - 1, 0] <= a:
            break
        chunk = before
    n = pool.m[chunk, 0]
    k = 0
    while pool.i[chunk, k, 0] <= a:
        k += 1
    if n == pool.i.shape[1]:
        _split_after(pool, head_tail, chunk, k)
        n = k
    for j in range(n, k, -1):
        for field in range(pool.i.shape[2]):
            pool.i[chunk, j, field] = pool.i[chunk, j - 1, field]
    pool.i[chunk, k, 0] = a
    pool.m[chunk, 0] = n + 1
    pool.m[chunk, 2] = pool.i[chunk, n, 0]
    return int(chunk), int(k)


@numba.njit(cache=True, nogil=True, inline="always")
def _split_after(pool: Pool, head_tail: npt.NDArray[np.int64], chunk: int, k: int) -> None:
    """Move records k.. of `chunk` into a new chunk linked right after it."""
    moved = take_chunk(pool)
    following = pool.m[chunk, 1]
    pool.m[moved, 1] = following
    pool.m[moved, PREV] = chunk
    pool.m[chunk, 1] = moved
    if following == NO_CHUNK:
        head_tail[1] = moved
    else:
        pool.m[following, PREV] = moved
    n = pool.m[chunk, 0]
    for j in range(k, n):
        for field in range(pool.i.shape[2]):
            pool.i[moved, j - k, field] = pool.i[chunk, j, field]
    pool.m[moved, 0] = n - k
    pool.m[moved, 2] = pool.m[chunk, 2]
    pool.m[chunk, 0] = k


@numba.njit(cache=True, nogil=True, inline="always")
def append_event(
    pool: Pool,
    head_tail: npt.NDArray[np.int64],
    ts: int,
    txh: int,
    o: int,
    amount: float,
    lat: float,
    lon: float,
) -> tuple[int, int]:
    """Add an event record to a time-sorted chain: appended when it is the newest, else
    inserted in its place (`o` is the processing sequence, or the paying card's hash in a
    merchant's or terminal's history). Returns (chunk, slot) of the record."""
    tail = head_tail[1]
    if tail == NO_CHUNK or pool.i[tail, pool.m[tail, 0] - 1, 0] <= ts:
        chunk, slot = claim_record(pool, head_tail, ts)
    else:
        chunk, slot = insert_record(pool, head_tail, ts)
    pool.i[chunk, slot, 1] = txh
    pool.i[chunk, slot, 2] = o
    pool.f[chunk, slot, 3] = amount
    pool.f[chunk, slot, 4] = lat
    pool.f[chunk, slot, 5] = lon
    return chunk, slot


@numba.njit(cache=True, nogil=True, inline="always")
def free_chain(pool: Pool, head_tail: npt.NDArray[np.int64]) -> None:
    chunk = head_tail[0]
    while chunk != NO_CHUNK:
        following = pool.m[chunk, 1]
        release_chunk(pool, chunk)
        chunk = following
    head_tail[0] = NO_CHUNK
    head_tail[1] = NO_CHUNK
