"""Entity key -> state slot, inside the compiled walk.

Keys arrive as 64-bit stable hashes (0 = a null key). Each entity kind has a `KeyTable`: an
open-addressing hash table with linear probing (pairs of key hash and slot), the reverse map
slot -> key hash, and a stack of free slots. Looking keys up in the kernel rather than in a
Python dict per row is what lets a batch of one cost microseconds, not a millisecond.

Identity by a 64-bit hash means two distinct keys collide with probability about n²/2⁶⁵ (one
in three million for ten million live cards); the same trade is made for transaction ids.
The Python side guarantees room (`KeyTable.reserved`) before each batch; the kernel never
grows a table.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import numpy.typing as npt

EMPTY = 0
NULL_KEY = 0


class KeyTable(NamedTuple):
    table: npt.NDArray[np.int64]
    """shape (capacity, 2): key hash (EMPTY when unused) and its slot; capacity a power of 2."""
    keys: npt.NDArray[np.int64]
    """slot -> key hash; EMPTY for a free slot."""
    free: npt.NDArray[np.int64]
    top: npt.NDArray[np.int64]
    """top[0] = number of slots on the free stack."""


def new_key_table(slots: int) -> KeyTable:
    capacity = 1 << max(4, (2 * slots - 1).bit_length())
    return KeyTable(
        table=np.zeros((capacity, 2), np.int64),
        keys=np.zeros(slots, np.int64),
        free=np.arange(slots - 1, -1, -1, dtype=np.int64),
        top=np.array([slots], np.int64),
    )


def live_keys(keys: KeyTable) -> int:
    return int(keys.keys.shape[0] - keys.top[0])


def reserved(keys: KeyTable, new_keys: int) -> KeyTable:
    """The same table with room for `new_keys` more keys (slots free, load under 1/2)."""
    slots = keys.keys.shape[0]
    live = live_keys(keys)
    if int(keys.top[0]) >= new_keys and 2 * (live + new_keys) <= keys.table.shape[0]:
        return keys
    bigger = new_key_table(max(2 * slots, live + new_keys))
    _rebuild(keys, bigger)
    return bigger


@numba.njit(cache=True, nogil=True)
def _rebuild(old: KeyTable, new: KeyTable) -> None:
    """Move every live key to `new`, keeping its slot (entity rows are indexed by slot)."""
    n_old = old.keys.shape[0]
    n_new = new.keys.shape[0]
    top = 0
    for slot in range(n_new - 1, -1, -1):
        key = old.keys[slot] if slot < n_old else EMPTY
        if key == EMPTY:
            new.free[top] = slot
            top += 1
        else:
            new.keys[slot] = key
            _insert(new.table, key, slot)
    new.top[0] = top


@numba.njit(cache=True, nogil=True, inline="always")
def _home(key: int, mask: int) -> int:
    """A key's first probe position. Key hashes are odd (bit 0 marks non-null), so bit 0
    carries no information and would leave every even position unused."""
    return (key >> 1) & mask


@numba.njit(cache=True, nogil=True, inline="always")
def _insert(table: npt.NDArray[np.int64], key: int, slot: int) -> None:
    mask = table.shape[0] - 1
    at = _home(key, mask)
    while table[at, 0] != EMPTY:
        at = (at + 1) & mask
    table[at, 0] = key
    table[at, 1] = slot


@numba.njit(cache=True, nogil=True, inline="always")
def find_slot(keys: KeyTable, key: int) -> int:
    """The slot of `key`, or -1 when it has none (or is the null key)."""
    if key == NULL_KEY:
        return -1
    table = keys.table
    mask = table.shape[0] - 1
    at = _home(key, mask)
    while table[at, 0] != EMPTY:
        if table[at, 0] == key:
            return int(table[at, 1])
        at = (at + 1) & mask
    return -1


@numba.njit(cache=True, nogil=True, inline="always")
def add_key(keys: KeyTable, key: int) -> int:
    """Give a new key a free slot (the caller knows it is absent) and return the slot."""
    top = keys.top[0] - 1
    keys.top[0] = top
    slot = keys.free[top]
    keys.keys[slot] = key
    _insert(keys.table, key, slot)
    return int(slot)


@numba.njit(cache=True, nogil=True)
def remove_key(keys: KeyTable, slot: int) -> None:
    """Free `slot` and delete its key, shifting later probes back (no tombstones)."""
    key = keys.keys[slot]
    keys.keys[slot] = EMPTY
    keys.free[keys.top[0]] = slot
    keys.top[0] += 1
    table = keys.table
    mask = table.shape[0] - 1
    hole = _home(key, mask)
    while table[hole, 0] != key:
        hole = (hole + 1) & mask
    at = (hole + 1) & mask
    while table[at, 0] != EMPTY:
        home = _home(table[at, 0], mask)
        # Move the entry back into the hole unless its home lies cyclically in (hole, at].
        if (at > hole and (home <= hole or home > at)) or (at < hole and hole >= home > at):
            table[hole, 0] = table[at, 0]
            table[hole, 1] = table[at, 1]
            hole = at
        at = (at + 1) & mask
    table[hole, 0] = EMPTY
    table[hole, 1] = 0
