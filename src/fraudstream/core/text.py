"""String columns read straight from their Arrow buffers: hashed and compared in compiled code.

Identifiers become 64-bit hashes for the state's key tables, and rules compare string columns
with literals. Both used to go through Polars expressions, whose fixed cost per call was most
of a small batch. The hash is our own (a word-at-a-time multiply-rotate mix with a murmur-style
finaliser), so it is stable across library versions and processes: state kept in Redis or on
disk by one release is read back by the next. Every non-null string hashes to an odd number and
a null to 0, so kernels can test for null without a second array.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

_K1 = np.uint64(0x87C37B91114253D5)
_K2 = np.uint64(0x4CF5AD432745937F)
_F1 = np.uint64(0xFF51AFD7ED558CCD)
_F2 = np.uint64(0xC4CEB9FE1A85EC53)
_EMPTY = np.zeros(0, dtype=np.uint8)
_EMPTY.flags.writeable = (
    False  # like the Arrow buffers it stands in for: one numba type, one compile
)


class TextBuffers(NamedTuple):
    """A string column as Arrow holds it: byte offsets, bytes, and a validity bitmap."""

    offsets: npt.NDArray[np.int64]
    """n + 1 offsets into `data` (already shifted by the array's slice offset)."""
    data: npt.NDArray[np.uint8]
    validity: npt.NDArray[np.uint8]
    """Arrow's bitmap, or empty when nothing is null."""
    bit_offset: int


def text_buffers(column: pl.Series) -> TextBuffers:
    """The Arrow buffers of a string column (a few microseconds, no copy of the bytes)."""
    array = column.to_arrow()
    if array.type != pa.large_string():
        array = array.cast(pa.large_string())
    validity, offsets, data = array.buffers()
    n, start = len(array), array.offset
    offsets_array = np.frombuffer(offsets, dtype=np.int64, count=start + n + 1)[start:]
    return TextBuffers(
        offsets=offsets_array,
        data=_EMPTY if data is None else np.frombuffer(data, dtype=np.uint8),
        validity=_EMPTY
        if validity is None or array.null_count == 0
        else np.frombuffer(validity, dtype=np.uint8),
        bit_offset=start,
    )


def hash_text(column: pl.Series, seed: int) -> npt.NDArray[np.int64]:
    """Stable 64-bit hashes of a string column: odd for a value, 0 for null."""
    out = np.empty(column.len(), dtype=np.int64)
    _hash_all(text_buffers(column), np.uint64(seed), out)
    return out


def hash_value(text: str, seed: int) -> int:
    """The hash `hash_text` gives `text` (for tests and for keys known up front)."""
    return int(hash_text(pl.Series([text], dtype=pl.String()), seed)[0])


def equals_text(
    column: pl.Series, literal: str
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(column == literal, column is not null), compared byte for byte."""
    n = column.len()
    hit = np.empty(n, dtype=np.bool_)
    known = np.empty(n, dtype=np.bool_)
    encoded = np.frombuffer(literal.encode("utf-8"), dtype=np.uint8)
    _equals_all(text_buffers(column), encoded, hit, known)
    return hit, known


@numba.njit(cache=True, nogil=True, inline="always")
def _is_valid(buffers: TextBuffers, i: int) -> bool:
    if buffers.validity.shape[0] == 0:
        return True
    bit = buffers.bit_offset + i
    return bool((buffers.validity[bit >> 3] >> (bit & 7)) & 1 == 1)


@numba.njit(cache=True, nogil=True, inline="always")
def _rotl(x: np.uint64, r: int) -> np.uint64:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@numba.njit(cache=True, nogil=True, inline="always")
def _word(data: npt.NDArray[np.uint8], at: int) -> np.uint64:
    """Eight bytes from `at` as a little-endian word, written out byte by byte so the
    compiler can merge them into one load."""
    return (
        np.uint64(data[at])
        | np.uint64(data[at + 1]) << np.uint64(8)
        | np.uint64(data[at + 2]) << np.uint64(16)
        | np.uint64(data[at + 3]) << np.uint64(24)
        | np.uint64(data[at + 4]) << np.uint64(32)
        | np.uint64(data[at + 5]) << np.uint64(40)
        | np.uint64(data[at + 6]) << np.uint64(48)
        | np.uint64(data[at + 7]) << np.uint64(56)
    )


@numba.njit(cache=True, nogil=True)
def _hash_all(buffers: TextBuffers, seed: np.uint64, out: npt.NDArray[np.int64]) -> None:
    data = buffers.data
    for i in range(out.shape[0]):
        if not _is_valid(buffers, i):
            out[i] = 0
            continue
        start, end = buffers.offsets[i], buffers.offsets[i + 1]
        h = seed ^ (np.uint64(end - start) * _K2)
        position = start
        while position < end:
            if end - position >= 8:
                word = _word(data, position)
            else:
                word = np.uint64(0)
                for b in range(end - position):
                    word |= np.uint64(data[position + b]) << np.uint64(8 * b)
            h ^= _rotl(word * _K1, 31) * _K2
            h = _rotl(h, 27) * np.uint64(5) + np.uint64(0x52DCE729)
            position += 8
        h ^= h >> np.uint64(33)
        h *= _F1
        h ^= h >> np.uint64(33)
        h *= _F2
        h ^= h >> np.uint64(33)
        out[i] = np.int64(h | np.uint64(1))


@numba.njit(cache=True, nogil=True)
def _equals_all(
    buffers: TextBuffers,
    literal: npt.NDArray[np.uint8],
    hit: npt.NDArray[np.bool_],
    known: npt.NDArray[np.bool_],
) -> None:
    data, size = buffers.data, literal.shape[0]
    for i in range(hit.shape[0]):
        known[i] = _is_valid(buffers, i)
        start = buffers.offsets[i]
        same = known[i] and buffers.offsets[i + 1] - start == size
        b = 0
        while same and b < size:
            same = data[start + b] == literal[b]
            b += 1
        hit[i] = same
