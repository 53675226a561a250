"""The chunk pools of the feature state: growing keeps every chunk as it was."""

from __future__ import annotations

import numpy as np

from fraudstream.core.features.pool import NO_CHUNK, NO_TIME, PREV, grown, new_pool


def test_a_grown_pool_keeps_every_chunk_and_its_free_stack_and_adds_empty_chunks() -> None:
    pool = new_pool(8, chunk_size=4, fields=6, back_links=True)
    rng = np.random.default_rng(3)
    pool.i[:] = rng.integers(0, 1_000, pool.i.shape)
    pool.m[:] = rng.integers(0, 8, pool.m.shape)
    pool.free[:2] = [6, 3]  # two chunks were given back, in this order
    pool.top[0] = 2
    before_i, before_m = pool.i.copy(), pool.m.copy()

    bigger = grown(pool, min_free=5)

    assert bigger.i.shape == (16, 4, 6) and bigger.m.shape == (16, pool.m.shape[1])
    assert np.array_equal(bigger.i[:8], before_i) and np.array_equal(bigger.m[:8], before_m)
    assert np.array_equal(bigger.f[:8], before_i.view(np.float64)), "f views the same records"
    assert not bigger.i[8:].any()
    assert (bigger.m[8:, 1] == NO_CHUNK).all() and (bigger.m[8:, 2] == NO_TIME).all()
    assert (bigger.m[8:, PREV] == NO_CHUNK).all() and not bigger.m[8:, 0].any()
    top = int(bigger.top[0])
    assert top == 10
    assert bigger.free[:top].tolist() == [15, 14, 13, 12, 11, 10, 9, 8, 6, 3]
    assert np.array_equal(pool.i, before_i), "the old pool is left as it was"
    bigger.i[9, 0, 0] = 77
    assert bigger.f[9, 0, 0] == np.int64(77).view(np.float64), "i and f share one block"
    assert grown(bigger, min_free=10) is bigger, "room enough: no copy"
