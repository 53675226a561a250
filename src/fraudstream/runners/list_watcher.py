"""Keep an engine's allow and deny lists current, without a restart.

`ListWatcher.poll(engine)` runs before each batch. At most every `interval_s` it reads the
lists' revision (one single-row query); when that moved, it loads the entries in force and
swaps them into the engine in one assignment. An unreachable database keeps the lists in use
and is retried at the next interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg

from fraudstream.adapters.lists import ListReader
from fraudstream.core.engine import Engine

log = logging.getLogger("fraudstream.lists")


class ListWatcher:
    """Applies the database's lists to an engine; the first `poll` loads them."""

    def __init__(
        self,
        reader: ListReader,
        interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reader = reader
        self._interval_s = interval_s
        self._clock = clock
        self._next_poll = 0.0
        self._revision: int | None = None
        self._unreachable = False

    @property
    def revision(self) -> int | None:
        """The revision of the lists the engine holds, or None before the first load."""
        return self._revision

    def poll(self, engine: Engine) -> None:
        now = self._clock()
        if now < self._next_poll:
            return
        self._next_poll = now + self._interval_s
        try:
            if self._reader.revision() == self._revision:
                return
            snapshot = self._reader.snapshot()
        except psycopg.Error as error:
            if not self._unreachable:
                log.warning("lists unreachable, keeping revision %s: %s", self._revision, error)
            self._unreachable = True
            return
        self._unreachable = False
        engine.lists = snapshot
        log.info("lists revision %s -> %s (%d entries in force)",
                 self._revision, snapshot.revision, snapshot.entries)  # fmt: skip
        self._revision = snapshot.revision

    def close(self) -> None:
        self._reader.close()
