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
length, next chunk id and newest time; it is a view of one extra record at the start of the
chunk's block, so visiting a chunk does not cost a separate cache miss for its meta.

Chains are in processing order. Whole chunks are freed once every record in them is older than
the retention horizon, so memory follows activity, not the number of entities ever seen.
The pool never grows inside a kernel: the Python side guarantees enough free chunks first.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import numpy.typing as npt

NO_CHUNK = -1
NO_TIME = np.iinfo(np.int64).min
EVENT_FIELDS = 6
META_FIELDS = 3


class Pool(NamedTuple):
    i: npt.NDArray[np.int64]
    f: npt.NDArray[np.float64]
    m: npt.NDArray[np.int64]
    free: npt.NDArray[np.int64]
    top: npt.NDArray[np.int64]
    """top[0] = number of chunk ids on the free stack."""


def new_pool(n_chunks: int, chunk_size: int, fields: int) -> Pool:
    if fields < META_FIELDS:
        raise ValueError(f"a pool record needs at least {META_FIELDS} fields")
    block = np.zeros((n_chunks, chunk_size + 1, fields), np.int64)
    meta = block[:, 0, :META_FIELDS]
    meta[:, 1] = NO_CHUNK
    meta[:, 2] = NO_TIME
    return Pool(
        i=block[:, 1:, :],
        f=block.view(np.float64)[:, 1:, :],
        m=meta,
        free=np.arange(n_chunks - 1, -1, -1, dtype=np.int64),
        top=np.array([n_chunks], np.int64),
    )


def grown(pool: Pool, min_free: int) -> Pool:
    """The same pool with at least `min_free` free chunks (doubling), or the pool itself."""
    free = int(pool.top[0])
    if free >= min_free:
        return pool
    old = pool.i.shape[0]
    new = max(2 * old, old + min_free - free)
    bigger = new_pool(new, pool.i.shape[1], pool.i.shape[2])
    bigger.i[:old] = pool.i
    bigger.m[:old] = pool.m
    added = np.arange(new - 1, old - 1, -1, dtype=np.int64)
    bigger.free[: len(added)] = added
    bigger.free[len(added) : len(added) + free] = pool.free[:free]
    bigger.top[0] = len(added) + free
    return bigger


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
        head_tail[1] = chunk
        tail = chunk
    slot = pool.m[tail, 0]
    pool.i[tail, slot, 0] = a
    pool.m[tail, 0] = slot + 1
    pool.m[tail, 2] = max(pool.m[tail, 2], a)
    return int(tail), int(slot)


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
) -> None:
    """Append an event record (`o` is the processing sequence, or the paying card's hash in a
    merchant's or terminal's history)."""
    chunk, slot = claim_record(pool, head_tail, ts)
    pool.i[chunk, slot, 1] = txh
    pool.i[chunk, slot, 2] = o
    pool.f[chunk, slot, 3] = amount
    pool.f[chunk, slot, 4] = lat
    pool.f[chunk, slot, 5] = lon


@numba.njit(cache=True, nogil=True, inline="always")
def free_chain(pool: Pool, head_tail: npt.NDArray[np.int64]) -> None:
    chunk = head_tail[0]
    while chunk != NO_CHUNK:
        following = pool.m[chunk, 1]
        release_chunk(pool, chunk)
        chunk = following
    head_tail[0] = NO_CHUNK
    head_tail[1] = NO_CHUNK


@numba.njit(cache=True, nogil=True, inline="always")
def chain_length(pool: Pool, head: int) -> int:
    total = 0
    chunk = head
    while chunk != NO_CHUNK:
        total += pool.m[chunk, 0]
        chunk = pool.m[chunk, 1]
    return total
