"""`fraudstream spark`: the scoring as a Spark Structured Streaming query.

source (Kafka: the project's Python source, or Spark's `kafka` format) → one stateful group
scoring with the core (`spark_scoring.py`) → `foreachBatch` into the worker's own sinks
(PostgreSQL `transactions` / `fraud_transactions` / `dead_letters` and the alert outbox, the
`decisions` and `dead_letters` topics, the Delta history when configured). Spark's checkpoint
holds the offsets and the state together, and every sink is idempotent on the transaction id
(dead letters on their source position, the Delta history on the source offsets), so a batch
Spark runs again after a crash writes nothing twice.

Spark's Python workers must run this interpreter (they import `fraudstream`): `PYSPARK_PYTHON`
is set to it unless the environment already names one.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from fraudstream.config import Settings
from fraudstream.core.decision_record import DECISION_HEADER, SIGNATURE_HEADER
from fraudstream.ports import SinkUnavailable
from fraudstream.runners.batch_writer import BatchWriter
from fraudstream.runners.serve import build_sinks, kafka_client
from fraudstream.runners.spark_scoring import (
    INPUT_COLUMNS,
    OUTPUT_SCHEMA,
    STATE_SCHEMA,
    score_stream,
    scored_batch,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger("fraudstream.spark")

_SPARK_TYPES = {
    pl.String: "string",
    pl.Int32: "int",
    pl.Int64: "bigint",
    pl.Float64: "double",
    pl.Boolean: "boolean",
    pl.Binary: "binary",
    pl.Datetime: "timestamp",
}


def spark_ddl(schema: dict[str, pl.DataType]) -> str:
    """A Polars schema as a Spark DDL string (only the types the scored rows use)."""

    def spark_type(dtype: pl.DataType) -> str:
        if isinstance(dtype, pl.List):
            return f"array<{spark_type(dtype.inner)}>"
        return _SPARK_TYPES[dtype.base_type()]  # type: ignore[index]

    return ", ".join(f"`{name}` {spark_type(dtype)}" for name, dtype in schema.items())


def spark_session(settings: Settings) -> SparkSession:
    """A session for the runner (local[*] unless `spark.master` says otherwise), with the
    project's Kafka source registered."""
    from pyspark.sql import SparkSession  # noqa: PLC0415 - Spark is an optional extra

    from fraudstream.adapters.spark_kafka import KafkaStreamSource  # noqa: PLC0415

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    spark = settings.spark
    conf = {
        "spark.sql.shuffle.partitions": str(spark.shuffle_partitions or os.cpu_count() or 1),
        "spark.ui.enabled": str(spark.ui).lower(),
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.memory": spark.driver_memory,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        **spark.conf,
    }
    builder = SparkSession.builder.master(spark.master).appName("fraudstream")
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    session.dataSource.register(KafkaStreamSource)
    return session


def source_options(settings: Settings) -> dict[str, str]:
    """The source's options: the same names for the project's source and Spark's `kafka`."""
    kafka = settings.kafka
    options = {
        "subscribe": kafka.transactions_topic,
        "startingOffsets": "earliest",
        "includeHeaders": "true",  # the scoring API's signed decisions travel in headers
    }
    limit = settings.spark.max_offsets_per_trigger
    if limit is not None:
        options["maxOffsetsPerTrigger"] = str(limit)
    client = kafka_client(settings)
    if settings.spark.source == "kafka":
        client = _java_client(client)
    options.update({f"kafka.{key}": value for key, value in client.items()})
    return options


def _java_client(client: dict[str, str]) -> dict[str, str]:
    """librdkafka's SASL username/password as the Java client's JAAS line."""
    java = {k: v for k, v in client.items() if k not in ("sasl.username", "sasl.password")}
    if "sasl.username" in client:
        module = (
            "org.apache.kafka.common.security.scram.ScramLoginModule"
            if client.get("sasl.mechanism", "PLAIN").startswith("SCRAM")
            else "org.apache.kafka.common.security.plain.PlainLoginModule"
        )
        user, password = client["sasl.username"], client.get("sasl.password", "")
        java["sasl.jaas.config"] = f'{module} required username="{user}" password="{password}";'
    return java


