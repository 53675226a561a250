"""The Spark runner on real servers: the same decisions as the Kafka worker, a restart from the
checkpoint that loses and duplicates nothing, dead letters, the project's Kafka source."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import psycopg
import pytest
from confluent_kafka import Producer
from pipeline_helpers import MALFORMED, TestPipeline, fresh_pipeline, wait_for
from pyspark.sql import SparkSession

from fraudstream.adapters.kafka import TransactionProducer
from fraudstream.config import Settings, load_settings
from fraudstream.core.decision_record import (
    DECISION_HEADER,
    SIGNATURE_HEADER,
    DecisionRecord,
    decision_key,
    encode,
    sign,
)
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.generator.output import encode_json_lines
from fraudstream.runners.local import worker_environment
from fraudstream.runners.serve import model_signing_key, prepare_pipeline
from fraudstream.runners.spark_job import BatchSinks, spark_session, start_query
from fraudstream.stack import Endpoints

GENERATED = 3_000
API_DECIDED = 4
"""Transactions the scoring API decided and published with its signed decision (one forged)."""
TRANSACTIONS = GENERATED + API_DECIDED
DECIDED_COLUMNS = (
    "transaction_id", "score", "rule_score", "action", "is_flagged", "is_late", "rules_fired",
    "reasons", "kafka_partition", "kafka_offset",
)  # fmt: skip
DECIDED = f"SELECT {', '.join(DECIDED_COLUMNS)} FROM transactions ORDER BY transaction_id"
LETTERS = "SELECT raw, error, field, kafka_partition, kafka_offset FROM dead_letters ORDER BY 4, 5"


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    settings = load_settings(
        spark={"master": "local[2]", "conf": {"spark.local.dir": str(tmp_path_factory.mktemp("s"))}}
    )
    spark = spark_session(settings)
    yield spark
    spark.stop()


@pytest.fixture(scope="module")
def scored_by_worker(
    endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestPipeline, pl.DataFrame, list[tuple[object, ...]]]]:
    """A labelled stream with malformed messages in it, on a topic of four partitions, scored
    by two worker processes: the reference every Spark run is compared with."""
    stream = generate(GeneratorConfig(seed=5, n_transactions=GENERATED, n_customers=300, days=1))
    tmp_path = tmp_path_factory.mktemp("worker")
    with fresh_pipeline(endpoints, tmp_path, state="memory") as pipeline:
        producer = TransactionProducer(endpoints.kafka, pipeline.settings.kafka.transactions_topic)
        half = stream.transactions.height // 2
        producer.publish(stream.transactions.head(half))
        pipeline.publish_raw(MALFORMED)
        producer.publish(stream.transactions.slice(half))
        carried = _publish_api_decided(pipeline, stream.transactions.slice(half, API_DECIDED))
        workers = pipeline.workers(2)
        workers.start()
        try:
            wait_for(lambda: pipeline.holds(TRANSACTIONS, len(MALFORMED)), 120, "the workers' rows")
        finally:
            assert workers.stop() == [0, 0]
        decided = _decided(pipeline.postgres_url)
        kept = decided.filter(pl.col("transaction_id").is_in(carried)).get_column("rules_fired")
        assert kept.to_list().count(["api_only"]) == API_DECIDED - 1, "the worker keeps them"
        yield pipeline, decided, pipeline.query(LETTERS)


def _publish_api_decided(pipeline: TestPipeline, rows: pl.DataFrame) -> list[str]:
    """Copies of `rows` as the scoring API publishes them: the transaction with its (made-up,
    never what the rules say) decision in a signed header; the first one's signature forged."""
    key = decision_key(model_signing_key(pipeline.settings))
    renamed = rows.with_columns(pl.col("transaction_id") + "-api")
    producer = Producer(pipeline.endpoints.kafka)
    for number, (value, transaction_id, card) in enumerate(zip(
        encode_json_lines(renamed), renamed.get_column("transaction_id"),
        renamed.get_column("card_ref"), strict=True,
    )):  # fmt: skip
        record = DecisionRecord(
            transaction_id=transaction_id, action="decline", score=97.5, rule_score=97.5,
            model_score=None, is_flagged=True, is_late=False, rules_fired=["api_only"],
            reasons=["api_only: decided at the API"], ruleset_version="api-1",
            model_version=None, shadow_score=None, shadow_model_version=None,
            decided_at=datetime.now(UTC),
        )  # fmt: skip
        raw = encode(record)
        mac = sign(b"not the key" if number == 0 else key, value, raw)
        producer.produce(
            pipeline.settings.kafka.transactions_topic, value=value, key=card.encode(),
            headers=[(DECISION_HEADER, raw), (SIGNATURE_HEADER, mac)],
        )  # fmt: skip
    assert producer.flush(30) == 0
    return renamed.get_column("transaction_id").to_list()


