"""The capture's own durable position: the `capture_positions` table of the pipeline database.

Why not only the replication slot: the slot's confirmed position is made durable at the
source server's checkpoints, so a crash of that server can move it back and the server then
sends transactions again that were already delivered. The capture writes the end LSN of the
last transaction Kafka confirmed here before acknowledging it to the source, and passes it as
the start of replication on every (re)start; the server skips what lies before it. The table
lives in the pipeline database (where `fraudstream capture status` and the dashboards look),
whichever server the source table is on.

Counters are added in the same statement that moves the position, so a batch replayed after a
crash is counted once: its first, unconfirmed attempt never reached this table.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Final, Literal

import psycopg
from psycopg.rows import TupleRow

from fraudstream.adapters.pg_values import format_lsn, parse_lsn
from fraudstream.core.errors import FraudstreamError

SnapshotState = Literal["none", "pending", "done"]
"""`none`: streaming only; `pending`: a snapshot was begun and not finished (it is taken
again on the next start); `done`: the rows that predate the slot were captured."""

_CONNECT_TIMEOUT_S: Final = 5


@dataclass
class Progress:
    """What a batch of source transactions added to a capture's counters."""

    transactions: int = 0
    rows_captured: int = 0
    rows_rejected: int = 0
    updates: int = 0
    deletes: int = 0
    truncates: int = 0

    def add(self, other: Progress) -> None:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def values(self) -> tuple[int, ...]:
        """The counters, in the order the statements of this module name them."""
        return tuple(getattr(self, field.name) for field in fields(self))


@dataclass(frozen=True)
class Position:
    """One capture's stored position, snapshot state and counters."""

    slot_name: str
    source_table: str
    lsn: int
    snapshot: SnapshotState
    totals: Progress
    updated_at: datetime


_SELECT: Final = """
SELECT slot_name, source_table, lsn::text, snapshot, transactions, rows_captured, rows_rejected,
       updates, deletes, truncates, updated_at
FROM capture_positions
"""
_START: Final = """
INSERT INTO capture_positions (slot_name, source_table, lsn, snapshot)
VALUES (%s, %s, %s::pg_lsn, %s)
ON CONFLICT (slot_name) DO UPDATE SET
    source_table = excluded.source_table, lsn = excluded.lsn, snapshot = excluded.snapshot,
    transactions = 0, rows_captured = 0, rows_rejected = 0, updates = 0, deletes = 0,
    truncates = 0, created_at = now(), updated_at = now()
"""
_ADVANCE: Final = """
UPDATE capture_positions SET
    lsn = greatest(lsn, %s::pg_lsn), snapshot = coalesce(%s, snapshot),
    transactions = transactions + %s, rows_captured = rows_captured + %s,
    rows_rejected = rows_rejected + %s, updates = updates + %s, deletes = deletes + %s,
    truncates = truncates + %s, updated_at = now()
WHERE slot_name = %s
"""
"""The counters in `Progress.values()` order."""


class CaptureError(FraudstreamError):
    """The capture cannot go on as configured or as found; the message says what to do."""


class PositionStore:
    """Reads and moves capture positions; one connection, opened again after a failure."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: psycopg.Connection[TupleRow] | None = None

    def _connect(self) -> psycopg.Connection[TupleRow]:
        current = self._connection
        if current is not None and not current.closed and not current.broken:
            return current
        self.close()
        self._connection = psycopg.connect(
            self._url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S
        )
        return self._connection

    def _execute(self, query: str, params: tuple[object, ...] = ()) -> psycopg.Cursor[TupleRow]:
        try:
            return self._connect().execute(query, params)
        except psycopg.OperationalError:
            self.close()
            raise

    def load(self, slot: str) -> Position | None:
        row = self._execute(_SELECT + " WHERE slot_name = %s", (slot,)).fetchone()
        return None if row is None else _position(row)

    def all(self) -> list[Position]:
        """Every capture's position; none when the table is not there yet."""
        try:
            rows = self._execute(_SELECT + " ORDER BY slot_name").fetchall()
        except psycopg.errors.UndefinedTable:
            return []
        return [_position(row) for row in rows]

    def start(self, slot: str, table: str, lsn: int, snapshot: SnapshotState) -> None:
        """A new slot's starting point: counters from zero."""
        self._execute(_START, (slot, table, format_lsn(lsn), snapshot))

    def advance(
        self, slot: str, lsn: int, progress: Progress, snapshot: SnapshotState | None = None
    ) -> None:
        """Move the position to `lsn` (never back) and add `progress` to the counters."""
        cursor = self._execute(_ADVANCE, (format_lsn(lsn), snapshot, *progress.values(), slot))
        if cursor.rowcount != 1:
            raise CaptureError(
                f"the stored position of slot {slot} vanished: was the capture removed?"
            )

    def delete(self, slot: str) -> bool:
        try:
            deleted = self._execute("DELETE FROM capture_positions WHERE slot_name = %s", (slot,))
            return deleted.rowcount > 0
        except psycopg.errors.UndefinedTable:
            return False

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def _position(row: tuple[object, ...]) -> Position:
    slot, table, lsn, snapshot, *counters, updated_at = row
    totals = Progress(*(int(str(value)) for value in counters))
    return Position(str(slot), str(table), parse_lsn(str(lsn)), snapshot, totals, updated_at)  # type: ignore[arg-type]
