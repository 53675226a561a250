"""The pipeline end to end on real servers: producer → Kafka → worker processes → Postgres."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from kafka_helpers import read_messages
from pipeline_helpers import (
    MALFORMED,
    fresh_pipeline,
    wait_for,
)

from fraudstream.adapters.kafka import TransactionProducer
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.runners.replay import replay
from fraudstream.stack import Endpoints, Stack

TRANSACTIONS = 20_000
RATE = 4_000
"""Paced like a live feed: 3 simulated days in 5 s still puts 10 minutes of event time (the
allowed lateness) in under a second, but no longer inside the few milliseconds by which the
producer's per-partition batches may reach the broker apart."""


@pytest.fixture(scope="module")
def stream():  # type: ignore[no-untyped-def]
    return generate(GeneratorConfig(seed=11, n_transactions=TRANSACTIONS, days=3))


def test_two_workers_store_every_transaction_once_and_flag_every_velocity_attack(
    endpoints: Endpoints, tmp_path: Path, stream
) -> None:  # type: ignore[no-untyped-def]
    total = stream.transactions.height
    with fresh_pipeline(endpoints, tmp_path) as pipeline:
        workers = pipeline.workers(2)
        workers.start()
        try:
            assert workers.wait_assigned(60), "both workers should hold partitions"
            half = total // 2
            producer = TransactionProducer(
                endpoints.kafka, pipeline.settings.kafka.transactions_topic
            )
            producer.publish(stream.transactions.head(half), rate=RATE)
            pipeline.publish_raw(MALFORMED)
            producer.publish(stream.transactions.slice(half), rate=RATE)
            wait_for(
                lambda: pipeline.holds(total, len(MALFORMED)),
                180,
                "every transaction and dead letter stored",
            )
        finally:
            codes = workers.stop()
        assert codes == [0, 0], "workers must finish their batch and exit 0 on SIGTERM"

        ids = pl.DataFrame(
            pipeline.query("SELECT transaction_id, is_flagged FROM transactions"),
            schema={"transaction_id": pl.String, "is_flagged": pl.Boolean},
            orient="row",
        )
        assert ids.height == total
        assert set(ids.get_column("transaction_id")) == set(stream.transactions["transaction_id"])
        late = pipeline.query("SELECT count(*) FROM transactions WHERE is_late")
        assert late == [(0,)], "partitions must be merged by event time, not scored as fetched"
        flagged = ids.filter(pl.col("is_flagged")).height
        assert pipeline.count("fraud_transactions") == flagged > 0

        letters = pipeline.query("SELECT raw, error, field, kafka_offset FROM dead_letters")
        assert sorted(bytes(row[0]) for row in letters) == sorted(MALFORMED)
        assert all(row[1] for row in letters), "every dead letter says why"

        attacks = (
            stream.transactions.join(stream.labels, on="transaction_id")
            .filter(pl.col("scenario") == "velocity_attack")
            .join(ids, on="transaction_id")
            .group_by("card_ref")
            .agg(pl.col("is_flagged").any())
        )
        assert attacks.height > 0
        assert attacks.get_column("is_flagged").all(), "a velocity attack went unflagged"

        decisions = read_messages(endpoints.kafka, pipeline.settings.kafka.decisions_topic, total)
        assert len({m.key() for m in decisions}) == total
        sample = json.loads(decisions[0].value() or b"")
        assert sample["transaction_id"] == (decisions[0].key() or b"").decode()
        assert sample["action"] in {"approve", "review", "decline"}
        assert isinstance(sample["reasons"], list)
        dead_topic = pipeline.settings.kafka.dead_letters_topic
        dead = read_messages(endpoints.kafka, dead_topic, len(MALFORMED), timeout=30)
        assert sorted(m.value() or b"" for m in dead) == sorted(MALFORMED)
        assert all(dict(m.headers() or [])["error"] for m in dead)


def test_a_database_outage_loses_and_duplicates_nothing(
    stack: Stack, endpoints: Endpoints, tmp_path: Path, stream
) -> None:  # type: ignore[no-untyped-def]
    """Postgres stopped mid-run and started again: the worker holds its batch, commits nothing
    meanwhile, and ends with exactly the rows and decisions of an undisturbed scoring."""
    postgres = stack.postgres
    assert postgres is not None, "the test stack embeds PostgreSQL"
    transactions = stream.transactions.head(8_000)
    with fresh_pipeline(endpoints, tmp_path, retry_backoff_max_s=0.5) as pipeline:
        workers = pipeline.workers(1)
        workers.start()
        try:
            assert workers.wait_assigned(60)
            producer = TransactionProducer(
                endpoints.kafka, pipeline.settings.kafka.transactions_topic
            )
            producer.publish(transactions.head(3_000), rate=RATE)
            wait_for(lambda: pipeline.count("transactions") > 1_000, 60, "first rows stored")
            postgres.stop()
            try:
                producer.publish(transactions.slice(3_000), rate=RATE)
                log = pipeline.log_dir / "worker-0.log"
                wait_for(lambda: "retrying" in log.read_text(), 30, "the worker to notice")
            finally:
                postgres.start(60)
            wait_for(lambda: pipeline.count("transactions") >= transactions.height, 120, "all rows")
        finally:
            codes = workers.stop()
        assert codes == [0]
        stored = pl.DataFrame(
            pipeline.query("SELECT transaction_id, action, score FROM transactions"),
            schema={"transaction_id": pl.String, "action": pl.String, "score": pl.Float64},
            orient="row",
        )
    assert stored.height == transactions.height
    assert stored.get_column("transaction_id").n_unique() == transactions.height
    reference = undisturbed(transactions)
    compared = stored.join(reference, on="transaction_id", suffix="_reference")
    assert compared.height == transactions.height
    differ = compared.filter(pl.col("action") != pl.col("action_reference"))
    assert differ.is_empty(), differ.head()


def undisturbed(transactions: pl.DataFrame) -> pl.DataFrame:
    """The same stream scored in one process, in event-time order: the expected decisions."""
    config = FeatureConfig()
    ruleset = compile_ruleset(parse_ruleset(load_default_ruleset_text()), available_columns(config))
    decided, _ = replay(transactions, Engine(ruleset), FeatureState(config))
    return decided.select("transaction_id", "action", "score")
