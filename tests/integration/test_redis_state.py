"""Checkpoints in a real Redis: stored, found by the offsets they have seen, thinned by age."""

from __future__ import annotations

import errno
import os
import time
import uuid

import numpy as np
import pytest
import redis

from fraudstream.adapters.redis_state import CheckpointStore
from fraudstream.core.features import FeatureConfig
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.runners import stream_state
from fraudstream.runners.stream_state import StreamState
from fraudstream.stack import Endpoints


def _store(endpoints: Endpoints, keep: int = 3) -> tuple[CheckpointStore, str]:
    namespace = f"test:{uuid.uuid4().hex[:8]}"
    return CheckpointStore(endpoints.redis_url, namespace, keep=keep), namespace


def test_a_checkpoint_comes_back_as_saved_and_is_found_below_the_ceilings(
    endpoints: Endpoints,
) -> None:
    store, _ = _store(endpoints)
    arrays = {"a": np.arange(5, dtype=np.int64), "b": np.linspace(0, 1, 3)}
    first = store.save(arrays, {0: 10, 1: 20}, "worker-0")
    second = store.save(arrays, {0: 30, 1: 25}, "worker-1")
    assert [info.id for info in store.newest_first()] == [second.id, first.id]
    loaded = store.load(second)
    assert loaded is not None and set(loaded) == {"a", "b"}
    assert np.array_equal(loaded["a"], arrays["a"]) and np.array_equal(loaded["b"], arrays["b"])
    assert store.newest_within({0: 30}) == second
    assert store.newest_within({0: 29}) == first, "second has seen offset 29 of partition 0"
    assert store.newest_within({1: 19}) is None
    assert store.newest_within({2: 0}) == second, "an unmentioned partition is unseen"
    store.clear()
    assert store.newest_within({}) is None
    store.close()


def test_old_checkpoints_are_thinned_to_a_few_spaced_by_doubling_age(
    endpoints: Endpoints,
) -> None:
    """An hour of checkpoints every 10 s: the newest few stay, and older ones at every scale
    of age, so a worker whose partner died minutes ago still finds one from before."""
    store, namespace = _store(endpoints, keep=3)
    client = redis.Redis.from_url(endpoints.redis_url)
    index = f"{namespace}:checkpoints"
    writer = CheckpointStore(endpoints.redis_url, namespace, keep=1_000)  # no thinning yet
    saved = [writer.save({"x": np.zeros(1)}, {0: i}, "worker-0") for i in range(360)]
    writer.close()
    newest_ms = saved[-1].created_ms
    # Pretend they were written 10 s apart, the newest now, then let one more save trim them.
    client.zadd(index, {info.id: newest_ms - 10_000 * (359 - i) for i, info in enumerate(saved)})
    newest = store.save({"x": np.zeros(1)}, {0: 360}, "worker-0")
    kept = list(store.newest_first())
    pretended_age_s = {info.id: 10 * (359 - i) for i, info in enumerate(saved)}
    ages_s = sorted(pretended_age_s[info.id] for info in kept[1:])
    assert kept[0].id == newest.id and kept[1].id == saved[-1].id
    assert len(kept) < 40, f"{len(kept)} checkpoints kept"
    for age in (30, 120, 600, 1800):
        assert any(age / 2 <= a <= 2 * age for a in ages_s), f"nothing about {age} s old"
    for info in saved:
        if info.id not in {k.id for k in kept}:
            assert client.get(f"{namespace}:checkpoint:{info.id}:state:0") is None
    store.clear()
    client.close()
    store.close()


