"""Chunked record pools: per-entity histories of variable length in flat arrays numba can walk.

Each entity owns a singly linked chain of fixed-size chunks taken from a shared pool. A record
has six fields whose meaning depends on the chain (event, bucket or novelty):

    a  int64   event time | bucket start | latest time the value was seen
    h  int64   transaction-id hash | value hash
    o  int64   processing sequence | paying-card hash | bucket count | txid hash of the latest
    x  float64 amount | bucket sum | second-latest time the value was seen
    y  float64 latitude (NaN when absent)
    z  float64 longitude

Chains are in processing order. Whole chunks are freed once every record in them is older than
the retention horizon, so memory follows activity, not the number of entities ever seen. The
pool never grows inside a kernel: the Python side guarantees enough free chunks before a batch.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import numpy.typing as npt

NO_CHUNK = -1
NO_TIME = np.iinfo(np.int64).min


class Pool(NamedTuple):
    a: npt.NDArray[np.int64]
    h: npt.NDArray[np.int64]
    o: npt.NDArray[np.int64]
    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]
    z: npt.NDArray[np.float64]
    length: npt.NDArray[np.int32]
    nxt: npt.NDArray[np.int32]
    newest: npt.NDArray[np.int64]
    free: npt.NDArray[np.int32]
    top: npt.NDArray[np.int64]
    """top[0] = number of chunk ids on the free stack."""


def new_pool(n_chunks: int, chunk_size: int) -> Pool:
    shape = (n_chunks, chunk_size)
    return Pool(
        a=np.zeros(shape, np.int64),
        h=np.zeros(shape, np.int64),
        o=np.zeros(shape, np.int64),
        x=np.zeros(shape, np.float64),
        y=np.zeros(shape, np.float64),
        z=np.zeros(shape, np.float64),
        length=np.zeros(n_chunks, np.int32),
        nxt=np.full(n_chunks, NO_CHUNK, np.int32),
        newest=np.full(n_chunks, NO_TIME, np.int64),
        free=np.arange(n_chunks - 1, -1, -1, dtype=np.int32),
        top=np.array([n_chunks], np.int64),
    )


def grown(pool: Pool, min_free: int) -> Pool:
    """The same pool with at least `min_free` free chunks (doubling), or the pool itself."""
    free = int(pool.top[0])
    if free >= min_free:
        return pool
    old = pool.a.shape[0]
    new = max(2 * old, old + min_free - free)
    chunk_size = pool.a.shape[1]
    bigger = new_pool(new, chunk_size)
    for name in ("a", "h", "o", "x", "y", "z", "length", "nxt", "newest"):
        getattr(bigger, name)[:old] = getattr(pool, name)
    added = np.arange(new - 1, old - 1, -1, dtype=np.int32)
    bigger.free[: len(added)] = added
    bigger.free[len(added) : len(added) + free] = pool.free[:free]
    bigger.top[0] = len(added) + free
    return bigger


def chunks_in_use(pool: Pool) -> int:
    return int(pool.a.shape[0] - pool.top[0])


def record_bytes(pool: Pool) -> int:
    """Bytes one chunk occupies across all its arrays."""
    chunk_size = pool.a.shape[1]
    return chunk_size * 6 * 8 + 4 + 4 + 8 + 4


@numba.njit(cache=True, nogil=True)
def take_chunk(pool: Pool) -> int:
    top = pool.top[0] - 1
    pool.top[0] = top
    chunk = pool.free[top]
    pool.length[chunk] = 0
    pool.nxt[chunk] = NO_CHUNK
    pool.newest[chunk] = NO_TIME
    return chunk


@numba.njit(cache=True, nogil=True)
def release_chunk(pool: Pool, chunk: int) -> None:
    pool.length[chunk] = 0
    pool.newest[chunk] = NO_TIME
    pool.free[pool.top[0]] = chunk
    pool.top[0] += 1


@numba.njit(cache=True, nogil=True)
def append_record(
    pool: Pool,
    head_tail: npt.NDArray[np.int64],
    a: int,
    h: int,
    o: int,
    x: float,
    y: float,
    z: float,
) -> None:
    """Append to the chain whose head and tail chunk ids are head_tail[0] and head_tail[1]."""
    tail = head_tail[1]
    if tail == NO_CHUNK or pool.length[tail] == pool.a.shape[1]:
        chunk = take_chunk(pool)
        if tail == NO_CHUNK:
            head_tail[0] = chunk
        else:
            pool.nxt[tail] = chunk
        head_tail[1] = chunk
        tail = chunk
    slot = pool.length[tail]
    pool.a[tail, slot] = a
    pool.h[tail, slot] = h
    pool.o[tail, slot] = o
    pool.x[tail, slot] = x
    pool.y[tail, slot] = y
    pool.z[tail, slot] = z
    pool.length[tail] = slot + 1
    pool.newest[tail] = max(pool.newest[tail], a)


@numba.njit(cache=True, nogil=True)
def free_chain(pool: Pool, head_tail: npt.NDArray[np.int64]) -> None:
    chunk = head_tail[0]
    while chunk != NO_CHUNK:
        following = pool.nxt[chunk]
        release_chunk(pool, chunk)
        chunk = following
    head_tail[0] = NO_CHUNK
    head_tail[1] = NO_CHUNK


@numba.njit(cache=True, nogil=True)
def chain_length(pool: Pool, head: int) -> int:
    total = 0
    chunk = head
    while chunk != NO_CHUNK:
        total += pool.length[chunk]
        chunk = pool.nxt[chunk]
    return total
