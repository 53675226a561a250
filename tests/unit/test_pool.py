"""The chunk pools of the feature state: growing keeps every chunk as it was, in place."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fraudstream.core.features.arena import start_address
from fraudstream.core.features.pool import chunk_bytes, grown, new_pool, take_chunk


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
    assert not bigger.i[8:].any() and not bigger.m[8:].any(), "new chunks read as zeros"
    top = int(bigger.top[0])
    assert top == 10
    assert bigger.free[:top].tolist() == [15, 14, 13, 12, 11, 10, 9, 8, 6, 3]
    assert start_address(bigger.i) == start_address(pool.i), "grown in place, not copied"
    bigger.i[9, 0, 0] = 77
    assert bigger.f[9, 0, 0] == np.int64(77).view(np.float64), "i and f share one block"
    assert grown(bigger, min_free=10) is bigger, "room enough: nothing to do"


def test_a_chunk_taken_after_growing_starts_empty() -> None:
    pool = grown(new_pool(2, chunk_size=4, fields=6, back_links=True), min_free=3)
    chunks = [take_chunk(pool) for _ in range(int(pool.top[0]))]
    assert sorted(chunks) == [0, 1, 2, 3]
    assert (pool.m[:, 0] == 0).all() and (pool.m[:, 1] == -1).all() and (pool.m[:, 3] == -1).all()
    assert (pool.m[:, 2] == np.iinfo(np.int64).min).all()


def test_growing_a_pool_does_not_touch_the_memory_it_adds() -> None:
    pool = new_pool(1024, chunk_size=8, fields=6, back_links=True)
    rss_before = _resident_bytes()
    added = 4_000_000  # 1.7 GB of chunks
    pool = grown(pool, min_free=added)
    grew = _resident_bytes() - rss_before
    assert pool.i.shape[0] >= added
    assert grew < added * chunk_bytes(pool) // 10, f"grew {grew} bytes"  # the free stack: ~2 %
    pool.i[-1, -1, -1] = 5  # the last chunk is real memory
    assert pool.i[-1, -1, -1] == 5


def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096
