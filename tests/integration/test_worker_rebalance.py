"""A worker losing partitions hands them over after its batches in flight, not before them."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from pipeline_helpers import fresh_pipeline, wait_for

from fraudstream.adapters.kafka import TransactionProducer
from fraudstream.adapters.kafka_sinks import new_consumer
from fraudstream.config import Settings
from fraudstream.core.features import FeatureConfig
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.ports import ScoredBatch
from fraudstream.runners.serve import engine_source
from fraudstream.runners.stream_state import StreamState
from fraudstream.runners.worker import Worker
from fraudstream.stack import Endpoints

Position = tuple[int, int]


class SlowRecorder:
    """A sink that takes `delay_s` per batch and records the positions it was given."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.positions: list[Position] = []
        self._lock = threading.Lock()

    def write(self, batch: ScoredBatch) -> None:
        time.sleep(self.delay_s)
        rows = batch.frame.select("kafka_partition", "kafka_offset").rows()
        with self._lock:
            self.positions.extend((int(p), int(o)) for p, o in rows)

    def close(self) -> None:
        pass

    def count(self) -> int:
        with self._lock:
            return len(self.positions)

    def written(self) -> set[Position]:
        with self._lock:
            return set(self.positions)


def _worker(
    settings: Settings, name: str, sink: SlowRecorder, *, max_batch: int = 150,
    handover_wait_s: float = 10.0,
) -> Worker:  # fmt: skip
    kafka = settings.kafka.client_config(settings.kafka.bootstrap_servers)
    group = settings.worker.group_id
    timeout_ms = settings.worker.session_timeout_ms
    config = FeatureConfig()
    return Worker(
        group=new_consumer(kafka, group, timeout_ms),
        reader=new_consumer(kafka, f"{group}.reader-{name}", timeout_ms),
        topic=settings.kafka.transactions_topic,
        engine=engine_source(settings, config),
        state=StreamState(config, worker=name),
        sinks=[sink],
        max_batch=max_batch,
        max_wait_s=0.05,
        in_flight=2,
        handover_wait_s=handover_wait_s,
    )


def _rebalance_while_writing(
    first: tuple[Worker, SlowRecorder], second: tuple[Worker, SlowRecorder], total: int
) -> None:
    """Run the first worker until it wrote a batch, then start the second: the rebalance takes
    partitions away from the first while its batches are in flight. Both run until each of the
    `total` transactions was written by one or the other."""
    stop = threading.Event()
    threads = [threading.Thread(target=worker.run, args=(stop,)) for worker, _ in (first, second)]
    threads[0].start()
    try:
        wait_for(lambda: first[1].count() > 0, 120, "the first worker's first batch")
        threads[1].start()
        wait_for(
            lambda: len(first[1].written() | second[1].written()) >= total,
            180,
            "every transaction written",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)


def test_revoked_partitions_are_committed_past_the_batches_in_flight(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    stream = generate(GeneratorConfig(seed=5, n_transactions=1_500, days=1))
    with fresh_pipeline(endpoints, tmp_path) as pipeline:
        settings = pipeline.settings
        TransactionProducer(endpoints.kafka, settings.kafka.transactions_topic).publish(
            stream.transactions
        )
        first, second = SlowRecorder(delay_s=1.0), SlowRecorder(delay_s=0.05)
        _rebalance_while_writing(
            (_worker(settings, "first", first), first),
            (_worker(settings, "second", second), second),
            stream.transactions.height,
        )
        assert first.positions and second.positions, "both workers should have scored"
        twice = set(first.positions) & set(second.positions)
        assert not twice, f"{len(twice)} messages written by both workers, e.g. {sorted(twice)[:3]}"
        assert len(set(first.positions) | set(second.positions)) == stream.transactions.height


def test_a_handover_waits_no_longer_than_its_setting(
    endpoints: Endpoints, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sink slower than `handover_wait_s`: the partitions go after that wait, the batches
    still being written are read again by their new owner, and nothing is lost."""
    stream = generate(GeneratorConfig(seed=6, n_transactions=600, days=1))
    caplog.set_level(logging.WARNING, logger="fraudstream.worker")
    with fresh_pipeline(endpoints, tmp_path) as pipeline:
        settings = pipeline.settings
        TransactionProducer(endpoints.kafka, settings.kafka.transactions_topic).publish(
            stream.transactions
        )
        first, second = SlowRecorder(delay_s=3.0), SlowRecorder(delay_s=0.05)
        _rebalance_while_writing(
            (_worker(settings, "first", first, max_batch=100, handover_wait_s=0.3), first),
            (_worker(settings, "second", second, max_batch=100), second),
            stream.transactions.height,
        )
        gave_up = [r for r in caplog.records if "still being written" in r.getMessage()]
        assert gave_up, "the first worker should have stopped waiting after 0.3 s"
        assert second.positions, "the second worker should have taken partitions over"
        assert len(set(first.positions) | set(second.positions)) == stream.transactions.height
