"""The revision counters runners poll to learn that managed configuration changed.

`revisions` holds one row per kind (`lists`, `rules`), bumped in the same database transaction as
every change of that kind. A runner asks for the one row before each batch (at most every poll
interval) and reloads only when it moved.
"""

from __future__ import annotations

from typing import Final

import psycopg
from psycopg.rows import TupleRow

_Connection = psycopg.Connection[TupleRow]
_REVISION: Final = "SELECT revision FROM revisions WHERE name = %s"


class RevisionReader:
    """Reads one kind's revision, and what a subclass loads with it, over one connection kept
    open; a database error propagates and the next call reconnects."""

    def __init__(self, url: str, kind: str) -> None:
        self._url = url
        self._kind = kind
        self._connection: _Connection | None = None

    def _open(self) -> _Connection:
        if self._connection is None or self._connection.closed or self._connection.broken:
            self._connection = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
        return self._connection

    def revision(self, connection: _Connection | None = None) -> int:
        """The current revision (on `connection`, to read it inside a caller's snapshot)."""
        row = (connection or self._open()).execute(_REVISION, (self._kind,)).fetchone()
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
