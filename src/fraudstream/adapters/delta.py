"""The decision history in Delta Lake: every scored transaction, appended batch by batch.

PostgreSQL holds the decisions the live system queries; this table holds the same rows as
Parquet files plus a transaction log (the `deltalake` package, no Spark), for analysts and
model training: Polars (`pl.read_delta`), pandas (`DeltaTable.to_pandas`) and DuckDB (over
`DeltaTable.to_pyarrow_dataset()`) read it as it is. Its columns are those of the `transactions`
table (`TRANSACTION_COLUMNS`, the event time named `event_time`) plus `event_date`, the UTC date
of the event time, by which the files are partitioned: a query of some days reads those days.

Idempotence. Kafka offsets are committed only after every sink confirmed a batch, so after a
crash batches are read again, possibly cut at other boundaries. Appending them again must add
nothing. Each commit therefore carries, in the same atomic log entry as its files, one Delta
"app transaction" per source partition: app id `fraudstream:<topic>:<partition>`, version = the
offset after the last row of that partition the table holds. Before appending, the sink drops
the rows whose offset is below their partition's version. This relies on one writer per
partition at a time (the consumer group's assignment) and on each writer appending a
partition's offsets in order, both true of the worker. The versions are cached between writes
and read again from the table on first use, after any failed write, and whenever the table
holds commits of another writer since this sink's last commit (a partition may have moved to
another worker and back): about a millisecond per partition, against ten or more for the append.
Rows without a source position (no `kafka_partition` or `kafka_offset`) are appended as they
come: a replay of such rows duplicates them. Readers that need one row per transaction then
deduplicate on `transaction_id`. The same holds for a transaction id published twice, at two
offsets: PostgreSQL keeps the first decision, this table both.

App ids name the topic, not the log: a topic whose offsets start over (deleted and created
again, or the embedded broker, whose log lives in memory, restarted) needs a new table.

Concurrency. Several workers append to one table, each for its own partitions. Blind appends
never conflict, so a commit that loses the race for a version number is retried on the next
one (`MAX_COMMIT_RETRIES` times). That needs a store that writes a log entry only if absent:
local disks do, and delta-rs 1.x uses S3's conditional writes; check an S3-compatible store
supports them before several workers share a table on it.

Small files. Every batch adds a file per event date, so a busy stream makes many small files
(and log entries); reading slows down as they pile up. `fraudstream history compact` rewrites
them into large ones and writes a log checkpoint; the files it replaced stay on disk, for
readers of older versions, until `fraudstream history vacuum` deletes those past retention
(`delta_maintenance.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import polars as pl
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import DeltaError, DeltaProtocolError, SchemaMismatchError
from deltalake.schema import Field

from fraudstream.adapters.postgres_schema import FRAME_NAMES, TRANSACTION_COLUMNS
from fraudstream.ports import ScoredBatch, SinkUnavailable

DEFAULT_TABLE_DIR: Final = Path("history/decisions")
"""Where `fraudstream run` keeps the history, under `stack.data_dir`, unless told otherwise."""

PARTITION_COLUMN: Final = "event_date"
MAX_COMMIT_RETRIES: Final = 100
"""Attempts at a commit that keeps losing the race for the next version to other writers."""

_UTC: Final = pl.Datetime("us", "UTC")
_TYPES: Final[dict[str, pl.DataType]] = {
    "event_time": _UTC,
    "ingested_at": _UTC,
    "decided_at": _UTC,
    "kafka_partition": pl.Int32(),
    "kafka_offset": pl.Int64(),
    "is_flagged": pl.Boolean(),
    "is_late": pl.Boolean(),
    "rules_fired": pl.List(pl.String),
    "reasons": pl.List(pl.String),
    "shadow_rules_fired": pl.List(pl.String),
    **dict.fromkeys(
        ("amount", "latitude", "longitude", "score", "rule_score", "model_score", "shadow_score"),
        pl.Float64(),
    ),
}
HISTORY_SCHEMA: Final = pl.Schema(
    {column: _TYPES.get(column, pl.String()) for column in TRANSACTION_COLUMNS}
    | {PARTITION_COLUMN: pl.Date()}
)
"""The table's columns: the `transactions` table's, then the partition column."""

_ARROW_SCHEMA: Final = pl.DataFrame(schema=HISTORY_SCHEMA).to_arrow().schema

Options = Mapping[str, str] | None


def history_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """The stored columns of a scored frame, typed as the table stores them; datetimes in UTC
    (naive ones taken as UTC, as in PostgreSQL)."""
    names = {column: FRAME_NAMES.get(column, column) for column in TRANSACTION_COLUMNS}
    missing = [name for name in names.values() if name not in frame.schema]
    if missing:
        raise ValueError(f"scored frame lacks the columns {missing}")
    stored = frame.select(
        _typed(name, frame.schema[name], HISTORY_SCHEMA[column]).alias(column)
        for column, name in names.items()
    )
    return stored.with_columns(pl.col("event_time").dt.date().alias(PARTITION_COLUMN))


def _typed(name: str, dtype: pl.DataType, target: pl.DataType) -> pl.Expr:
    column = pl.col(name)
    if isinstance(dtype, pl.Datetime):
        zoned = column.dt.replace_time_zone("UTC") if dtype.time_zone is None else column
        return zoned.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    return column.cast(target)


class DeltaHistorySink:
    """`Sink` appending every decision to the Delta table at `uri`, at most once per source
    position (see the module docstring). The table is created at the first write if absent;
    storage errors raise `SinkUnavailable`, a table of another schema raises as it is. Dead
    letters are not decisions: they stay PostgreSQL's."""

    def __init__(
        self,
        uri: str,
        topic: str,
        *,
        storage_options: Options = None,
        max_commit_retries: int = MAX_COMMIT_RETRIES,
    ) -> None:
        self._uri = uri
        self._topic = topic
        self._options = dict(storage_options or {})
        self._max_commit_retries = max_commit_retries
        self._table: DeltaTable | None = None
        self._versions: dict[int, int] = {}
        """Partition -> the offset after the last of its rows the table holds."""
        self._valid_at: int | None = None
        """The table version `_versions` was read or written at."""

    def __repr__(self) -> str:
        return f"DeltaHistorySink({safe_uri(self._uri)})"

    def app_id(self, partition: int) -> str:
        return f"fraudstream:{self._topic}:{partition}"

    def write(self, batch: ScoredBatch) -> None:
        """Append the batch's rows the table does not hold yet, with the partitions' new
        versions, in one commit; or raise having appended none of them."""
        if not batch.frame.height:
            return
        rows = history_frame(batch.frame)
        try:
            table = self._open()
            versions = self._current_versions(table, _partitions(rows))
            fresh, advanced = _unwritten(rows, versions)
            if fresh.height:
                self._append(table, fresh, advanced)
        except (SchemaMismatchError, DeltaProtocolError):
            self._forget()
            raise
        except (DeltaError, OSError) as error:
            self._forget()
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise SinkUnavailable(f"delta table {safe_uri(self._uri)}: {reason}") from None
        except BaseException:
            self._forget()
            raise

    def _open(self) -> DeltaTable:
        if self._table is None:
            table = open_or_create(self._uri, self._options)
            add_missing_columns(table)
            self._table = table
        return self._table

    def _current_versions(self, table: DeltaTable, partitions: list[int]) -> dict[int, int]:
        table.update_incremental()
        if table.version() != self._valid_at:  # another writer committed since: read again
            self._versions.clear()
            self._valid_at = table.version()
        for partition in partitions:
            if partition not in self._versions:
                version = table.transaction_version(self.app_id(partition))
                self._versions[partition] = 0 if version is None else version
        return {partition: self._versions[partition] for partition in partitions}

    def _append(self, table: DeltaTable, fresh: pl.DataFrame, advanced: dict[int, int]) -> None:
        transactions = [
            Transaction(self.app_id(partition), version)
            for partition, version in sorted(advanced.items())
        ]
        write_deltalake(
            table,
            fresh.select(field.name for field in table.schema().fields).to_arrow(),
            mode="append",
            partition_by=[PARTITION_COLUMN],
            commit_properties=CommitProperties(
                max_commit_retries=self._max_commit_retries, app_transactions=transactions
            ),
        )
        self._versions.update(advanced)
        self._valid_at = table.version()

    def _forget(self) -> None:
        """After a failure nothing cached is trusted: whether the commit landed is unknown."""
        self._table = None
        self._versions.clear()
        self._valid_at = None

    def close(self) -> None:
        self._forget()


