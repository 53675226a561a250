"""The dashboard's one connection to PostgreSQL, shared by every page refresh of the server.

A Streamlit server runs each browser session's script in its own thread, and every session
refreshes every few seconds; a connection per refresh would cost a login each time, a pool
is more than a read-mostly page needs. So one connection, used under a lock (one snapshot at a
time), opened lazily and opened again after a failure: a restarted database costs one failed
refresh, not a restarted dashboard.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import psycopg

from fraudstream.adapters.postgres import _unavailable, safe_target
from fraudstream.core.errors import FraudstreamError
from fraudstream.reports.figures import Connection

APPLICATION_NAME = "fraudstream.dashboard"
CONNECT_TIMEOUT_S = 5

T = TypeVar("T")


class DatabaseUnavailableError(FraudstreamError):
    """The database cannot be reached; the message names the server, never the password."""


class Database:
    """Runs readers on one lazily (re)opened autocommit connection, one reader at a time."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._connection: Connection | None = None

    def read(self, reader: Callable[[Connection], T]) -> T:
        """`reader(connection)`; after a connection failure, once more on a new connection,
        then `DatabaseUnavailableError`. Other errors (a bad query) propagate as they are."""
        with self._lock:
            try:
                return reader(self._connect())
            except psycopg.errors.QueryCanceled:  # the statement timeout: again would be as slow
                raise DatabaseUnavailableError(
                    f"a query on {safe_target(self._url)} took too long: narrow the time range"
                ) from None
            except (psycopg.OperationalError, psycopg.InterfaceError):
                self._discard()
            try:
                return reader(self._connect())
            except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                self._discard()
                raise DatabaseUnavailableError(str(_unavailable(self._url, error))) from None

    def _connect(self) -> Connection:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=APPLICATION_NAME,
            )
        return self._connection

    def _discard(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = None

    def close(self) -> None:
        with self._lock:
            self._discard()
