"""Upkeep of the Delta history (`delta.py`): what it holds, compaction, vacuum.

Each micro-batch adds a small file per event date, and reads slow down as they pile up.
`compact` rewrites each date's small files into large ones and checkpoints the log, so readers
open few files and replay few log entries; the files it replaced stay until `vacuum` deletes
them past the retention, since readers of older versions (time travel) still use them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable

from fraudstream.adapters.delta import MAX_COMMIT_RETRIES, PARTITION_COLUMN, Options


@dataclass(frozen=True, slots=True)
class TableSummary:
    """What a table holds at its current version."""

    version: int
    files: int
    rows: int
    bytes: int
    dates: int


def describe(uri: str, storage_options: Options = None) -> TableSummary:
    """Version, live files, rows (from file statistics), bytes and dates of the table."""
    table = DeltaTable(uri, storage_options=dict(storage_options or {}))
    files = pa.table(table.get_add_actions(flatten=True))
    dates = set(files.column(f"partition.{PARTITION_COLUMN}").to_pylist()) if files.num_rows else ()
    return TableSummary(
        version=table.version(),
        files=files.num_rows,
        rows=int(sum(value or 0 for value in files.column("num_records").to_pylist())),
        bytes=int(sum(files.column("size_bytes").to_pylist())),
        dates=len(dates),
    )


@dataclass(frozen=True, slots=True)
class Compaction:
    """What `compact` did: files rewritten into fewer, larger ones, and the version it made."""

    files_removed: int
    files_added: int
    bytes_removed: int
    bytes_added: int
    version: int


def compact(uri: str, storage_options: Options = None) -> Compaction:
    """Rewrite the small files of each date into large ones, then checkpoint the log.

    Safe while workers append (their blind appends do not conflict with it); the replaced
    files stay on disk for readers of older versions until `vacuum` deletes them.
    """
    table = DeltaTable(uri, storage_options=dict(storage_options or {}))
    metrics = table.optimize.compact(
        commit_properties=CommitProperties(max_commit_retries=MAX_COMMIT_RETRIES)
    )
    table.create_checkpoint()
    return Compaction(
        files_removed=int(metrics["numFilesRemoved"]),
        files_added=int(metrics["numFilesAdded"]),
        bytes_removed=_total_size(metrics.get("filesRemoved")),
        bytes_added=_total_size(metrics.get("filesAdded")),
        version=table.version(),
    )


def _total_size(stats: Any) -> int:
    """`totalSize` of optimize's file statistics (JSON text in deltalake 1.x, else a dict)."""
    if isinstance(stats, str):
        stats = json.loads(stats)
    return int(stats.get("totalSize", 0)) if isinstance(stats, dict) else 0


def vacuum(
    uri: str,
    retention_hours: int,
    *,
    enforce_retention: bool = True,
    dry_run: bool = False,
    storage_options: Options = None,
) -> list[str]:
    """Delete the files no version younger than `retention_hours` uses; returns them (only
    lists them with `dry_run`). Below the table's retention (7 days unless configured) only
    with `enforce_retention=False`, and then not while a writer runs: a file being written is
    in no version yet, so a zero retention may delete it."""
    table = DeltaTable(uri, storage_options=dict(storage_options or {}))
    return table.vacuum(
        retention_hours=retention_hours,
        dry_run=dry_run,
        enforce_retention_duration=enforce_retention,
    )
