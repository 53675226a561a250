"""The PostgreSQL sink: scored batches into `transactions`, `fraud_transactions`, `dead_letters`.

A batch is one database transaction, so it is stored whole or not at all. Its rows are rendered
to CSV by Polars (`postgres_schema.render`) and COPYed, which is several times faster than
psycopg's `write_row` per row (measured in bench/postgres_sink.py).

Writes are idempotent. The usual batch holds only new transactions, so it is COPYed straight
into `transactions` inside a savepoint. If any of its ids is already stored (a batch replayed
after a crash, an overlapping batch, an id twice in one batch), the savepoint is rolled back
and the batch goes through a temporary staging table and `INSERT ... ON CONFLICT DO NOTHING`
instead. Either way `fraud_transactions` gets the flagged rows just inserted, copied from
`transactions`, so a flagged row always matches the transaction row stored first. Dead letters
are inserted with `ON CONFLICT DO NOTHING` on their source position.

With alert routing configured, the same database transaction also puts one `alerts` row per
flagged transaction and matching route into the outbox (`ON CONFLICT DO NOTHING` on
transaction and route), so an alert exists exactly when its decision does; the dispatcher
(`fraudstream.runners.alerts`) delivers them without ever holding up a batch. Flagged
transactions also open or join their card's case (`cases.attach_flagged`) in that transaction,
so a stored flag always has its case; a batch without flags does no case work.

Any connection-level failure rolls back, drops the connection and raises `SinkUnavailable`; the
next `write` reconnects. Messages name host, port and database, never the password.

`migrate(url)` must have run before the first write.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import ClassVar, Final

import polars as pl
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from fraudstream.adapters.cases import attach_flagged
from fraudstream.adapters.postgres_schema import (
    FRAUD_COLUMNS,
    TRANSACTION_COLUMNS,
    MigrationError,
    Rendered,
    migrate,
    render,
)
from fraudstream.core.alerting import ALERT_COLUMNS, AlertRouting
from fraudstream.ports import DeadLetter, ScoredBatch, SinkUnavailable

__all__ = ["MigrationError", "PostgresSink", "migrate", "safe_target", "wait_for_postgres"]

_log = logging.getLogger(__name__)

APPLICATION_NAME: Final = "fraudstream.postgres_sink"
"""The sink's `application_name`, as `pg_stat_activity` shows it."""

Connection = psycopg.Connection[TupleRow]
Cursor = psycopg.Cursor[TupleRow]


def _names(columns: tuple[str, ...]) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, columns))


