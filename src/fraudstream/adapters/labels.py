"""Labelled history from the pipeline's own database: `transactions` joined with `labels`.

A transaction without a label counts as legitimate: in practice fraud is confirmed (by a
chargeback or an analyst) and the rest is never labelled. That is only fair for transactions old
enough for their label to have arrived, which is what the training split's label-delay gap is for.

`recent_history` is the other reading, for rule backtests over the last days: there a recent
transaction without a label is unknown (its chargeback may not have arrived yet), so only the
labels that exist are returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl
import psycopg
from psycopg import sql

from fraudstream.adapters.postgres_schema import FRAME_NAMES
from fraudstream.core.events import TRANSACTION_SCHEMA

_STORED_NAMES = {frame: stored for stored, frame in FRAME_NAMES.items()}


def labelled_history(url: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every stored transaction (engine schema) and its label (`transaction_id`, `is_fraud`)."""
    columns = sql.SQL(", ").join(
        sql.Identifier("t", _STORED_NAMES.get(name, name)) for name in TRANSACTION_SCHEMA
    )
    query = sql.SQL(
        "SELECT {}, coalesce(l.is_fraud, false) AS is_fraud"
        " FROM transactions t LEFT JOIN labels l USING (transaction_id) ORDER BY t.event_time"
    ).format(columns)
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(query).fetchall()
    schema = {**TRANSACTION_SCHEMA, "is_fraud": pl.Boolean()}
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    return frame.drop("is_fraud"), frame.select("transaction_id", "is_fraud")


@dataclass(frozen=True, slots=True)
class RecentHistory:
    """Stored transactions of a time range (engine schema, event time ascending), the labels
    of those that have one, and whether older rows of the range were left out."""

    transactions: pl.DataFrame
    labels: pl.DataFrame
    truncated: bool


_RECENT_QUERY = sql.SQL(
    "SELECT {}, l.is_fraud FROM transactions t LEFT JOIN labels l USING (transaction_id)"
    " WHERE t.event_time >= %s AND t.event_time < %s"
    " ORDER BY t.event_time DESC, t.transaction_id DESC LIMIT %s"
).format(
    sql.SQL(", ").join(
        sql.Identifier("t", _STORED_NAMES.get(name, name)) for name in TRANSACTION_SCHEMA
    )
)


def recent_history(url: str, since: datetime, until: datetime, limit: int) -> RecentHistory:
    """Stored transactions with event time in [`since`, `until`), at most the latest `limit`
    of them (`truncated` when there were more), and their labels where they have one."""
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be timezone-aware")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    with psycopg.connect(url) as connection:
        connection.read_only = True
        rows = connection.execute(_RECENT_QUERY, (since, until, limit + 1)).fetchall()
    truncated = len(rows) > limit
    rows = rows[:limit]
    rows.reverse()  # newest first from the query: oldest first here
    schema = {**TRANSACTION_SCHEMA, "is_fraud": pl.Boolean()}
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    labels = frame.select("transaction_id", "is_fraud").filter(pl.col("is_fraud").is_not_null())
    return RecentHistory(frame.drop("is_fraud"), labels, truncated)


def store_labels(url: str, labels: pl.DataFrame, source: str) -> int:
    """Upsert `transaction_id`, `is_fraud` rows (the newest label wins, and a case verdict it
    replaces no longer names its analyst and case); returns rows written."""
    rows = labels.select("transaction_id", "is_fraud").iter_rows()
    with psycopg.connect(url) as connection, connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO labels (transaction_id, is_fraud, source) VALUES (%s, %s, %s)"
            " ON CONFLICT (transaction_id) DO UPDATE SET is_fraud = excluded.is_fraud,"
            " source = excluded.source, labelled_at = now(), labelled_by = NULL, case_id = NULL",
            [(tid, bool(fraud), source) for tid, fraud in rows],
        )
    return labels.height
