"""The Delta Lake history: idempotent appends per source position, concurrent writers, the
readers (Polars, pandas, DuckDB), agreement with PostgreSQL, and the maintenance commands."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import psycopg
import pytest
from deltalake import DeltaTable, write_deltalake
from pipeline_helpers import fresh_pipeline, wait_for
from polars.testing import assert_frame_equal
from psycopg import sql
from typer.testing import CliRunner

from fraudstream.adapters.delta import (
    HISTORY_SCHEMA,
    DeltaHistorySink,
    history_frame,
    read_history,
)
from fraudstream.adapters.delta_maintenance import describe
from fraudstream.adapters.kafka import TransactionProducer
from fraudstream.adapters.postgres import PostgresSink, migrate
from fraudstream.adapters.postgres_schema import TRANSACTION_COLUMNS
from fraudstream.cli import app
from fraudstream.config import HistorySettings
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.ports import ScoredBatch, SinkUnavailable
from fraudstream.stack import Endpoints

TOPIC = "transactions"
DECIDED_AT = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(scope="module")
def scored() -> pl.DataFrame:
    """3 000 scored transactions read from 3 partitions: row i is offset i // 3 of partition
    i % 3, so any run of rows holds a contiguous run of offsets of each partition."""
    config = FeatureConfig()
    engine = Engine(
        compile_ruleset(parse_ruleset(load_default_ruleset_text()), available_columns(config))
    )
    stream = generate(GeneratorConfig(seed=3, n_transactions=3000))
    decisions = engine.process(stream.transactions, FeatureState(config))
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    return decisions.outcome.with_columns(
        kafka_partition=(index % 3).cast(pl.Int32),
        kafka_offset=index // 3,
        ingested_at=pl.when(index % 10 == 0)
        .then(None)
        .otherwise(pl.col("timestamp") + timedelta(seconds=1)),
        decided_at=pl.lit(DECIDED_AT, pl.Datetime("us", "UTC")),
    )


def _rows(frame: pl.DataFrame, start: int, stop: int) -> ScoredBatch:
    return ScoredBatch(frame.slice(start, stop - start), ())


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(HISTORY_SCHEMA.names()).sort("transaction_id")


def _assert_holds_exactly(uri: str, frame: pl.DataFrame) -> None:
    assert_frame_equal(_sorted(read_history(uri)), _sorted(history_frame(frame)), check_exact=True)


# --- the sink -----------------------------------------------------------------------------------


def test_replayed_and_recut_batches_add_nothing(tmp_path: Path, scored: pl.DataFrame) -> None:
    uri = str(tmp_path / "decisions")
    first = DeltaHistorySink(uri, TOPIC)
    first.write(_rows(scored, 0, 1000))
    first.write(_rows(scored, 1000, 2000))
    first.write(_rows(scored, 1000, 2000))  # the same batch again, from the cache
    # A crash: a new worker reads on from older offsets, cutting the batches elsewhere.
    second = DeltaHistorySink(uri, TOPIC)
    second.write(_rows(scored, 500, 2500))
    second.write(_rows(scored, 2400, 3000))
    version = DeltaTable(uri).version()
    second.write(_rows(scored, 0, 3000))
    assert DeltaTable(uri).version() == version, "a batch of written rows commits nothing"

    _assert_holds_exactly(uri, scored)
    table = DeltaTable(uri)
    assert [table.transaction_version(second.app_id(p)) for p in range(3)] == [1000] * 3
    assert table.metadata().partition_columns == ["event_date"]
    assert list(Path(uri).glob("event_date=*/*.parquet")), "files are laid out by date"
    history = read_history(uri)
    assert (history["event_date"] == history["event_time"].dt.date()).all()
    assert history.schema == HISTORY_SCHEMA
    assert history["rules_fired"].list.len().sum() > 0, "lists stay lists"


def test_a_partition_back_from_another_writer_is_not_written_twice(
    tmp_path: Path, scored: pl.DataFrame
) -> None:
    """Worker A wrote offsets to 333; the partitions moved to B, which wrote to 666 and died
    before committing; back at A, the batch from 333 on holds nothing new. A's cached
    versions (333) are stale: it must notice B's commits and read them again."""
    uri = str(tmp_path / "decisions")
    a, b = DeltaHistorySink(uri, TOPIC), DeltaHistorySink(uri, TOPIC)
    a.write(_rows(scored, 0, 1000))
    b.write(_rows(scored, 1000, 2000))
    a.write(_rows(scored, 1000, 2500))
    _assert_holds_exactly(uri, scored.head(2500))


