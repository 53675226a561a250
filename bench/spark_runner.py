"""The Spark runner's part of `bench/pipeline.py` (`--parts spark`): the same backlog as the
worker's throughput part, scored by `fraudstream spark`'s query run to the end of the topic
(`trigger(availableNow=True)`, local[*]), with the Spark session's start-up timed apart."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import psycopg

from fraudstream.adapters.kafka import TransactionProducer
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.runners.serve import prepare_pipeline
from fraudstream.stack import Endpoints


def spark_throughput(
    endpoints: Endpoints, data_dir: Path, backlog: int, tuning, settings_for
) -> dict:  # type: ignore[no-untyped-def]
    """`settings_for(endpoints, data_dir, name, tuning)` makes the pipeline's settings."""
    from fraudstream.runners.spark_job import BatchSinks, spark_session, start_query

    name = f"bench_{uuid.uuid4().hex[:8]}"
    settings = settings_for(endpoints, data_dir, name, tuning)
    settings = settings.model_copy(
        update={
            "spark": settings.spark.model_copy(
                update={"checkpoint_dir": str(data_dir / "spark" / name)}
            )
        }
    )
    prepare_pipeline(settings)
    stream = generate(GeneratorConfig(seed=5, n_transactions=backlog))
    TransactionProducer(endpoints.kafka, settings.kafka.transactions_topic).publish(
        stream.transactions
    )
    started = time.perf_counter()
    session = spark_session(settings)
    session_s = time.perf_counter() - started
    sinks = BatchSinks(settings, threading.Event())
    try:
        started = time.perf_counter()
        query = start_query(session, settings, sinks, available_now=True)
        query.awaitTermination()
        query_s = time.perf_counter() - started
        batches = len(query.recentProgress)
    finally:
        sinks.close()
        session.stop()
    url = settings.postgres.url.get_secret_value()
    with psycopg.connect(url, autocommit=True) as connection:
        count, first, last = connection.execute(
            "SELECT count(*), min(decided_at), max(decided_at) FROM transactions"
        ).fetchone()
    span = (last - first).total_seconds() if first and last else 0.0
    return {
        "rows": count,
        "master": settings.spark.master,
        "max_offsets_per_trigger": settings.spark.max_offsets_per_trigger,
        "micro_batches": batches,
        "session_start_s": round(session_s, 1),
        "query_s": round(query_s, 1),
        "tx_per_s": round(count / query_s) if query_s else None,
        "tx_per_s_first_to_last_decision": round(count / span) if span else None,
    }