def _decided(url: str) -> pl.DataFrame:
    with psycopg.connect(url) as connection:
        rows = connection.execute(DECIDED).fetchall()
    return pl.DataFrame(rows, schema=list(DECIDED_COLUMNS), orient="row")


def _spark_settings(
    pipeline: TestPipeline,
    database: str,
    tmp_path: Path,
    history: str | None = None,
    **spark: object,
) -> Settings:
    """The worker pipeline's topic, scored into a database and topics of the Spark run's own."""
    base = pipeline.settings
    name = tmp_path.name.replace("-", "_")
    settings = load_settings(
        kafka={
            **base.kafka.model_dump(),
            "decisions_topic": f"{name}-decisions",
            "dead_letters_topic": f"{name}-dead-letters",
        },
        postgres={"url": database},
        models={"signing_key": model_signing_key(base).decode()},
        redis={"url": base.redis.url.get_secret_value() if base.redis.url else None},
        stack={"data_dir": tmp_path / "stack"},
        spark={"checkpoint_dir": str(tmp_path / "checkpoint"), **spark},
        history={"delta_path": history},
    )
    prepare_pipeline(settings)
    return settings


def _run_to_end(session: SparkSession, settings: Settings) -> BatchSinks:
    sinks = BatchSinks(settings, threading.Event())
    try:
        query = start_query(session, settings, sinks, available_now=True)
        query.awaitTermination(300)
        assert query.exception() is None
    finally:
        sinks.close()
    return sinks


def test_spark_gives_every_transaction_the_workers_decision(
    session: SparkSession, scored_by_worker, database: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    pipeline, expected, letters = scored_by_worker
    history = str(tmp_path / "history")
    settings = _spark_settings(pipeline, database, tmp_path, history, max_offsets_per_trigger=1_000)

    sinks = _run_to_end(session, settings)

    assert sinks.totals.batches >= 3, "the backlog should take several micro-batches"
    assert sinks.totals.scored == TRANSACTIONS
    got = _decided(database)
    assert got.height == TRANSACTIONS
    assert got.get_column("is_flagged").sum() > 0
    assert got.equals(expected), "Spark and the worker decided differently"
    with psycopg.connect(database) as connection:
        assert connection.execute(LETTERS).fetchall() == letters
    assert len(letters) == len(MALFORMED)
    in_delta = pl.read_delta(history).select("transaction_id", "action").sort("transaction_id")
    assert in_delta.equals(expected.select("transaction_id", "action"))


def test_a_query_stopped_mid_stream_resumes_from_its_checkpoint(
    session: SparkSession, scored_by_worker, database: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    pipeline, expected, letters = scored_by_worker
    settings = _spark_settings(
        pipeline, database, tmp_path, max_offsets_per_trigger=400, trigger_interval_ms=0
    )
    sinks = BatchSinks(settings, threading.Event())
    try:
        query = start_query(session, settings, sinks, available_now=False)
        wait_for(lambda: sinks.totals.batches >= 2, 120, "two micro-batches")
        query.stop()
    finally:
        sinks.close()
    stored = _decided(database).height
    assert 0 < stored < TRANSACTIONS, "the first run should stop part way"

    _run_to_end(session, settings)

    got = _decided(database)
    assert got.height == TRANSACTIONS
    assert got.equals(expected), "the resumed query lost, repeated or changed decisions"
    with psycopg.connect(database) as connection:
        assert connection.execute(LETTERS).fetchall() == letters


def test_the_spark_command_scores_the_backlog_and_exits_0(
    scored_by_worker, database: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    pipeline, expected, _ = scored_by_worker
    settings = _spark_settings(pipeline, database, tmp_path)
    command = [sys.executable, "-m", "fraudstream", "spark", "--available-now"]
    command += ["--master", "local[1]", "--max-offsets-per-trigger", "2000"]
    result = subprocess.run(
        command, env=worker_environment(settings), capture_output=True, timeout=300, check=False
    )
    log = result.stderr.decode(errors="replace")
    assert result.returncode == 0, log[-4000:]
    assert "Spark session up in" in log
    assert f"{TRANSACTIONS} scored" in log
    assert _decided(database).equals(expected)
