"""A `FeatureState` as plain named arrays and back: what a checkpoint stores.

The arrays are exactly the kernel's tables (key tables, entity rows, record pools, the meta
row), so a restored state continues bit for bit where the saved one stopped. Alongside them go
the parameters the tables were built with; restoring under a different feature configuration
is refused rather than silently misread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from fraudstream.core.errors import SnapshotError
from fraudstream.core.features.arena import growable_copy
from fraudstream.core.features.keys import KeyTable
from fraudstream.core.features.pool import Pool, new_pool

Arrays = dict[str, npt.NDArray[np.generic]]


def key_table_arrays(prefix: str, keys: KeyTable, copy: bool = True) -> Arrays:
    arrays: Arrays = {
        f"{prefix}.table": keys.table,
        f"{prefix}.keys": keys.keys,
        f"{prefix}.free": keys.free,
        f"{prefix}.top": keys.top,
    }
    return {name: array.copy() for name, array in arrays.items()} if copy else arrays


def restored_key_table(prefix: str, arrays: Mapping[str, npt.NDArray[np.generic]]) -> KeyTable:
    return KeyTable(
        table=saved_array(arrays, f"{prefix}.table", np.int64).copy(),
        keys=saved_array(arrays, f"{prefix}.keys", np.int64).copy(),
        free=saved_array(arrays, f"{prefix}.free", np.int64).copy(),
        top=saved_array(arrays, f"{prefix}.top", np.int64).copy(),
    )


def pool_arrays(prefix: str, pool: Pool) -> Arrays:
    """The chunks in use, each with its meta (length, next chunk, newest time, previous chunk
    when the pool links back) in front, and their ids. Free chunks are left out: a pool doubles
    as it grows, so most of it may be free."""
    n_chunks, chunk_size, fields = pool.i.shape
    in_use = np.ones(n_chunks, np.bool_)
    in_use[pool.free[: pool.top[0]]] = False
    ids = np.flatnonzero(in_use).astype(np.int64)
    block = np.zeros((ids.shape[0], chunk_size + 1, fields), np.int64)
    block[:, 1:, :] = pool.i[ids]
    block[:, 0, : pool.m.shape[1]] = pool.m[ids]
    return {
        f"{prefix}.block": block,
        f"{prefix}.ids": ids,
        f"{prefix}.chunks": np.array([n_chunks], np.int64),
    }


def restored_pool(
    prefix: str,
    arrays: Mapping[str, npt.NDArray[np.generic]],
    chunk_size: int,
    fields: int,
    back_links: bool = False,
) -> Pool:
    block = saved_array(arrays, f"{prefix}.block", np.int64)
    ids = saved_array(arrays, f"{prefix}.ids", np.int64)
    n_chunks = int(saved_array(arrays, f"{prefix}.chunks", np.int64)[0])
    if block.ndim != 3 or block.shape[1:] != (chunk_size + 1, fields):
        raise SnapshotError(
            f"{prefix}: chunks of shape {block.shape[1:]}, this configuration builds "
            f"{(chunk_size + 1, fields)}"
        )
    if ids.shape[0] != block.shape[0] or (ids.size and not 0 <= ids.min() <= ids.max() < n_chunks):
        raise SnapshotError(f"{prefix}: chunk ids do not match the chunks stored")
    pool = new_pool(n_chunks, chunk_size, fields, back_links)
    pool.i[ids] = block[:, 1:, :]
    pool.m[ids] = block[:, 0, : pool.m.shape[1]]
    in_use = np.zeros(n_chunks, np.bool_)
    in_use[ids] = True
    free = np.flatnonzero(~in_use)[::-1]  # lowest id on top, as a fresh pool hands them out
    pool.free[: free.shape[0]] = free
    pool.top[0] = free.shape[0]
    return pool


def check_same(
    name: str, arrays: Mapping[str, npt.NDArray[np.generic]], current: npt.NDArray[np.generic]
) -> None:
    """The snapshot's `name` equals this configuration's."""
    saved = saved_array(arrays, name, current.dtype.type)
    if saved.shape != current.shape or not np.array_equal(saved, current):
        raise SnapshotError(
            f"{name}: the snapshot was taken with {saved.tolist()}, this configuration has "
            f"{current.tolist()}"
        )


def saved_rows(
    arrays: Mapping[str, npt.NDArray[np.generic]], name: str, like: npt.NDArray[Any]
) -> npt.NDArray[Any]:
    """A growable copy of the saved rows `name`, which must be as wide as `like` (this
    configuration's)."""
    rows = saved_array(arrays, name, like.dtype.type)
    if rows.ndim != 2 or rows.shape[1] != like.shape[1]:
        raise SnapshotError(
            f"{name}: rows of shape {rows.shape[1:]}, this configuration builds {like.shape[1:]}"
        )
    return growable_copy(rows)


def saved_array(
    arrays: Mapping[str, npt.NDArray[np.generic]], name: str, dtype: type[np.generic]
) -> npt.NDArray[Any]:
    """`arrays[name]`, or `SnapshotError` naming what is missing or mistyped."""
    if name not in arrays:
        raise SnapshotError(f"{name}: missing from the snapshot")
    array = arrays[name]
    if array.dtype != dtype:
        raise SnapshotError(f"{name}: stored as {array.dtype}, expected {np.dtype(dtype)}")
    return array