def test_rows_without_a_source_position_are_appended_as_they_come(
    tmp_path: Path, scored: pl.DataFrame
) -> None:
    uri = str(tmp_path / "decisions")
    unplaced = scored.head(100).with_columns(kafka_partition=None, kafka_offset=None)
    sink = DeltaHistorySink(uri, TOPIC)
    sink.write(ScoredBatch(unplaced, ()))
    sink.write(ScoredBatch(unplaced, ()))
    assert read_history(uri).height == 200, "no position, no deduplication (documented)"


def test_a_storage_error_raises_sink_unavailable_naming_the_table(
    tmp_path: Path, scored: pl.DataFrame
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    sink = DeltaHistorySink(str(blocker / "decisions"), TOPIC)
    with pytest.raises(SinkUnavailable, match=r"delta table .*a-file/decisions"):
        sink.write(_rows(scored, 0, 10))


def test_polars_pandas_and_duckdb_read_the_same_figures(
    tmp_path: Path, scored: pl.DataFrame
) -> None:
    uri = str(tmp_path / "decisions")
    sink = DeltaHistorySink(uri, TOPIC)
    for start in range(0, 3000, 750):
        sink.write(_rows(scored, start, start + 750))

    frame = pl.read_delta(uri)
    pandas = DeltaTable(uri).to_pandas()
    connection = duckdb.connect()
    connection.register("decisions", DeltaTable(uri).to_pyarrow_dataset())
    row = connection.execute(
        "SELECT count(*), sum(amount), count(*) FILTER (WHERE is_flagged),"
        " count(DISTINCT event_date) FROM decisions"
    ).fetchone()
    assert row is not None
    count, amount, flagged, dates = row

    assert count == len(pandas) == frame.height == 3000
    assert amount == pytest.approx(frame["amount"].sum()) == pytest.approx(pandas["amount"].sum())
    assert flagged == int(pandas["is_flagged"].sum()) == frame["is_flagged"].sum() > 0
    assert dates == frame["event_date"].n_unique() == describe(uri).dates > 1
    assert pandas["reasons"].map(list).tolist() == frame["reasons"].to_list()


# --- two writers at once --------------------------------------------------------------------------


def _write_partitions(
    uri: str,
    source: str,
    partitions: list[int],
    barrier: Any,
    results: Any,
) -> None:
    """A worker process: its partitions' rows in batches of 50, each written twice."""
    try:
        frame = pl.read_parquet(source).filter(pl.col("kafka_partition").is_in(partitions))
        sink = DeltaHistorySink(uri, TOPIC)
        barrier.wait(60)
        started = time.time()
        for start in range(0, frame.height, 50):
            batch = _rows(frame, start, start + 50)
            sink.write(batch)
            sink.write(batch)
        results.put((partitions, started, time.time(), None))
    except Exception as error:
        results.put((partitions, 0.0, 0.0, repr(error)))


def test_two_processes_append_to_one_table_at_once(tmp_path: Path, scored: pl.DataFrame) -> None:
    uri, source = str(tmp_path / "decisions"), str(tmp_path / "scored.parquet")
    scored.write_parquet(source)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_write_partitions, args=(uri, source, part, barrier, results))
        for part in ([0], [1, 2])
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert [error for *_, error in outcomes] == [None, None]
    assert max(start for _, start, _, _ in outcomes) < min(end for _, _, end, _ in outcomes), (
        "the writers should have overlapped"
    )
    _assert_holds_exactly(uri, scored)
    assert DeltaTable(uri).version() == 1000 // 50 + 2000 // 50, "one commit per new batch"


