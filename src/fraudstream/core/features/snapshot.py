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
from fraudstream.core.features.keys import KeyTable
from fraudstream.core.features.pool import META_FIELDS, Pool, new_pool

Arrays = dict[str, npt.NDArray[np.generic]]


def key_table_arrays(prefix: str, keys: KeyTable) -> Arrays:
    return {
        f"{prefix}.table": keys.table,
        f"{prefix}.keys": keys.keys,
        f"{prefix}.free": keys.free,
        f"{prefix}.top": keys.top,
    }


def restored_key_table(prefix: str, arrays: Mapping[str, npt.NDArray[np.generic]]) -> KeyTable:
    return KeyTable(
        table=saved_array(arrays, f"{prefix}.table", np.int64).copy(),
        keys=saved_array(arrays, f"{prefix}.keys", np.int64).copy(),
        free=saved_array(arrays, f"{prefix}.free", np.int64).copy(),
        top=saved_array(arrays, f"{prefix}.top", np.int64).copy(),
    )


def pool_arrays(prefix: str, pool: Pool) -> Arrays:
    """A pool's records with each chunk's meta (length, next chunk, newest time) in front."""
    n_chunks, chunk_size, fields = pool.i.shape
    block = np.zeros((n_chunks, chunk_size + 1, fields), np.int64)
    block[:, 1:, :] = pool.i
    block[:, 0, :META_FIELDS] = pool.m
    return {f"{prefix}.block": block, f"{prefix}.free": pool.free, f"{prefix}.top": pool.top}


def restored_pool(
    prefix: str, arrays: Mapping[str, npt.NDArray[np.generic]], chunk_size: int, fields: int
) -> Pool:
    block = saved_array(arrays, f"{prefix}.block", np.int64)
    if block.ndim != 3 or block.shape[1:] != (chunk_size + 1, fields):
        raise SnapshotError(
            f"{prefix}: chunks of shape {block.shape[1:]}, this configuration builds "
            f"{(chunk_size + 1, fields)}"
        )
    pool = new_pool(block.shape[0], chunk_size, fields)
    pool.i[:] = block[:, 1:, :]
    pool.m[:] = block[:, 0, :META_FIELDS]
    pool.free[:] = saved_array(arrays, f"{prefix}.free", np.int64)
    pool.top[:] = saved_array(arrays, f"{prefix}.top", np.int64)
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
