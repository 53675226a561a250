"""A Kafka topic as a Spark streaming source, written with PySpark's Python Data Source API.

Spark's own `kafka` format lives in the spark-sql-kafka jar, which comes from Maven; this source
needs nothing but confluent-kafka. It takes the built-in format's options (`subscribe`,
`kafka.bootstrap.servers` and any other `kafka.*` client setting, `startingOffsets`,
`maxOffsetsPerTrigger`) and gives its columns (`key`, `value`, `topic`, `partition`, `offset`,
`timestamp`, `timestampType`, and `headers` as the built-in format gives them with
`includeHeaders`), so a job switches between the two by the format name alone. One more column,
`end_of_log`, says that a row's partition had nothing after this micro-batch's range
when the batch was planned: what lets the scorer release the events it holds back for event-time
order at the end of a backlog instead of waiting for more data.

Offsets are `{"<partition>": next offset}` (JSON keys are strings), owned by Spark's checkpoint:
no consumer group, nothing committed to Kafka, so a restarted query resumes exactly where its
checkpoint says. Each micro-batch reads one Kafka partition's offset range per Spark task, with a
consumer created inside the task (the reader object is pickled to Spark's Python workers; a
consumer never travels with it).

The end of a partition is found by reading, not taken from the broker's high watermark alone: a
broker may report the watermark as the base offset of its last record batch plus one (the
embedded broker does), which would leave that batch unread. Reading from the watermark minus one
to the end of the partition and taking the highest offset seen plus one is the same answer on a
broker that reports the watermark correctly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from pyspark.sql.datasource import (
    DataSource,
    DataSourceStreamReader,
    InputPartition,
)
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)

from fraudstream.adapters.kafka_sinks import topic_partitions

SOURCE_NAME = "fraudstream_kafka"
SCHEMA = (
    "key binary, value binary, topic string, partition int, offset long, "
    "timestamp timestamp, timestampType int, headers array<struct<key: string, value: binary>>, "
    "end_of_log boolean"
)
_HEADER = pa.struct([("key", pa.string()), ("value", pa.binary())])
_ARROW_SCHEMA = pa.schema(
    [
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("timestampType", pa.int32()),
        ("headers", pa.list_(_HEADER)),
        ("end_of_log", pa.bool_()),
    ]
)
_TIMEOUT_S = 30.0
_POLL_S = 1.0
_SHORT_POLL_S = 0.05
_ROWS_PER_BATCH = 10_000
READER_GROUP = "fraudstream-spark-reader"
"""Consumers here only `assign()`; confluent-kafka still wants a group id. Nothing is ever
committed under it: offsets live in Spark's checkpoint."""


class SourceOptionError(ValueError):
    """An option of the `fraudstream_kafka` source is missing or wrong."""


def client_config(options: Mapping[str, str]) -> dict[str, str]:
    """The confluent-kafka settings among a source's options: every `kafka.<setting>`."""
    config = {k[len("kafka.") :]: v for k, v in options.items() if k.startswith("kafka.")}
    if "bootstrap.servers" not in config:
        raise SourceOptionError("option kafka.bootstrap.servers is required")
    return config


@dataclass(frozen=True)
class KafkaRange(InputPartition):
    """One Kafka partition's offsets [start, end) in one micro-batch."""

    partition: int
    start: int
    end: int
    end_of_log: bool


