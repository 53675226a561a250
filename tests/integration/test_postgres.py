"""The PostgreSQL adapter against the embedded server: migrations, the idempotent sink, outages.

Every test gets a database of its own, created and dropped around it.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString

import polars as pl
import psycopg
import pytest
from psycopg import sql

from fraudstream.adapters.postgres import (
    APPLICATION_NAME,
    PostgresSink,
    migrate,
    safe_target,
    wait_for_postgres,
)
from fraudstream.adapters.postgres_schema import (
    TRANSACTION_COLUMNS,
    Migration,
    MigrationError,
    load_migrations,
)
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.ports import DeadLetter, ScoredBatch, SinkUnavailable
from fraudstream.stack.process import free_port

DECIDED_AT = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)


SHIPPED = [migration.version for migration in load_migrations()]


@pytest.fixture
def migrated(database: str) -> str:
    assert migrate(database) == SHIPPED
    return database


@pytest.fixture(scope="module")
def scored() -> pl.DataFrame:
    """3 000 transactions scored by the engine with the shipped rules, with source positions."""
    config = FeatureConfig()
    engine = Engine(
        compile_ruleset(parse_ruleset(load_default_ruleset_text()), available_columns(config))
    )
    stream = generate(GeneratorConfig(seed=3, n_transactions=3000))
    decisions = engine.process(stream.transactions, FeatureState(config))
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    return decisions.frame.with_columns(
        kafka_partition=(index % 3).cast(pl.Int32),
        kafka_offset=index,
        ingested_at=pl.when(index % 10 == 0)
        .then(None)
        .otherwise(pl.col("timestamp") + timedelta(seconds=1)),
        decided_at=pl.lit(DECIDED_AT, pl.Datetime("us", "UTC")),
    )


def _batch(frame: pl.DataFrame, *letters: DeadLetter) -> ScoredBatch:
    return ScoredBatch(frame, letters)


def _count(url: str, table: str, where: LiteralString = "true") -> int:
    query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
        sql.Identifier(table), sql.SQL(where)
    )
    with psycopg.connect(url) as connection:
        row = connection.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _stored(url: str) -> dict[str, dict[str, Any]]:
    """transaction_id -> the stored columns, as the frame names them."""
    columns = sql.SQL(", ").join(map(sql.Identifier, TRANSACTION_COLUMNS))
    with psycopg.connect(url) as connection:
        cursor = connection.execute(sql.SQL("SELECT {} FROM transactions").format(columns))
        rows = cursor.fetchall()
    named = [("timestamp" if name == "event_time" else name) for name in TRANSACTION_COLUMNS]
    return {row[0]: dict(zip(named, row, strict=True)) for row in rows}


def _expected(frame: pl.DataFrame) -> dict[str, dict[str, Any]]:
    named = [("timestamp" if name == "event_time" else name) for name in TRANSACTION_COLUMNS]
    return {row["transaction_id"]: row for row in frame.select(named).iter_rows(named=True)}


def _letter(offset: int, raw: bytes) -> DeadLetter:
    return DeadLetter(
        topic="transactions",
        partition=1,
        offset=offset,
        raw=raw,
        error="amount: expected a number",
        field="amount",
        received_at=DECIDED_AT,
    )


# --- migrations ---------------------------------------------------------------------------


def test_migrate_applies_the_pipeline_schema_once(database: str) -> None:
    assert migrate(database) == SHIPPED
    assert migrate(database) == []
    with psycopg.connect(database) as connection:
        ledger = connection.execute(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
        )
        assert ledger.fetchall() == [(m.version, m.name, m.checksum) for m in load_migrations()]
        tables = connection.execute(
            "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c"
            " WHERE c.relname = ANY(%s)",
            (["transactions", "fraud_transactions", "dead_letters", "models", "labels"],),
        ).fetchall()
        indexes = connection.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
        ).fetchall()
    assert len(tables) == 5
    assert all(comment for _, comment in tables)
    assert {"transactions_flagged_decided_at_idx", "dead_letters_received_at_idx"} <= {
        name for (name,) in indexes
    }


def test_concurrent_migrations_apply_each_version_exactly_once(database: str) -> None:
    start = threading.Barrier(4)

    def worker() -> list[int]:
        start.wait()
        return migrate(database)

    with ThreadPoolExecutor(4) as pool:
        results = [future.result() for future in [pool.submit(worker) for _ in range(4)]]
    # each migration takes the lock in its own transaction, so the processes may share the
    # work; what matters is that every version is applied once, in order within each process
    applied = [version for result in results for version in result]
    assert sorted(applied) == SHIPPED
    assert all(result == sorted(result) for result in results)
    assert _count(database, "schema_migrations") == len(SHIPPED)


def test_an_edited_applied_migration_is_refused_naming_its_file(migrated: str) -> None:
    shipped = load_migrations()
    edited = [dataclasses.replace(shipped[0], sql=shipped[0].sql + "\n-- edited\n")]
    with pytest.raises(MigrationError, match=r"0001_pipeline\.sql"):
        migrate(migrated, edited)


def test_later_migrations_apply_in_order_and_a_failing_one_leaves_nothing(migrated: str) -> None:
    shipped = load_migrations()
    last = SHIPPED[-1]
    second = Migration(
        last + 1, "extra", "CREATE TABLE extra (x integer); INSERT INTO extra VALUES (7);"
    )
    broken = Migration(last + 2, "broken", "CREATE TABLE doomed (x integer); SELECT * FROM no;")
    with pytest.raises(psycopg.errors.UndefinedTable):
        migrate(migrated, [*shipped, broken, second])
    assert _count(migrated, "extra") == 1  # applied, in its own transaction, before `broken`
    with psycopg.connect(migrated) as connection:
        versions = connection.execute("SELECT version FROM schema_migrations ORDER BY 1")
        assert versions.fetchall() == [(v,) for v in [*SHIPPED, last + 1]]
        doomed = connection.execute("SELECT to_regclass('doomed')").fetchone()
    assert doomed == (None,)
    assert migrate(migrated, [*shipped, second]) == []


# --- the sink -----------------------------------------------------------------------------


def test_a_scored_batch_is_stored_exactly_with_its_flagged_rows(
    migrated: str, scored: pl.DataFrame
) -> None:
    with psycopg.connect(migrated, autocommit=True) as connection:  # instants, whatever the zone
        connection.execute(
            sql.SQL("ALTER DATABASE {} SET TimeZone = 'Asia/Kathmandu'").format(
                sql.Identifier(str(connection.info.dbname))
            )
        )
    with PostgresSink(migrated) as sink:
        sink.write(_batch(scored))
    assert _count(migrated, "transactions") == scored.height
    flagged = int(scored["is_flagged"].sum())
    assert flagged > 0
    assert _count(migrated, "fraud_transactions") == flagged
    assert _count(migrated, "transactions", "is_flagged") == flagged
    assert _stored(migrated) == _expected(scored)  # every column, arrays, nulls, instants
    with psycopg.connect(migrated) as connection:
        fraud = connection.execute(
            "SELECT transaction_id, event_time, card_ref, amount, score, action, rules_fired,"
            " reasons, decided_at FROM fraud_transactions ORDER BY transaction_id"
        ).fetchall()
    columns = ["transaction_id", "timestamp", "card_ref", "amount", "score", "action"]
    columns += ["rules_fired", "reasons", "decided_at"]
    assert fraud == scored.filter("is_flagged").select(columns).sort("transaction_id").rows()


def test_awkward_text_and_nulls_round_trip(migrated: str, scored: pl.DataFrame) -> None:
    awkward = scored.head(4).with_columns(
        reasons=pl.Series(
            [
                ["card_velocity_10m: tx_count_by_card_10m=7, amount=12.5"],
                ['quote " and \\ backslash', "{braces}, commas", "NULL", "", "  spaced  "],
                [],
                ["line\nbreak\ttab", "ünïcødé ✓"],
            ]
        ),
        rules_fired=pl.Series([["a"], ["NULL", "b,c"], [], ['"']]),
        device_id=pl.Series(["", None, 'say "hi"', "back\\slash"]),
        model_score=pl.Series([None, 0.25, float("nan"), 1e-300]),
        model_version=pl.Series([None, "m1", None, "m2"]),
        latitude=pl.Series([None, -33.123456789012345, 0.1 + 0.2, 89.99999999999999]),
    )
    with PostgresSink(migrated) as sink:
        sink.write(_batch(awkward))
    stored, expected = _stored(migrated), _expected(awkward)
    nan_row = awkward["transaction_id"][2]
    assert math.isnan(stored[nan_row].pop("model_score"))  # NaN != NaN, so apart
    expected[nan_row].pop("model_score")
    assert stored == expected


def test_writing_a_batch_again_or_overlapping_adds_only_new_rows(
    migrated: str, scored: pl.DataFrame
) -> None:
    first, overlapping = scored.slice(0, 2000), scored.slice(1000, 2000)
    with PostgresSink(migrated) as sink:
        sink.write(_batch(first))
        before = _stored_at(migrated)
        sink.write(_batch(first))
        assert _count(migrated, "transactions") == 2000
        sink.write(_batch(overlapping))
        sink.write(_batch(pl.concat([scored.slice(2500, 10), scored.slice(2500, 10)])))
    assert _count(migrated, "transactions") == scored.height
    assert _count(migrated, "fraud_transactions") == int(scored["is_flagged"].sum())
    after = _stored_at(migrated)
    assert {key: after[key] for key in before} == before  # earlier rows untouched
    assert _stored(migrated) == _expected(scored)


def _stored_at(url: str) -> dict[str, datetime]:
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT transaction_id, stored_at FROM transactions")
        return dict(rows.fetchall())


def test_concurrent_writers_of_overlapping_batches_store_each_row_once(
    migrated: str, scored: pl.DataFrame
) -> None:
    halves = [scored.slice(0, 2000), scored.slice(1000, 2000).reverse()]
    start = threading.Barrier(2)

    def write(frame: pl.DataFrame) -> None:
        with PostgresSink(migrated) as sink:
            start.wait()
            sink.write(_batch(frame))

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(write, half) for half in halves]:
            future.result()
    assert _count(migrated, "transactions") == scored.height
    assert _count(migrated, "fraud_transactions") == int(scored["is_flagged"].sum())


def test_dead_letters_are_stored_byte_for_byte_once(migrated: str, scored: pl.DataFrame) -> None:
    letters = (_letter(41, b"\xff{not json"), _letter(42, b'{"amount": "x"}'), _letter(43, b""))
    with PostgresSink(migrated) as sink:
        sink.write(_batch(scored.head(0), *letters))
        sink.write(_batch(scored.head(5), *letters[::-1]))
    with psycopg.connect(migrated) as connection:
        rows = connection.execute(
            "SELECT topic, kafka_partition, kafka_offset, raw, error, field, received_at"
            " FROM dead_letters ORDER BY kafka_offset"
        ).fetchall()
    assert rows == [
        (x.topic, x.partition, x.offset, x.raw, x.error, x.field, x.received_at) for x in letters
    ]
    assert _count(migrated, "transactions") == 5


def test_a_frame_without_a_stored_column_is_refused(migrated: str, scored: pl.DataFrame) -> None:
    with PostgresSink(migrated) as sink, pytest.raises(ValueError, match="reasons"):
        sink.write(_batch(scored.head(3).drop("reasons")))


# --- outages ------------------------------------------------------------------------------


def test_an_unreachable_server_raises_sink_unavailable_quickly_without_the_password(
    scored: pl.DataFrame,
) -> None:
    url = f"postgresql://fraud:s3cret-pw@127.0.0.1:{free_port()}/fraudstream"
    sink = PostgresSink(url, connect_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(SinkUnavailable) as raised:
        sink.write(_batch(scored.head(10)))
    assert time.monotonic() - started < 3
    message = str(raised.value)
    assert "s3cret-pw" not in message
    assert "s3cret-pw" not in repr(sink)
    assert safe_target(url) in message
    with pytest.raises(SinkUnavailable):  # and again: no state left behind
        sink.write(_batch(scored.head(10)))
    with pytest.raises(SinkUnavailable, match="unavailable"):
        wait_for_postgres(url, timeout_s=0.5)
    sink.close()


def test_a_killed_connection_raises_then_the_next_write_reconnects(
    migrated: str, scored: pl.DataFrame
) -> None:
    wait_for_postgres(migrated, timeout_s=5)
    first, second = scored.slice(0, 1500), scored.slice(1500, 1500)
    with PostgresSink(migrated) as sink:
        sink.write(_batch(first))
        assert _terminate_sink_backends(migrated) == 1
        with pytest.raises(SinkUnavailable, match="unavailable"):
            sink.write(_batch(second, _letter(1, b"x")))
        assert _count(migrated, "transactions") == first.height  # nothing of the failed batch
        assert _count(migrated, "dead_letters") == 0
        sink.write(_batch(second, _letter(1, b"x")))
    assert _count(migrated, "transactions") == scored.height
    assert _count(migrated, "fraud_transactions") == int(scored["is_flagged"].sum())
    assert _count(migrated, "dead_letters") == 1


def test_a_malformed_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="not a valid") as raised:
        PostgresSink("postgresql://fraud:s3cret%zz@127.0.0.1:5432/x")
    assert "s3cret" not in str(raised.value)


def _terminate_sink_backends(url: str) -> int:
    """Kill the sink's server process from another connection; wait until it is gone."""
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (APPLICATION_NAME,),
        ).fetchall()
    return sum(1 for (killed,) in rows if killed)
