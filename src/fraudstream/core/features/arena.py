"""Arrays that grow along their first axis without moving: reserved address space.

The feature state's tables (record pools, entity rows) only ever grow, and growing them by
copying into a bigger array stops scoring while it runs: doubling a 1.7 GB pool took 1-3.5 s
on the benchmark's VM, most of it the first touch of memory the process never had. So each
growable table sits at the start of a private anonymous mapping as large as the machine's
memory, mapped without reserving swap (`MAP_NORESERVE`). The kernel gives such a mapping
address space only; a page becomes memory when it is first written, and reads as zeros until
then. Growing is then a longer view of the same mapping: no copy, and the new rows cost
nothing until the kernel walk first uses them.

Where the system refuses the mapping (strict overcommit, no `mmap`), or a table outgrows its
mapping, the table falls back to a copy into fresh memory, as before.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np
import numpy.typing as npt

_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux's value; Python 3.13 names it
_PRIVATE_ANONYMOUS = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)


def _machine_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (OSError, ValueError, AttributeError):
        return 1 << 34


RESERVED_BYTES = _machine_bytes()
"""Address space behind one growable table: no table can outgrow the machine's memory."""


def growable_zeros(rows: int, row_shape: tuple[int, ...], dtype: Any) -> npt.NDArray[Any]:
    """Zeros of shape (rows, *row_shape) that `with_rows` can later lengthen in place."""
    array = _reserved(rows, row_shape, np.dtype(dtype))
    if array is None:
        return np.zeros((rows, *row_shape), dtype)
    return array


def growable_copy(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A growable copy of `array` (e.g. rows read back from a checkpoint)."""
    copy = growable_zeros(array.shape[0], array.shape[1:], array.dtype)
    copy[...] = array
    return copy


def with_rows(array: npt.NDArray[Any], rows: int) -> npt.NDArray[Any]:
    """`array` lengthened to `rows` rows: its rows kept, the new ones zero.

    In place when `array` was made growable and its mapping has room; the array handed in
    and the one returned then share memory, so the caller must let go of the old one. Else a
    copy into a new growable array.
    """
    if rows <= array.shape[0]:
        return array
    longer = _longer_view(array, rows)
    if longer is not None:
        return longer
    copy = growable_zeros(rows, array.shape[1:], array.dtype)
    copy[: array.shape[0]] = array
    return copy


def start_address(array: npt.NDArray[Any]) -> int:
    """The address of an array's first element: two arrays that start at the same one are
    views of the same memory from the same place."""
    return int(array.__array_interface__["data"][0])


def is_growable(array: npt.NDArray[Any]) -> bool:
    """Whether `array` is a view of a reserved mapping that `with_rows` extends in place."""
    return _mapping_of(array) is not None


def _reserved(
    rows: int, row_shape: tuple[int, ...], dtype: np.dtype[Any]
) -> npt.NDArray[Any] | None:
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    size = max(RESERVED_BYTES, rows * row_bytes)
    size += -size % mmap.PAGESIZE
    if not _PRIVATE_ANONYMOUS or size == 0:
        return None
    try:
        mapping = mmap.mmap(-1, size, flags=_PRIVATE_ANONYMOUS | _MAP_NORESERVE)
    except (OSError, ValueError, OverflowError):
        return None
    whole = np.frombuffer(mapping, dtype=dtype)
    return whole[: rows * (row_bytes // dtype.itemsize)].reshape(rows, *row_shape)


def _mapping_of(array: npt.NDArray[Any]) -> npt.NDArray[Any] | None:
    """The whole-mapping array `array` is the leading rows of, if it is one."""
    whole = array.base
    if not isinstance(whole, np.ndarray) or whole.ndim != 1:
        return None
    view = whole.base
    if not isinstance(view, memoryview) or not isinstance(view.obj, mmap.mmap):
        return None
    if not array.flags.c_contiguous or array.dtype != whole.dtype:
        return None
    if start_address(array) != start_address(whole):
        return None
    return whole


def _longer_view(array: npt.NDArray[Any], rows: int) -> npt.NDArray[Any] | None:
    whole = _mapping_of(array)
    if whole is None:
        return None
    row_items = int(np.prod(array.shape[1:], dtype=np.int64))
    if rows * row_items > whole.shape[0]:
        return None
    return whole[: rows * row_items].reshape(rows, *array.shape[1:])