def _partitions(rows: pl.DataFrame) -> list[int]:
    return rows.get_column("kafka_partition").drop_nulls().unique().sort().to_list()


def _unwritten(rows: pl.DataFrame, versions: dict[int, int]) -> tuple[pl.DataFrame, dict[int, int]]:
    """The rows at or past their partition's version (and those without a position), and the
    versions of the partitions that move on."""
    floor = pl.col("kafka_partition").replace_strict(
        list(versions), list(versions.values()), default=None, return_dtype=pl.Int64
    )
    offset = pl.col("kafka_offset")
    fresh = rows.filter(floor.is_null() | offset.is_null() | (offset >= floor))
    ends = (
        fresh.filter(pl.col("kafka_partition").is_not_null() & offset.is_not_null())
        .group_by("kafka_partition")
        .agg((offset.max() + 1).alias("end"))
    )
    advanced = {
        partition: end for partition, end in ends.iter_rows() if end > versions.get(partition, 0)
    }
    return fresh, advanced


def open_or_create(uri: str, storage_options: Options = None) -> DeltaTable:
    """The table at `uri`, created empty (partitioned by event date) if there is none."""
    options = dict(storage_options or {})
    if DeltaTable.is_deltatable(uri, options):
        return DeltaTable(uri, storage_options=options)
    try:
        return DeltaTable.create(
            uri,
            schema=_ARROW_SCHEMA,
            mode="ignore",
            partition_by=[PARTITION_COLUMN],
            name="decisions",
            description="every fraudstream decision, appended per micro-batch",
            storage_options=options,
            # No retry: one losing the race to create would commit a second CREATE TABLE.
            commit_properties=CommitProperties(max_commit_retries=0),
        )
    except DeltaError:  # another writer created it at the same moment
        return DeltaTable(uri, storage_options=options)


def add_missing_columns(table: DeltaTable) -> None:
    """Add the columns a newer fraudstream stores (nullable: older rows have none) to a table
    an older one created, so history written before and after an upgrade stays one table."""
    present = {field.name for field in table.schema().fields}
    missing = [field for field in _ARROW_SCHEMA if field.name not in present]
    if not missing:
        return
    try:
        table.alter.add_columns([Field.from_arrow(field) for field in missing])
    except DeltaError:  # another writer added them first
        table.update_incremental()
        now_present = {field.name for field in table.schema().fields}
        if any(field.name not in now_present for field in missing):
            raise


def safe_uri(uri: str) -> str:
    """`uri` without a password or query string, fit for messages."""
    parts = urlsplit(uri)
    if not parts.scheme or len(parts.scheme) == 1:  # a local path (or a Windows drive)
        return uri
    host = parts.hostname or ""
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def read_history(uri: str, storage_options: Options = None) -> pl.DataFrame:
    """The whole table as a Polars frame (`delta_maintenance` has the table's upkeep)."""
    return pl.read_delta(uri, storage_options=dict(storage_options or {}))
