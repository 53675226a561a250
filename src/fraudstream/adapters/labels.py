"""Labelled history from the pipeline's own database: `transactions` joined with `labels`.

A transaction without a label counts as legitimate: in practice fraud is confirmed (by a
chargeback or an analyst) and the rest is never labelled. That is only fair for transactions old
enough for their label to have arrived, which is what the training split's label-delay gap is for.
"""

from __future__ import annotations

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
