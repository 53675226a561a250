"""Change-data capture throughput: a PostgreSQL table's rows into Kafka by logical replication,
beside a polling baseline and the broker's own produce rate.

    python bench/capture.py [--rows 60000] [--per-transaction 300] [--baseline-rows 3000]

Starts the embedded stack in a temporary directory, creates a `payments` table and the
capture's slot, then inserts `--rows` rows in transactions of `--per-transaction`. Figures:

* capture: `Capture.run` from its start to the acknowledgement of the last commit (every row
  mapped, validated by the core, produced, confirmed by Kafka; its position stored and
  acknowledged to the server); rows/s.
* the seed-style baseline: poll `SELECT ... WHERE id > last ORDER BY id LIMIT 500`, map and
  validate each row the same way, produce it and flush (one message confirmed at a time),
  over the first `--baseline-rows` rows.
* the broker's floor: the capture's own messages (read back from the topic) produced again to
  another topic as fast as the producer goes, one flush at the end.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from datetime import UTC, datetime

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from psycopg import sql

from fraudstream.adapters.cdc_positions import Progress
from fraudstream.adapters.kafka import PRODUCER_DEFAULTS, ensure_topics
from fraudstream.config import Settings, load_settings
from fraudstream.runners.capture import Capture, source_of
from fraudstream.runners.capture_rows import Captured, RowMapper
from fraudstream.stack import Stack

TABLE = """
CREATE TABLE payments (
    id bigserial PRIMARY KEY, payment_ref text NOT NULL UNIQUE, booked_at timestamptz NOT NULL,
    amount numeric(12, 2) NOT NULL, card_token text, merchant text,
    currency char(3) NOT NULL DEFAULT 'EUR', country char(2)
)
"""
MAPPING = {
    "transaction_id": "payment_ref", "timestamp": "booked_at", "card_ref": "card_token",
    "merchant_id": "merchant",
}  # fmt: skip
INSERT = """
INSERT INTO payments (payment_ref, booked_at, amount, card_token, merchant, country)
SELECT 'p-' || i, timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
       (i %% 900) + 0.5, 'card-' || (i %% 5000), 'm-' || (i %% 300), 'DE'
FROM generate_series(%s::int, %s::int) AS i
"""


def insert_rows(url: str, rows: int, per_transaction: int) -> float:
    """Insert the rows in transactions of `per_transaction`; returns the seconds it took."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as connection:
        for first in range(1, rows + 1, per_transaction):
            connection.execute(INSERT, (first, min(first + per_transaction - 1, rows)))
    return time.perf_counter() - started


def time_capture(settings: Settings, rows: int) -> tuple[float, Progress]:
    """Seconds from the capture's start to the acknowledgement of its last row."""
    stop = threading.Event()
    captured = Progress()
    done_at: list[float] = []

    def confirmed(_: int, progress: Progress) -> None:
        captured.add(progress)
        if captured.rows_captured >= rows and not done_at:
            done_at.append(time.perf_counter())
            stop.set()

    capture = Capture(settings, on_confirmed=confirmed)
    started = time.perf_counter()
    capture.run(stop)
    return done_at[0] - started, captured


def time_polling(settings: Settings, topic: str, rows: int) -> float:
    """Seconds the seed-style poller takes for `rows` rows: one flushed message at a time."""
    source = source_of(settings)
    relation = source.describe().relation
    mapper = RowMapper(MAPPING, "")
    plan = mapper.plan(relation)
    columns = sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(column.name)) for column in relation.columns
    )
    query = sql.SQL(
        "SELECT p.id, {} FROM payments p WHERE p.id > %s ORDER BY p.id LIMIT 500"
    ).format(columns)
    producer = Producer({**PRODUCER_DEFAULTS, **_kafka(settings)})
    last, sent = 0, 0
    started = time.perf_counter()
    with psycopg.connect(source.url, autocommit=True) as connection:
        while sent < rows:
            for row_id, *values in connection.execute(query, (last,)).fetchall():
                record = mapper.record(plan, values)
                result = mapper.map(record, ("bench", 0, 0), datetime.now(UTC))
                if isinstance(result, Captured):
                    producer.produce(topic, result.value, result.key)
                    if producer.flush(30):
                        raise RuntimeError("a message was not delivered")
                last, sent = row_id, sent + 1
                if sent >= rows:
                    break
    return time.perf_counter() - started


def time_broker(settings: Settings, source_topic: str, topic: str, rows: int) -> float:
    """Seconds to produce the capture's `rows` messages again, flushed once."""
    consumer = Consumer({**_kafka(settings), "group.id": "bench-capture-reader"})
    partitions = consumer.list_topics(source_topic, timeout=10).topics[source_topic].partitions
    consumer.assign([TopicPartition(source_topic, p, OFFSET_BEGINNING) for p in partitions])
    messages: list[tuple[bytes | None, bytes | None]] = []
    while len(messages) < rows:
        batch = consumer.consume(1000, 1.0)
        messages.extend((m.key(), m.value()) for m in batch if m.error() is None)
    consumer.close()
    producer = Producer({**PRODUCER_DEFAULTS, **_kafka(settings)})
    started = time.perf_counter()
    for key, value in messages[:rows]:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60):
        raise RuntimeError("messages were not delivered")
    return time.perf_counter() - started


def _kafka(settings: Settings) -> dict[str, str]:
    servers = settings.kafka.bootstrap_servers
    assert servers is not None
    return settings.kafka.client_config(servers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--per-transaction", type=int, default=300)
    parser.add_argument("--baseline-rows", type=int, default=3_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        stack = Stack(load_settings(stack={"data_dir": data_dir}))
        with stack as endpoints:
            settings = load_settings(
                kafka={"bootstrap_servers": endpoints.kafka["bootstrap.servers"]},
                postgres={"url": endpoints.postgres_url},
                stack={"data_dir": data_dir},
                capture={"table": "payments", "columns": MAPPING, "slot": "bench_capture"},
            )
            with psycopg.connect(endpoints.postgres_url, autocommit=True) as connection:
                connection.execute(TABLE)
            preparing = Capture(settings)
            preparing.prepare()  # the slot exists before the rows are inserted
            preparing.close()
            insert_s = insert_rows(endpoints.postgres_url, args.rows, args.per_transaction)
            capture_s, progress = time_capture(settings, args.rows)
            ensure_topics(_kafka(settings), ["bench-poll", "bench-floor"], 4)
            poll_s = time_polling(settings, "bench-poll", args.baseline_rows)
            floor_s = time_broker(settings, "transactions", "bench-floor", args.rows)
            with psycopg.connect(endpoints.postgres_url, autocommit=True) as connection:
                version = connection.execute("SHOW server_version").fetchone()
                connection.execute("SELECT pg_drop_replication_slot('bench_capture')")
    capture_rate = progress.rows_captured / capture_s
    baseline_rate = args.baseline_rows / poll_s
    print(
        json.dumps(
            {
                "bench": "capture",
                "rows": args.rows,
                "rows_per_transaction": args.per_transaction,
                "capture_rows_per_s": round(capture_rate),
                "capture_s": round(capture_s, 2),
                "capture_transactions": progress.transactions,
                "baseline_poll_flush_each_rows_per_s": round(baseline_rate),
                "baseline_rows": args.baseline_rows,
                "broker_produce_rows_per_s": round(args.rows / floor_s),
                "source_insert_rows_per_s": round(args.rows / insert_s),
                "speedup_vs_baseline": round(capture_rate / baseline_rate, 1),
                "postgres": None if version is None else version[0],
                "partitions": settings.kafka.partitions,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