class KafkaStreamSource(DataSource):
    """`spark.readStream.format("fraudstream_kafka")`."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> str:
        return SCHEMA

    def streamReader(self, schema: Any) -> KafkaStreamReader:  # noqa: N802 - Spark's name
        return KafkaStreamReader(dict(self.options))


class KafkaStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Plans micro-batches as per-partition offset ranges and reads them."""

    def __init__(self, given: Mapping[str, str]) -> None:
        options = {key.lower(): value for key, value in given.items()}  # Spark's are case-blind
        self._client = client_config(options)
        topic = options.get("subscribe", "")
        if not topic or "," in topic:
            raise SourceOptionError("option subscribe must name exactly one topic")
        self._topic = topic
        self._starting = options.get("startingoffsets", "earliest")
        if self._starting not in ("earliest", "latest"):
            raise SourceOptionError("option startingOffsets must be earliest or latest")
        limit = int(options.get("maxoffsetspertrigger", "0") or 0)
        self._max_per_trigger = limit if limit > 0 else None
        self._probe: Consumer | None = None
        self._target: dict[int, int] | None = None
        self._log_ends: dict[int, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_probe"] = None  # a consumer never travels to Spark's workers
        return state

    # -- planning (on the driver) ----------------------------------------------------------

    def initialOffset(self) -> dict[str, int]:  # noqa: N802 - Spark's name
        if self._starting == "latest":
            return {str(p): end for p, end in self._true_ends().items()}
        return {str(p): low for p, (low, _) in self._watermarks().items()}

    def getDefaultReadLimit(self) -> ReadLimit:  # noqa: N802 - Spark's name
        if self._max_per_trigger is None:
            return ReadAllAvailable()
        return ReadMaxRows(self._max_per_trigger)

    def prepareForTriggerAvailableNow(self) -> None:  # noqa: N802 - Spark's name
        self._target = self._true_ends()

    def latestOffset(  # noqa: N802 - Spark's name
        self, start: dict[str, int] | None = None, limit: ReadLimit | None = None
    ) -> dict[str, int]:
        ends = dict(self._target) if self._target is not None else self._true_ends()
        self._log_ends = ends
        begun = {int(p): int(o) for p, o in (start or {}).items()}
        ranges = {p: (begun.get(p, 0), end) for p, end in ends.items()}
        max_rows = limit.max_rows if isinstance(limit, ReadMaxRows) else None
        return {str(p): end for p, end in limited_ends(ranges, max_rows).items()}

    def partitions(self, start: dict[str, int], end: dict[str, int]) -> Sequence[KafkaRange]:
        begun = {int(p): int(o) for p, o in start.items()}
        ends = {int(p): int(o) for p, o in end.items()}
        log_ends = self._log_ends or self._true_ends()
        return [
            KafkaRange(p, begun.get(p, 0), stop, stop >= log_ends.get(p, stop))
            for p, stop in sorted(ends.items())
            if stop > begun.get(p, 0)
        ]

    def commit(self, end: dict[str, int]) -> None:
        """Nothing to do: the offsets are Spark's, in its checkpoint."""

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def _consumer(self) -> Consumer:
        if self._probe is None:
            self._probe = _new_consumer(self._client)
        return self._probe

    def _watermarks(self) -> dict[int, tuple[int, int]]:
        consumer = self._consumer()
        return {
            p: consumer.get_watermark_offsets(TopicPartition(self._topic, p), timeout=_TIMEOUT_S)
            for p in topic_partitions(consumer, self._topic, _TIMEOUT_S)
        }

    def _true_ends(self) -> dict[int, int]:
        """Per partition, the offset after its last record, found by reading (see above)."""
        watermarks = self._watermarks()
        ends = {p: high for p, (_, high) in watermarks.items()}
        probing = {p: high - 1 for p, (low, high) in watermarks.items() if high > low}
        if probing:
            ends.update(_highest_offsets(self._consumer(), self._topic, probing))
        return ends

    # -- reading (in Spark's Python workers) -------------------------------------------------

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        assert isinstance(partition, KafkaRange)
        consumer = _new_consumer(self._client)
        try:
            yield from _read_range(consumer, self._topic, partition)
        finally:
            consumer.close()


def limited_ends(ranges: Mapping[int, tuple[int, int]], max_rows: int | None) -> dict[int, int]:
    """End offsets for [start, end) ranges cut to about `max_rows` in all, shared in proportion
    to what each partition has waiting; a partition with anything waiting gets at least one, so
    no partition is passed over while the others advance (event-time order needs them all)."""
    waiting = {p: max(end - start, 0) for p, (start, end) in ranges.items()}
    total = sum(waiting.values())
    if max_rows is None or total <= max_rows:
        return {p: end for p, (_, end) in ranges.items()}
    return {
        p: start + (max(1, waiting[p] * max_rows // total) if waiting[p] else 0)
        for p, (start, _) in ranges.items()
    }


def _new_consumer(client: Mapping[str, str]) -> Consumer:
    return Consumer(
        {
            **client,
            "group.id": READER_GROUP,
            "client.id": f"fraudstream-spark-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )


def _highest_offsets(
    consumer: Consumer, topic: str, from_offsets: dict[int, int]
) -> dict[int, int]:
    """Read every partition from the given offset to its end; per partition, the highest offset
    seen plus one (nothing for a partition that gave no record)."""
    consumer.assign([TopicPartition(topic, p, o) for p, o in from_offsets.items()])
    highest: dict[int, int] = {}
    open_partitions = set(from_offsets)
    deadline = time.monotonic() + _TIMEOUT_S
    try:
        while open_partitions:
            if time.monotonic() > deadline:
                raise KafkaException(f"no end of partitions {sorted(open_partitions)} in sight")
            # consume() waits for its full count or the timeout: ask little, often
            for message in consumer.consume(100, _SHORT_POLL_S):
                p = message.partition() or 0
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    open_partitions.discard(p)
                    continue
                highest[p] = max(highest.get(p, 0), (message.offset() or 0) + 1)
    finally:
        consumer.unassign()
    return highest


def _read_range(consumer: Consumer, topic: str, part: KafkaRange) -> Iterator[pa.RecordBatch]:
    """The records of `part`, in offset order, in Arrow batches of up to `_ROWS_PER_BATCH`."""
    consumer.assign([TopicPartition(topic, part.partition, part.start)])
    rows: list[tuple[Any, ...]] = []
    position = part.start
    deadline = time.monotonic() + _TIMEOUT_S
    while position < part.end:
        if time.monotonic() > deadline:
            raise KafkaException(
                f"{topic}[{part.partition}]: offsets {position}..{part.end - 1} were planned"
                f" but not delivered within {_TIMEOUT_S:.0f} s"
            )
        wanted = min(_ROWS_PER_BATCH, part.end - position)  # consume() waits for them all
        for message in consumer.consume(wanted, _POLL_S):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue  # the planned offsets exist: keep reading until they arrive
                raise KafkaException(error)
            offset = message.offset() or 0
            if offset < position:
                continue
            if offset >= part.end:
                position = part.end
                break
            kind, millis = message.timestamp()
            rows.append(
                (message.key(), message.value(), offset, millis * 1000, kind, _headers(message))
            )
            position = offset + 1
            deadline = time.monotonic() + _TIMEOUT_S
        if len(rows) >= _ROWS_PER_BATCH or (rows and position >= part.end):
            yield _record_batch(rows, topic, part)
            rows = []


def _record_batch(rows: list[tuple[Any, ...]], topic: str, part: KafkaRange) -> pa.RecordBatch:
    keys, values, offsets, micros, kinds, headers = zip(*rows, strict=True)
    n = len(rows)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(keys, pa.binary()),
            pa.array(values, pa.binary()),
            pa.array([topic] * n, pa.string()),
            pa.array([part.partition] * n, pa.int32()),
            pa.array(offsets, pa.int64()),
            pa.array(micros, pa.timestamp("us", tz="UTC")),
            pa.array(kinds, pa.int32()),
            pa.array(headers, pa.list_(_HEADER)),
            pa.array([part.end_of_log] * n, pa.bool_()),
        ],
        schema=_ARROW_SCHEMA,
    )


def _headers(message: Any) -> list[dict[str, Any]] | None:
    """A message's headers as the built-in format's `headers` column holds them (None: none)."""
    found = message.headers()
    if not found:
        return None
    return [{"key": key, "value": value} for key, value in found]