def source_frame(session: SparkSession, settings: Settings) -> DataFrame:
    """The topic as a streaming frame of the columns the scoring step reads."""
    from pyspark.sql import functions as F  # noqa: N812, PLC0415

    from fraudstream.adapters.spark_kafka import SOURCE_NAME  # noqa: PLC0415

    fmt = SOURCE_NAME if settings.spark.source == "python" else "kafka"
    frame = session.readStream.format(fmt).options(**source_options(settings)).load()
    if "end_of_log" not in frame.columns:  # Spark's own source cannot say
        frame = frame.withColumn("end_of_log", F.lit(None).cast("boolean"))

    def header(name: str) -> Column:
        """The value of header `name` (the first, if repeated), or null."""
        named = F.filter("headers", lambda h: h.getField("key") == F.lit(name))
        return F.try_element_at(named, F.lit(1)).getField("value")

    return frame.select(
        F.lit(0).alias("fold"),
        "partition",
        "offset",
        F.unix_millis("timestamp").alias("timestamp_ms"),
        "value",
        "end_of_log",
        header(DECISION_HEADER).alias("decision"),
        header(SIGNATURE_HEADER).alias("decision_mac"),
    ).select(*INPUT_COLUMNS)


def scored_frame(session: SparkSession, settings: Settings) -> DataFrame:
    """Every message scored by the core: one row per decision or dead letter."""
    from pyspark.sql.streaming.state import GroupStateTimeout  # noqa: PLC0415

    return (
        source_frame(session, settings)
        .groupBy("fold")
        .applyInPandasWithState(
            score_stream(settings.kafka.transactions_topic, settings),
            spark_ddl(OUTPUT_SCHEMA),
            STATE_SCHEMA,
            "append",
            GroupStateTimeout.NoTimeout,
        )
    )


@dataclass
class SparkTotals:
    """What the query wrote since it started."""

    batches: int = 0
    scored: int = 0
    flagged: int = 0
    dead_letters: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def add_time(self, stage: str, started: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started


class BatchSinks:
    """`foreachBatch`: a micro-batch's rows to every sink, retried while a sink is down; the
    batch fails (and Spark runs it again) only when the runner stops during an outage."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        self.totals = SparkTotals()
        self._topic = settings.kafka.transactions_topic
        self._stop = stop
        self._writer = BatchWriter(
            build_sinks(settings),
            backoff_max_s=settings.worker.retry_backoff_max_s,
            timed=self.totals.add_time,
        )

    def __call__(self, frame: DataFrame, batch_id: int) -> None:
        started = time.perf_counter()
        rows = pl.from_arrow(frame.toArrow())
        assert isinstance(rows, pl.DataFrame)
        batch = scored_batch(rows, self._topic)
        if batch.frame.is_empty() and not batch.dead_letters:
            return
        if not self._writer.submit(batch, {}, self._stop).written.result():
            raise SinkUnavailable(f"batch {batch_id}: stopped before every sink confirmed it")
        self.totals.batches += 1
        self.totals.scored += batch.frame.height
        self.totals.flagged += int(batch.frame.get_column("is_flagged").sum())
        self.totals.dead_letters += len(batch.dead_letters)
        self.totals.add_time("batch", started)

    def close(self) -> None:
        self._writer.close()


def checkpoint_location(settings: Settings) -> str:
    configured = settings.spark.checkpoint_dir
    if configured is not None:
        return configured
    return str(Path(settings.stack.data_dir) / "spark" / settings.kafka.transactions_topic)


def start_query(
    session: SparkSession, settings: Settings, sinks: BatchSinks, *, available_now: bool
) -> StreamingQuery:
    """The scoring query, started: until stopped, or (`available_now`) until it has scored
    everything the topic held when it started."""
    writer = (
        scored_frame(session, settings)
        .writeStream.foreachBatch(sinks)
        .option("checkpointLocation", checkpoint_location(settings))
        .queryName("fraudstream_scoring")
    )
    if available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{settings.spark.trigger_interval_ms} milliseconds")
    return writer.start()