# --- the same decisions as PostgreSQL ------------------------------------------------------------


@pytest.fixture
def database(database: str) -> str:
    """Here every test starts from the pipeline schema (conftest's database, migrated)."""
    migrate(database)
    return database


def _postgres_decisions(url: str) -> pl.DataFrame:
    columns = sql.SQL(", ").join(map(sql.Identifier, TRANSACTION_COLUMNS))
    with psycopg.connect(url) as connection:
        rows = connection.execute(sql.SQL("SELECT {} FROM transactions").format(columns)).fetchall()
    schema = {column: HISTORY_SCHEMA[column] for column in TRANSACTION_COLUMNS}
    return pl.DataFrame(rows, schema=schema, orient="row").sort("transaction_id")


def _delta_decisions(uri: str) -> pl.DataFrame:
    return read_history(uri).select(TRANSACTION_COLUMNS).sort("transaction_id")


def test_the_delta_table_equals_the_decisions_in_postgres(
    database: str, tmp_path: Path, scored: pl.DataFrame
) -> None:
    uri = str(tmp_path / "decisions")
    sinks = [PostgresSink(database), DeltaHistorySink(uri, TOPIC)]
    for start, stop in ((0, 1200), (1200, 2000), (800, 2600), (2600, 3000), (0, 3000)):
        for sink in sinks:
            sink.write(_rows(scored, start, stop))
    for sink in sinks:
        sink.close()
    stored = _postgres_decisions(database)
    assert stored.height == 3000
    assert_frame_equal(_delta_decisions(uri), stored, check_exact=True)


