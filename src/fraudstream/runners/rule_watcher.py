"""Keep an engine's ruleset current, without a restart: the rules file (or the shipped rules)
merged with the rules managed in the database.

`RulesetWatcher.poll(engine)` runs before each batch. It polls the rules file (a `stat`), and at
most every `interval_s` the managed rules' revision (one single-row query); when either moved, it
compiles the merged ruleset and swaps it into the engine in one assignment. A bad rules file, an
unreachable database or a managed rule that no longer compiles keeps what is in use, logged once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import polars as pl
import psycopg

from fraudstream.adapters.rules_file import RulesFile
from fraudstream.adapters.rules_store import RuleReader
from fraudstream.core.engine import Engine
from fraudstream.core.errors import RuleError
from fraudstream.core.rules import CompiledRuleset, RulesetSpec
from fraudstream.core.rules.managed import ManagedRule, compile_merged

log = logging.getLogger("fraudstream.rules")


class RulesetWatcher:
    """The merged ruleset of a rules file (None: `shipped`) and a database's managed rules."""

    def __init__(
        self,
        columns: Mapping[str, pl.DataType],
        shipped: RulesetSpec,
        rules_file: RulesFile | None,
        reader: RuleReader | None,
        interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._columns = dict(columns)
        self._shipped = shipped
        self._file = rules_file
        self._reader = reader
        self._interval_s = interval_s
        self._clock = clock
        self._next_poll = 0.0
        self._revision = 0
        self._managed: list[ManagedRule] = []
        self._unreachable = False
        self._dropped: set[str] = set()
        self._load_managed()
        self.current = self._compile()

    @property
    def base(self) -> RulesetSpec:
        """The spec managed rules are merged into: the rules file's, or the shipped one."""
        return self._shipped if self._file is None else self._file.current.spec

    @property
    def revision(self) -> int:
        """The managed rules' revision the current ruleset holds."""
        return self._revision

    def poll(self, engine: Engine) -> None:
        changed = self._poll_file()
        now = self._clock()
        if now >= self._next_poll:
            self._next_poll = now + self._interval_s
            changed = self._load_managed() or changed
        if changed:
            previous = self.current.version
            self.current = self._compile()
            engine.ruleset = self.current
            log.info("ruleset %s -> %s", previous, self.current.version)

    def _poll_file(self) -> bool:
        if self._file is None:
            return False
        result = self._file.poll()
        if result.failed:
            log.error("ruleset change rejected, keeping %s: %s", result.version, result.error)
        return result.reloaded

    def _load_managed(self) -> bool:
        """Read the managed rules if their revision moved; whether it did."""
        if self._reader is None:
            return False
        try:
            if self._reader.revision() == self._revision:
                return False
            revision, managed = self._reader.managed()
        except psycopg.Error as error:
            if not self._unreachable:
                log.warning("managed rules unreachable, keeping revision %s: %s",
                            self._revision, error)  # fmt: skip
            self._unreachable = True
            return False
        self._unreachable = False
        self._revision, self._managed = revision, managed
        return True

    def _compile(self) -> CompiledRuleset:
        dropped: set[str] = set()

        def report(error: RuleError) -> None:
            dropped.add(error.rule_id or "")
            if error.rule_id not in self._dropped:
                log.error("managed rule left out (it no longer compiles): %s", error)

        compiled = compile_merged(self.base, self._managed, self._revision, self._columns, report)
        self._dropped = dropped
        return compiled

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
