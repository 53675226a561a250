"""Feature state shared through Redis: two workers hold exactly the state one would."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_helpers import fresh_pipeline, wait_for

from fraudstream.adapters.kafka import TransactionProducer
from fraudstream.core.features import FeatureConfig, FeatureState, StateStats
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.runners.serve import checkpoint_store
from fraudstream.stack import Endpoints

PRODUCED = 10_000
PROBE = 2_000


@pytest.fixture(scope="module")
def stream():  # type: ignore[no-untyped-def]
    return generate(GeneratorConfig(seed=31, n_transactions=PRODUCED + PROBE, days=2))


def test_two_workers_checkpoint_the_features_one_worker_computes(
    endpoints: Endpoints, tmp_path: Path, stream
) -> None:  # type: ignore[no-untyped-def]
    """Each worker scores its own partitions but folds them all, so the checkpoint either one
    leaves in Redis gives, for transactions still to come, the very features of one state that
    saw the whole stream in event-time order, customers and merchants spread over partitions
    included."""
    produced = stream.transactions.head(PRODUCED)
    probe = stream.transactions.slice(PRODUCED)
    with fresh_pipeline(endpoints, tmp_path, checkpoint_interval_s=0.5) as pipeline:
        workers = pipeline.workers(2)
        workers.start()
        try:
            assert workers.wait_assigned(60)
            topic = pipeline.settings.kafka.transactions_topic
            TransactionProducer(endpoints.kafka, topic).publish(produced, rate=5_000)
            wait_for(lambda: pipeline.count("transactions") >= PRODUCED, 120, "every row")
        finally:
            codes = workers.stop()
        assert codes == [0, 0]
        store = checkpoint_store(pipeline.settings)
        assert store is not None
        newest = {}
        for info in store.newest_first():
            newest.setdefault(info.worker, info)
        assert sorted(newest) == ["worker-0", "worker-1"]
        states = {}
        for worker, info in newest.items():
            assert sum(info.offsets.values()) == PRODUCED, f"{worker} folded every partition"
            arrays = store.load(info)
            assert arrays is not None
            states[worker] = FeatureState.restore(FeatureConfig(), arrays)
        store.clear()
        assert list(store.newest_first()) == []
        store.close()

    one = FeatureState(FeatureConfig())
    one.update(produced.sort("timestamp", maintain_order=True))
    seen = _facts(one.stats())
    expected = one.update(probe)
    for worker, state in states.items():
        assert _facts(state.stats()) == seen, f"{worker} saw a different stream"
        assert state.update(probe).equals(expected), f"{worker}'s features differ"


def _facts(stats: StateStats) -> tuple[object, ...]:
    """What a state has seen (memory figures aside: they follow the batch sizes)."""
    return (
        stats.entities,
        stats.retained_events,
        stats.late_events,
        stats.replayed_events,
        stats.watermark_us,
    )