def test_workers_write_the_same_decisions_to_delta_as_to_postgres(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    """End to end: two worker processes, each with a Delta sink beside the PostgreSQL one."""
    stream = generate(GeneratorConfig(seed=5, n_transactions=4000, days=2))
    total = stream.transactions.height
    uri = str(tmp_path / "history")
    with fresh_pipeline(endpoints, tmp_path) as fresh:
        settings = fresh.settings.model_copy(update={"history": HistorySettings(delta_path=uri)})
        pipeline = dataclasses.replace(fresh, settings=settings)
        workers = pipeline.workers(2)
        workers.start()
        try:
            assert workers.wait_assigned(60), "both workers should hold partitions"
            producer = TransactionProducer(endpoints.kafka, settings.kafka.transactions_topic)
            producer.publish(stream.transactions, rate=4000)
            wait_for(
                lambda: (
                    pipeline.count("transactions") >= total
                    and DeltaTable.is_deltatable(uri)
                    and describe(uri).rows >= total
                ),
                120,
                "every decision in PostgreSQL and in the Delta table",
            )
        finally:
            codes = workers.stop()
        assert codes == [0, 0]
        stored = _postgres_decisions(pipeline.postgres_url)
        assert stored.height == total
        assert_frame_equal(_delta_decisions(uri), stored, check_exact=True)


# --- the commands ---------------------------------------------------------------------------------


def _small_appends(uri: str, frame: pl.DataFrame, rows: int) -> None:
    sink = DeltaHistorySink(uri, TOPIC)
    for start in range(0, frame.height, rows):
        sink.write(_rows(frame, start, start + rows))


def _data_files(uri: str) -> int:
    return len(list(Path(uri).glob("event_date=*/*.parquet")))


def test_compact_merges_small_files_and_vacuum_deletes_the_replaced_ones(
    tmp_path: Path, scored: pl.DataFrame
) -> None:
    uri = str(tmp_path / "decisions")
    few_days = scored.head(600)
    _small_appends(uri, few_days, 20)
    before = describe(uri)
    runner = CliRunner()

    compacted = runner.invoke(app, ["history", "compact", "--path", uri])
    assert compacted.exit_code == 0, compacted.output
    assert "removed" in compacted.output
    after = describe(uri)
    assert after.files < before.files and after.files == after.dates
    assert after.rows == before.rows == 600
    _assert_holds_exactly(uri, few_days)
    assert list(Path(uri, "_delta_log").glob("*.checkpoint.parquet")), "compact checkpoints"

    args = ["history", "vacuum", "--path", uri, "--retention-hours", "0"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "retention" in refused.output
    dry = runner.invoke(app, [*args, "--no-enforce-retention", "--dry-run"])
    assert dry.exit_code == 0 and "would delete" in dry.output
    replaced = _data_files(uri) - after.files
    assert replaced >= before.files - after.files, "compacted files stay until vacuum"
    assert f"would delete {replaced} files" in dry.output
    vacuumed = runner.invoke(app, [*args, "--no-enforce-retention"])
    assert vacuumed.exit_code == 0, vacuumed.output
    assert f"deleted {replaced} files" in vacuumed.output
    assert _data_files(uri) == after.files
    _assert_holds_exactly(uri, few_days)

    shown = runner.invoke(app, ["history", "show", "--path", uri])
    assert shown.exit_code == 0 and "600" in shown.output


@pytest.mark.parametrize("command", [["show"], ["compact"], ["vacuum", "--retention-hours", "1"]])
def test_a_missing_table_is_named_with_exit_code_2(tmp_path: Path, command: list[str]) -> None:
    result = CliRunner().invoke(app, ["history", *command, "--path", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "no Delta table" in result.output
    assert "Traceback" not in result.output


def test_the_main_job_writes_history_under_the_data_dir_unless_told_where(
    tmp_path: Path, scored: pl.DataFrame
) -> None:
    from rich.console import Console

    from fraudstream.config import load_settings
    from fraudstream.pipeline_view import with_history

    quiet = Console(quiet=True)
    settings = load_settings(stack={"data_dir": tmp_path / "stack"})
    default = tmp_path / "stack" / "history" / "decisions"
    DeltaHistorySink(str(default), TOPIC).write(_rows(scored, 0, 10))

    kept = with_history(settings, False, quiet)
    assert kept.history.delta_path == str(default) and describe(str(default)).rows == 10
    fresh = with_history(settings, True, quiet)
    assert fresh.history.delta_path == str(default)
    assert not default.exists(), "a fresh broker log starts the default table over"

    told = load_settings(history={"delta_path": str(tmp_path / "mine")})
    assert with_history(told, True, quiet).history.delta_path == str(tmp_path / "mine")


def test_a_table_written_before_shadow_rules_gains_the_column_and_keeps_its_rows(
    tmp_path: Path, scored: pl.DataFrame
) -> None:
    uri = str(tmp_path / "history")
    old_schema = pl.DataFrame(schema=HISTORY_SCHEMA).drop("shadow_rules_fired").to_arrow().schema
    DeltaTable.create(uri, schema=old_schema, partition_by=["event_date"])
    old_rows = history_frame(scored.slice(0, 600)).drop("shadow_rules_fired")
    write_deltalake(uri, old_rows.to_arrow(), mode="append")
    sink = DeltaHistorySink(uri, TOPIC)
    sink.write(_rows(scored, 600, 1200))
    stored = read_history(uri).sort("transaction_id")
    assert stored.height == 1200
    assert stored.schema["shadow_rules_fired"] == pl.List(pl.String())
    old_ids = set(old_rows.get_column("transaction_id"))
    by_age = stored.with_columns(old=pl.col("transaction_id").is_in(list(old_ids)))
    assert by_age.filter("old").get_column("shadow_rules_fired").null_count() == 600
    assert by_age.filter(~pl.col("old")).get_column("shadow_rules_fired").null_count() == 0