def _copy_into(table: sql.Composable, columns: tuple[str, ...]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(table, _names(columns))


_STAGING: Final = sql.Identifier("fraudstream_staging")
_DEAD_LETTER_COLUMNS: Final = (
    "topic", "kafka_partition", "kafka_offset", "raw", "error", "field", "received_at",
)  # fmt: skip

_COPY_TRANSACTIONS: Final = _copy_into(sql.Identifier("transactions"), TRANSACTION_COLUMNS)
_COPY_STAGING: Final = _copy_into(_STAGING, TRANSACTION_COLUMNS)

_CREATE_STAGING: Final = sql.SQL(
    "CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ON COMMIT DELETE ROWS AS"
    " SELECT {columns} FROM transactions WITH NO DATA"
).format(staging=_STAGING, columns=_names(TRANSACTION_COLUMNS))

# In key order, so concurrent writers of overlapping batches do not deadlock.
_MERGE_STAGING: Final = sql.SQL(
    "WITH inserted AS ("
    " INSERT INTO transactions ({columns}) SELECT {columns} FROM {staging}"
    " ORDER BY transaction_id ON CONFLICT (transaction_id) DO NOTHING"
    " RETURNING {fraud}, is_flagged)"
    " INSERT INTO fraud_transactions ({fraud}) SELECT {fraud} FROM inserted WHERE is_flagged"
    " ON CONFLICT (transaction_id) DO NOTHING"
).format(staging=_STAGING, columns=_names(TRANSACTION_COLUMNS), fraud=_names(FRAUD_COLUMNS))

_INSERT_FRAUD: Final = sql.SQL(
    "INSERT INTO fraud_transactions ({fraud}) SELECT {fraud} FROM transactions"
    " WHERE transaction_id = ANY(%s) AND is_flagged"
).format(fraud=_names(FRAUD_COLUMNS))

_INSERT_DEAD_LETTER: Final = sql.SQL(
    "INSERT INTO dead_letters ({columns}) VALUES ({values})"
    " ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING"
).format(
    columns=_names(_DEAD_LETTER_COLUMNS),
    values=sql.SQL(", ").join(sql.Placeholder() * len(_DEAD_LETTER_COLUMNS)),
)

_INSERT_ALERTS: Final = sql.SQL(
    "INSERT INTO alerts ({columns}) SELECT * FROM unnest("
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::float8[],"
    " %s::timestamptz[]) ON CONFLICT (transaction_id, route) DO NOTHING"
).format(columns=_names(ALERT_COLUMNS))
"""The outbox rows of a batch, one array per column of `ALERT_COLUMNS`: one round trip."""


def safe_target(url: str) -> str:
    """`host:port/dbname` of a connection URL or conninfo string: fit for logs and messages."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable postgres url>"
    host, port, dbname = (parts.get(key) for key in ("host", "port", "dbname"))
    return f"{host or 'localhost'}:{port or 5432}/{dbname or '?'}"


def _unavailable(url: str, error: BaseException) -> SinkUnavailable:
    """A `SinkUnavailable` naming the server and libpq's reason, never the password."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        reason = reason.replace(str(password), "***")
    return SinkUnavailable(f"postgres {safe_target(url)} unavailable: {reason}")


def _connect_timeout(seconds: float) -> int:
    return max(2, math.ceil(seconds))  # libpq takes whole seconds, and at least 2


def wait_for_postgres(url: str, timeout_s: float) -> None:
    """Return once the server at `url` answers a query; `SinkUnavailable` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            timeout = _connect_timeout(deadline - time.monotonic())
            with psycopg.connect(url, connect_timeout=timeout) as connection:
                connection.execute("SELECT 1")
                return
        except psycopg.OperationalError as error:
            if time.monotonic() + 0.2 >= deadline:
                raise _unavailable(url, error) from None
        time.sleep(0.2)


def _dead_letter_row(letter: DeadLetter) -> tuple[object, ...]:
    return (
        letter.topic,
        letter.partition,
        letter.offset,
        letter.raw,
        letter.error,
        letter.field,
        letter.received_at,
    )


def _copy(cursor: Cursor, statement: sql.Composed, payload: bytes) -> None:
    with cursor.copy(statement) as copy:
        copy.write(payload)


def _store_decisions(cursor: Cursor, rendered: Rendered) -> None:
    """Insert the rows not stored yet: straight COPY when all are new, else via staging. Then
    attach the flagged ones to cases (going by the stored rows, so a replay attaches nothing)."""
    try:
        with cursor.connection.transaction():  # a savepoint inside the batch's transaction
            _copy(cursor, _COPY_TRANSACTIONS, rendered.transactions)
    except psycopg.errors.UniqueViolation:
        _log.debug("batch overlaps stored transactions; inserting only the new ones")
        _copy(cursor, _COPY_STAGING, rendered.transactions)
        cursor.execute(_MERGE_STAGING)
    else:
        if rendered.flagged_ids:
            cursor.execute(_INSERT_FRAUD, (rendered.flagged_ids,))
    attach_flagged(cursor, rendered.flagged_ids)  # nothing to do, and no query, without flags


class PostgresSink:
    """`Sink` into PostgreSQL: one transaction per batch, idempotent, COPY-fast.

    Connects lazily (at the first `write`) and again after any connection failure. Errors
    other than connection-level ones (e.g. a value the schema rejects) roll the batch back and
    propagate as psycopg errors: retrying the same batch would fail the same way.

    Batches may be written from several threads at once (`concurrent_writes`): each thread
    writes on a connection of its own, so PostgreSQL stores them side by side. Two batches in
    flight hold different offsets, so they meet on a row only when one transaction id was
    published twice: one write then waits for the other, or, in a deadlock, PostgreSQL aborts
    one (`DeadlockDetected` is an `OperationalError`), which is retried like a lost connection.
    """

    concurrent_writes: ClassVar[bool] = True

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 5.0,
        alert_routing: AlertRouting | None = None,
    ) -> None:
        try:
            conninfo_to_dict(url)
        except psycopg.ProgrammingError:  # libpq's message may quote the password: not shown
            raise ValueError("not a valid PostgreSQL URL or connection string") from None
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._local = threading.local()
        """`connection`: the calling thread's connection, when it has one."""
        self._connections: set[Connection] = set()
        self._connections_lock = threading.Lock()
        self._alert_routing = alert_routing

    def __repr__(self) -> str:
        return f"PostgresSink({safe_target(self._url)})"

    def write(self, batch: ScoredBatch) -> None:
        """Store the whole batch, or raise `SinkUnavailable` having stored none of it."""
        rendered = render(batch.frame) if batch.frame.height else None
        alerts = self._alerts(batch.frame) if rendered is not None else None
        letters = sorted(map(_dead_letter_row, batch.dead_letters), key=lambda row: row[:3])
        if rendered is None and not letters:
            return
        try:
            connection = self._connect()
            with connection.transaction(), connection.cursor() as cursor:
                if rendered is not None:
                    _store_decisions(cursor, rendered)
                if alerts:
                    cursor.execute(_INSERT_ALERTS, alerts)
                if letters:
                    cursor.executemany(_INSERT_DEAD_LETTER, letters)
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            self._discard()
            raise _unavailable(self._url, error) from None

    def _alerts(self, frame: pl.DataFrame) -> list[list[object]] | None:
        """The outbox rows for `frame`'s flagged transactions, as one array per column."""
        if self._alert_routing is None or not frame.get_column("is_flagged").any():
            return None
        alerts = self._alert_routing.alerts(frame)
        if alerts.is_empty():
            return None
        return [alerts.get_column(column).to_list() for column in ALERT_COLUMNS]

    def _connect(self) -> Connection:
        current: Connection | None = getattr(self._local, "connection", None)
        if current is not None and not current.closed and not current.broken:
            return current
        self._discard()
        connection = psycopg.connect(
            self._url,
            autocommit=True,  # transactions are explicit: one per batch
            connect_timeout=_connect_timeout(self._connect_timeout_s),
            application_name=APPLICATION_NAME,
        )
        try:
            connection.execute(_CREATE_STAGING)
        except BaseException:
            connection.close()
            raise
        self._local.connection = connection
        with self._connections_lock:
            self._connections.add(connection)
        return connection

    def _discard(self) -> None:
        """Close the calling thread's connection (closing a broken one does not raise)."""
        connection: Connection | None = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with self._connections_lock:
                self._connections.discard(connection)
            connection.close()

    def close(self) -> None:
        """Close every thread's connection; call once no write is under way."""
        with self._connections_lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            connection.close()

    def __enter__(self) -> PostgresSink:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