def test_a_checkpoint_larger_than_a_part_is_stored_in_parts_and_trimmed_whole(
    endpoints: Endpoints,
) -> None:
    """Redis takes no value over 512 MB; a state is split into parts and put back together."""
    namespace = f"test:{uuid.uuid4().hex[:8]}"
    store = CheckpointStore(endpoints.redis_url, namespace, keep=1, part_bytes=1000)
    arrays = {"big": np.arange(2_000, dtype=np.int64), "small": np.ones(3)}
    first = store.save(arrays, {0: 1}, "worker-0")
    client = redis.Redis.from_url(endpoints.redis_url)
    parts = client.keys(f"{namespace}:checkpoint:{first.id}:state:*")
    assert len(parts) == -(-first.size_bytes // 1000) >= 16
    loaded = store.load(first)
    assert loaded is not None and np.array_equal(loaded["big"], arrays["big"])
    client.delete(f"{namespace}:checkpoint:{first.id}:state:3")
    assert store.load(first) is None, "a checkpoint missing a part is not half-loaded"
    store.clear()
    assert client.keys(f"{namespace}:*") == []
    client.close()
    store.close()


def test_checkpoints_are_spaced_out_as_the_state_grows(
    endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copying the state stops scoring, so a state whose copy takes long is copied less often:
    the pause stays under MAX_PAUSE_SHARE of the time."""
    store, _ = _store(endpoints)
    state = StreamState(FeatureConfig(), store, checkpoint_interval_s=0.01, worker="w")
    state.features.advance(generate(GeneratorConfig(seed=1, n_transactions=2_000)).transactions)
    state.folded({0: 2_000})
    time.sleep(0.02)
    assert state.checkpoint_due()
    monkeypatch.setattr(stream_state, "MAX_PAUSE_SHARE", 1e-6)  # as if the copy were huge
    state.save_checkpoint(wait=True)
    time.sleep(0.02)
    assert not state.checkpoint_due(), "the next one waits a million times the copy's pause"
    assert store.newest_within({0: 2_000}) is not None
    state.close()
    store.clear()
    store.close()


def test_checkpoints_past_the_byte_budget_go_oldest_first_and_the_two_newest_stay(
    endpoints: Endpoints,
) -> None:
    """A state of GBs checkpointed every minute would fill Redis's memory with copies."""
    namespace = f"test:{uuid.uuid4().hex[:8]}"
    arrays = {"x": np.arange(10_000, dtype=np.int64)}
    probe = CheckpointStore(endpoints.redis_url, f"{namespace}-probe")
    size = probe.save(arrays, {0: 0}, "w").size_bytes
    probe.clear()
    probe.close()
    store = CheckpointStore(endpoints.redis_url, namespace, keep=6, budget_bytes=3 * size + 10)
    saved = []
    for i in range(5):
        time.sleep(0.003)  # the index orders by the millisecond
        saved.append(store.save(arrays, {0: i}, "w"))
    assert [info.id for info in store.newest_first()] == [info.id for info in saved[:1:-1]]
    tiny = CheckpointStore(endpoints.redis_url, namespace, keep=6, budget_bytes=0)
    time.sleep(0.003)
    newest = tiny.save(arrays, {0: 5}, "w")
    assert [info.id for info in tiny.newest_first()] == [newest.id, saved[-1].id]
    client = redis.Redis.from_url(endpoints.redis_url)
    assert len(client.keys(f"{namespace}:checkpoint:*")) == 2 * 2, "parts and metas deleted"
    client.close()
    tiny.close()
    store.clear()
    store.close()


@pytest.mark.skipif(not stream_state.FORK_WRITER, reason="the forked writer is Linux's")
def test_a_forked_writer_stores_the_state_as_it_was_when_called(endpoints: Endpoints) -> None:
    """Scoring goes on while the child writes: what it stores is the state at the call, not
    what the parent folded afterwards."""
    store, _ = _store(endpoints)
    state = StreamState(FeatureConfig(), store, checkpoint_interval_s=0.01, worker="w")
    stream = generate(GeneratorConfig(seed=3, n_transactions=4_000)).transactions
    state.features.advance(stream.head(2_000))
    state.folded({0: 2_000})
    expected = state.features.snapshot()
    state.save_checkpoint()
    state.features.advance(stream.tail(2_000))  # while the child writes
    state.folded({0: 4_000})
    state.close()  # waits for the writer
    info = store.newest_within({0: 4_000})
    assert info is not None and info.offsets == {0: 2_000} and info.worker == "w"
    loaded = store.load(info)
    assert loaded is not None and set(loaded) == set(expected)
    for name, array in expected.items():
        assert np.array_equal(loaded[name], array), name
    assert state._write_s > 0, "the write's time spaces the next checkpoint"
    store.clear()
    store.close()


@pytest.mark.skipif(not stream_state.FORK_WRITER, reason="the forked writer is Linux's")
def test_a_writer_that_cannot_be_forked_skips_that_checkpoint_and_the_stream_goes_on(
    endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A machine out of memory refuses the fork (ENOMEM): scoring must not stop for a
    checkpoint, and the next call, once a fork works again, saves the state."""
    store, _ = _store(endpoints)
    state = StreamState(FeatureConfig(), store, checkpoint_interval_s=0.01, worker="w")
    stream = generate(GeneratorConfig(seed=3, n_transactions=1_000)).transactions
    state.features.advance(stream)
    state.folded({0: 1_000})

    def no_memory() -> int:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    with monkeypatch.context() as patched:
        patched.setattr(stream_state.os, "fork", no_memory)
        state.save_checkpoint()  # must not raise
    assert "could not be forked" in caplog.text
    assert store.newest_within({0: 1_000}) is None
    state.save_checkpoint()
    state.close()
    info = store.newest_within({0: 1_000})
    assert info is not None and info.offsets == {0: 1_000}, "the next call saved it"
    store.clear()
    store.close()
