"""String columns hashed and compared from their Arrow buffers."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudstream.core.text import equals_text, hash_text, hash_value

SEED = 0x5EEDF00D


def test_hashes_are_pinned_so_stored_state_survives_upgrades() -> None:
    # Feature state keyed by these hashes outlives a process (Redis, files): a change to the
    # hash function must be a deliberate migration, and this test is where it shows up.
    assert hash_value("card-0001", SEED) == -1213562441366559271
    assert hash_value("", SEED) == -1835457306730167133
    assert hash_value("é", SEED) == 6436404111985998249
    assert hash_value("abcdefghijklmnopq", SEED) == -1167591832059747921


def test_null_is_zero_and_values_are_odd_and_seeded() -> None:
    hashes = hash_text(pl.Series(["a", None, ""], dtype=pl.String()), SEED)
    assert hashes[1] == 0
    assert (hashes[[0, 2]] & 1 == 1).all()
    assert hash_value("a", SEED) != hash_value("a", SEED + 1)


texts = st.lists(st.one_of(st.none(), st.text(max_size=20)), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(values=texts, start=st.integers(0, 29), literal=st.text(max_size=6))
def test_slices_hash_and_compare_like_whole_values(
    values: list[str | None], start: int, literal: str
) -> None:
    column = pl.Series(values, dtype=pl.String())
    start = min(start, len(values) - 1)
    part = column.slice(start)  # an Arrow array with an offset into shared buffers
    expected = [0 if v is None else hash_value(v, SEED) for v in values[start:]]
    assert hash_text(part, SEED).tolist() == expected
    hit, known = equals_text(part, literal)
    assert hit.tolist() == [v == literal for v in values[start:]]
    assert known.tolist() == [v is not None for v in values[start:]]


def test_distinct_identifiers_do_not_collide() -> None:
    ids = pl.Series([f"card-{i:08d}" for i in range(200_000)])
    assert np.unique(hash_text(ids, SEED)).size == ids.len()
