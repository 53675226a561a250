"""Growable arrays: lengthened in place inside their reserved mapping, else copied."""

from __future__ import annotations

import numpy as np
import pytest

from fraudstream.core.features import arena
from fraudstream.core.features.arena import growable_copy, growable_zeros, is_growable, with_rows


def test_a_growable_array_lengthens_in_place_keeping_its_rows() -> None:
    rows = growable_zeros(3, (2,), np.int64)
    rows[:] = [[1, 2], [3, 4], [5, 6]]
    longer = with_rows(rows, 1000)
    assert longer.shape == (1000, 2) and longer.dtype == np.int64
    assert longer[:3].tolist() == [[1, 2], [3, 4], [5, 6]] and not longer[3:].any()
    assert np.shares_memory(rows, longer), "no copy"
    assert with_rows(longer, 10) is longer, "never shortened"


def test_a_plain_array_is_copied_into_a_growable_one() -> None:
    plain = np.arange(6, dtype=np.float64).reshape(3, 2)
    longer = with_rows(plain, 5)
    assert not is_growable(plain) and is_growable(longer)
    assert not np.shares_memory(plain, longer)
    assert longer[:3].tolist() == plain.tolist() and not longer[3:].any()
    copy = growable_copy(plain)
    assert is_growable(copy) and copy.tolist() == plain.tolist()


def test_a_view_that_is_not_the_start_of_its_mapping_is_not_extended_in_place() -> None:
    rows = growable_zeros(10, (), np.int64)
    rows[:] = np.arange(10)
    tail = rows[4:]
    assert not is_growable(tail)
    longer = with_rows(tail, 8)
    assert longer[:6].tolist() == [4, 5, 6, 7, 8, 9] and not np.shares_memory(longer, rows)


def test_outgrowing_the_reservation_copies_into_a_bigger_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(arena, "RESERVED_BYTES", 4096)
    rows = growable_zeros(4, (8,), np.int64)  # 256 bytes of a 4 KiB mapping
    rows[:] = 7
    assert np.shares_memory(with_rows(rows, 64), rows), "64 rows fill 4 KiB exactly"
    beyond = with_rows(rows, 65)
    assert beyond.shape == (65, 8) and not np.shares_memory(beyond, rows)
    assert (beyond[:4] == 7).all() and not beyond[4:].any() and is_growable(beyond)


def test_when_the_system_refuses_the_mapping_plain_memory_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(arena.mmap, "mmap", refuse)
    rows = growable_zeros(3, (2,), np.float64)
    assert rows.shape == (3, 2) and not rows.any() and not is_growable(rows)
    assert with_rows(rows, 6).shape == (6, 2)
