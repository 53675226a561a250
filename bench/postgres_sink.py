"""The PostgreSQL sink's throughput beside a row-at-a-time INSERT loop (the seed's way).

    python bench/postgres_sink.py [--batches 50] [--batch-size 1000] [--repeat 3]

Starts the embedded stack in a temporary directory, scores a seeded stream with the shipped
rules once, then writes it as `--batches` scored batches through `PostgresSink` into a freshly
migrated database: median and best of `--repeat` runs, each on a new database, after one
untimed warm-up batch. Also measured: the same with the alert outbox (the default route: one
`alerts` row per flagged transaction, in the same transaction), the same batches written
again (all already stored: the idempotent fallback path), the three ways to feed COPY on the
same batches (psycopg `write_row` in text and in binary with `set_types`, Polars-rendered CSV;
COPY into the staging table only), and the baseline: one INSERT and one commit per row.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import polars as pl
import psycopg
from psycopg import sql

from fraudstream.adapters import postgres as pg
from fraudstream.adapters.postgres_schema import TRANSACTION_COLUMNS, render
from fraudstream.config import load_settings
from fraudstream.core.alerting import AlertRouting
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.ports import ScoredBatch
from fraudstream.runners.serve import alert_routing
from fraudstream.stack import Stack

BASELINE_ROWS = 2000
_BINARY_TYPES = {
    pl.String: "text", pl.Float64: "float8", pl.Boolean: "bool", pl.Int32: "int4",
    pl.Int64: "int8", pl.Datetime: "timestamptz", pl.List: "text[]",
}  # fmt: skip


def scored_frame(rows: int, seed: int) -> pl.DataFrame:
    config = FeatureConfig()
    spec = parse_ruleset(load_default_ruleset_text())
    engine = Engine(compile_ruleset(spec, available_columns(config)))
    stream = generate(GeneratorConfig(seed=seed, n_transactions=rows))
    frame = engine.process(stream.transactions, FeatureState(config)).frame
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    decided = datetime.now(UTC)
    return frame.with_columns(
        kafka_partition=(index % 6).cast(pl.Int32),
        kafka_offset=index,
        ingested_at=pl.col("timestamp"),
        decided_at=pl.lit(decided, pl.Datetime("us", "UTC")) + pl.duration(microseconds=index),
    )


def fresh_database(base_url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = urlunsplit(urlsplit(base_url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(base_url)._replace(path=f"/{name}"))
    pg.migrate(url)
    return url


def sink_rates(
    url: str, batches: list[pl.DataFrame], routing: AlertRouting | None = None
) -> tuple[float, float]:
    """Rows/s writing new batches, then rows/s writing the same batches again; with `routing`,
    every flagged row also gets its alert outbox rows in the same transaction."""
    rows = sum(batch.height for batch in batches[1:])
    with pg.PostgresSink(url, alert_routing=routing) as sink:
        sink.write(ScoredBatch(batches[0], ()))  # warm-up: connection, staging table, caches
        start = time.perf_counter()
        for batch in batches[1:]:
            sink.write(ScoredBatch(batch, ()))
        first = rows / (time.perf_counter() - start)
        start = time.perf_counter()
        for batch in batches[1:]:
            sink.write(ScoredBatch(batch, ()))
        again = rows / (time.perf_counter() - start)
    return first, again


def _stored_rows(batch: pl.DataFrame) -> list[tuple[object, ...]]:
    names = ["timestamp" if column == "event_time" else column for column in TRANSACTION_COLUMNS]
    return batch.select(names).rows()


def copy_method_rates(url: str, batches: list[pl.DataFrame]) -> dict[str, float]:
    """Rows/s of COPY into the staging table alone (each batch one transaction), per method."""
    columns = sql.SQL(", ").join(map(sql.Identifier, TRANSACTION_COLUMNS))
    text = sql.SQL("COPY fraudstream_staging ({}) FROM STDIN").format(columns)
    binary = sql.SQL("COPY fraudstream_staging ({}) FROM STDIN (FORMAT binary)").format(columns)
    schema = _stored_rows_schema(batches[0])
    types = [_BINARY_TYPES[dtype.base_type()] for dtype in schema]

    def write_row_text(cursor: psycopg.Cursor[tuple[object, ...]], batch: pl.DataFrame) -> None:
        with cursor.copy(text) as copy:
            for row in _stored_rows(batch):
                copy.write_row(row)

    def write_row_binary(cursor: psycopg.Cursor[tuple[object, ...]], batch: pl.DataFrame) -> None:
        with cursor.copy(binary) as copy:
            copy.set_types(types)
            for row in _stored_rows(batch):
                copy.write_row(row)

    def polars_csv(cursor: psycopg.Cursor[tuple[object, ...]], batch: pl.DataFrame) -> None:
        with cursor.copy(pg._COPY_STAGING) as copy:
            copy.write(render(batch).transactions)

    methods: dict[str, Callable[[psycopg.Cursor[tuple[object, ...]], pl.DataFrame], None]] = {
        "write_row_text": write_row_text,
        "write_row_binary": write_row_binary,
        "polars_csv": polars_csv,
    }
    rates = {}
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("SET TIME ZONE 'UTC'")
        connection.execute(pg._CREATE_STAGING)
        for name, method in methods.items():
            start = time.perf_counter()
            for batch in batches:
                with connection.transaction(), connection.cursor() as cursor:
                    method(cursor, batch)
            rates[name] = sum(batch.height for batch in batches) / (time.perf_counter() - start)
    return rates


def _stored_rows_schema(batch: pl.DataFrame) -> list[pl.DataType]:
    names = ["timestamp" if column == "event_time" else column for column in TRANSACTION_COLUMNS]
    return list(batch.select(names).schema.values())


def baseline_rate(url: str, frame: pl.DataFrame) -> float:
    """The seed's way: one parameterised INSERT and one commit per row."""
    insert = sql.SQL("INSERT INTO transactions ({}) VALUES ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, TRANSACTION_COLUMNS)),
        sql.SQL(", ").join(sql.Placeholder() * len(TRANSACTION_COLUMNS)),
    )
    with psycopg.connect(url) as connection:
        start = time.perf_counter()
        for row in _stored_rows(frame):
            connection.execute(insert, row)
            connection.commit()
        return frame.height / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="runs (median and best reported)")
    args = parser.parse_args()

    frame = scored_frame((args.batches + 1) * args.batch_size, args.seed)
    size = args.batch_size
    batches = [frame.slice(start, size) for start in range(0, frame.height, size)]
    settings = load_settings(stack={"data_dir": Path(tempfile.mkdtemp(prefix="bench-pg-"))})
    with Stack(settings) as endpoints:
        base = endpoints.postgres_url
        runs = sorted(
            (sink_rates(fresh_database(base), batches) for _ in range(args.repeat)),
            key=lambda rates: rates[0],
        )
        routing = alert_routing(settings)
        outbox = sorted(
            sink_rates(fresh_database(base), batches, routing)[0] for _ in range(args.repeat)
        )
        methods = copy_method_rates(fresh_database(base), batches[1:])
        baseline = baseline_rate(fresh_database(base), frame.head(BASELINE_ROWS))
        with psycopg.connect(base) as connection:
            server = connection.execute("SHOW server_version").fetchone()
    shutil.rmtree(settings.stack.data_dir, ignore_errors=True)
    sink, again = runs[len(runs) // 2]
    result = {
        "bench": "postgres_sink",
        "batch_size": size,
        "batches": args.batches,
        "repeats": args.repeat,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgres": server[0] if server else None,
        "method": "Polars CSV -> COPY in a savepoint; staging + ON CONFLICT when ids overlap",
        "sink_rows_per_s": round(sink),
        "sink_rows_per_s_best": round(runs[-1][0]),
        "sink_rewrite_same_batches_rows_per_s": round(again),
        "sink_with_alert_outbox_rows_per_s": round(outbox[len(outbox) // 2]),
        "flagged_share": round(frame.get_column("is_flagged").mean() or 0.0, 4),
        "copy_only_rows_per_s": {name: round(rate) for name, rate in methods.items()},
        "baseline": {
            "what": "one INSERT and one commit per row",
            "rows": BASELINE_ROWS,
            "rows_per_s": round(baseline),
        },
        "speedup": round(sink / baseline, 1),
        "target_rows_per_s": 50_000,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
