"""Workers killed with SIGKILL mid-stream: nothing lost, nothing doubled, no decision changed."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from kafka_helpers import read_all
from pipeline_helpers import MALFORMED, fresh_pipeline, wait_for
from test_pipeline import undisturbed

from fraudstream.generator import GeneratorConfig, generate
from fraudstream.runners.local import ProducerThread
from fraudstream.runners.serve import assignments
from fraudstream.stack import Endpoints

RATE = 600
"""Slow enough that the stream is still flowing through three kills and rejoins."""
KILL_AFTER = (0.1, 0.35, 0.7)
"""Fractions of the stream stored when worker-1 is killed (and started again)."""


@pytest.fixture(scope="module")
def stream():  # type: ignore[no-untyped-def]
    return generate(GeneratorConfig(seed=23, n_transactions=20_000, days=3))


def test_a_worker_killed_three_times_changes_no_row_and_no_decision(
    endpoints: Endpoints, tmp_path: Path, stream
) -> None:  # type: ignore[no-untyped-def]
    transactions = stream.transactions
    total = transactions.height
    with fresh_pipeline(endpoints, tmp_path, checkpoint_interval_s=1.0) as pipeline:
        topic = pipeline.settings.kafka.transactions_topic
        workers = pipeline.workers(2)
        workers.start()
        producer = ProducerThread(endpoints.kafka, topic, transactions, RATE)

        def held(name: str) -> list[int]:
            return assignments(pipeline.settings).get(name, [])

        try:
            assert workers.wait_assigned(60), "both workers should hold partitions"
            producer.start()
            for number, fraction in enumerate(KILL_AFTER):
                wait_for(
                    lambda f=fraction: pipeline.count("transactions") >= f * total,
                    120,
                    f"{fraction:.0%} of the stream stored",
                )
                wait_for(lambda: bool(held("worker-1")), 60, "worker-1 to hold partitions")
                workers.kill(1)
                if number == 0:
                    pipeline.publish_raw(MALFORMED)
                if number == 1:  # this time the survivor takes over before worker-1 is back
                    wait_for(
                        lambda: len(held("worker-0")) == 4,
                        60,
                        "worker-0 to take over every partition",
                    )
                workers.restart(1)
            producer.join(120)
            assert producer.error is None and producer.report.sent == total
            wait_for(
                lambda: pipeline.holds(total, len(MALFORMED)),
                240,
                "every transaction and dead letter stored",
            )
        finally:
            producer.stop()
            codes = workers.stop()
        assert codes == [0, 0]

        rows = pl.DataFrame(
            pipeline.query("SELECT transaction_id, action, score FROM transactions"),
            schema={"transaction_id": pl.String, "action": pl.String, "score": pl.Float64},
            orient="row",
        )
        letters = pipeline.query("SELECT raw FROM dead_letters")
        decisions = read_all(endpoints.kafka, pipeline.settings.kafka.decisions_topic)

    assert rows.height == total and rows.get_column("transaction_id").n_unique() == total
    assert sorted(bytes(row[0]) for row in letters) == sorted(MALFORMED)

    expected = undisturbed(transactions)
    compared = rows.join(expected, on="transaction_id", suffix="_expected")
    assert compared.height == total
    differ = compared.filter(
        (pl.col("action") != pl.col("action_expected"))
        | ((pl.col("score") - pl.col("score_expected")).abs() > 1e-9)
    )
    assert differ.is_empty(), f"{differ.height} decisions changed:\n{differ.head()}"

    # The topic is at least once: a batch written but not committed before a kill is
    # written again, and must say exactly the same.
    published = pl.DataFrame([json.loads(m.value() or b"") for m in decisions]).select(
        "transaction_id", "action", "score"
    )
    assert published.get_column("transaction_id").n_unique() == total
    assert published.unique().height == total, "a transaction was published with two decisions"

    log_0 = (pipeline.log_dir / "worker-0.log").read_text()
    log_1 = (pipeline.log_dir / "worker-1.log").read_text()
    assert log_1.count("worker joined group") == 1 + len(KILL_AFTER)
    assert "state restored from checkpoint" in log_1, "a restart should resume from Redis"
    assert log_0.count("reading 4 partitions") >= 2, "worker-0 should rebuild on taking over"
