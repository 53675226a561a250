"""Rules managed in PostgreSQL (`rule_versions`, `rules`), with the audit log and the revision
counter runners poll (`revisions.rules`).

Every change is one database transaction that first bumps the revision (taking its row lock, so
rule changes are serialised and revisions follow commit order), then writes the new version, moves
the rule's head to it and writes the audit row. A change is checked before it is stored: the rule
must be valid and its expression must compile against the engine's columns, so a bad expression
is refused with the compiler's reason and never reaches a worker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import polars as pl
import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from fraudstream.adapters.api_keys import audit
from fraudstream.adapters.revisions import RevisionReader
from fraudstream.adapters.rule_stats import RuleFigures, RuleWindow, rule_figures
from fraudstream.core.errors import FraudstreamError, RuleError
from fraudstream.core.rules import Action, Rule, RulesetSpec, Severity, compile_ruleset
from fraudstream.core.rules.managed import (
    ManagedRule,
    RuleStatus,
    merged_spec,
    status_of,
    with_status,
)

_Connection = psycopg.Connection[TupleRow]
Source = Literal["file", "database"]
EDITABLE: Final = ("description", "expression", "score", "action", "severity", "tags", "status")
"""What a change may set; anything not given keeps its current value."""

_COLUMNS: Final = sql.SQL(
    "v.rule_id, v.version, v.status, v.description, v.expression, v.score, v.action,"
    " v.severity, v.tags, v.changed_by, v.change_reason, v.changed_at, v.revision"
)
_CURRENT: Final = sql.SQL(
    "SELECT {} FROM rules r JOIN rule_versions v USING (rule_id, version)"
).format(_COLUMNS)
_BUMP: Final = (
    "UPDATE revisions SET revision = revision + 1 WHERE name = 'rules' RETURNING revision"
)
_REVISION: Final = "SELECT revision FROM revisions WHERE name = 'rules'"
_INSERT: Final = (
    "INSERT INTO rule_versions (rule_id, version, status, description, expression, score,"
    " action, severity, tags, changed_by, change_reason, revision)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_MOVE_HEAD: Final = (
    "INSERT INTO rules (rule_id, version) VALUES (%s, %s)"
    " ON CONFLICT (rule_id) DO UPDATE SET version = excluded.version"
)


class RuleChangeError(FraudstreamError):
    """A rule change refused: `kind` is `invalid` (422), `not_found` (404) or `conflict` (409);
    `field` names the culprit when there is one."""

    def __init__(self, message: str, kind: str = "invalid", field: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field


@dataclass(frozen=True, slots=True)
class RuleState:
    """A rule as it stands (or stood, for an old version): its definition and status, where it
    is defined, and for a managed rule who changed it last, when and why."""

    id: str
    version: int
    status: RuleStatus
    source: Source
    description: str
    expression: str
    score: float
    action: Action
    severity: Severity
    tags: list[str]
    changed_by: str | None = None
    change_reason: str | None = None
    changed_at: datetime | None = None
    revision: int | None = None

    def rule(self) -> Rule:
        """The rule the engine evaluates in this state (a draft is not enabled)."""
        plain = Rule(id=self.id, description=self.description, expression=self.expression,
                     score=self.score, action=self.action, version=self.version,
                     severity=self.severity, tags=tuple(self.tags))  # fmt: skip
        return with_status(plain, self.status)

    def managed(self) -> ManagedRule:
        return ManagedRule(self.rule(), self.status)


def _state(row: tuple[object, ...]) -> RuleState:
    rule_id, version, status, description, expression, score, action, severity, tags, *rest = row
    return RuleState(rule_id, version, status, "database", description, expression,  # type: ignore[arg-type]
                     score, action, severity, list(tags or ()), *rest)  # type: ignore[arg-type]  # fmt: skip


def file_state(rule: Rule) -> RuleState:
    """A rule of the rules file as a state (no author: the file's history is its own)."""
    return RuleState(rule.id, rule.version, status_of(rule), "file", rule.description,
                     rule.expression, rule.score, rule.action, rule.severity,
                     list(rule.tags))  # fmt: skip


def checked_rule(state: RuleState, columns: Mapping[str, pl.DataType]) -> RuleState:
    """`state` if its rule is valid and compiles; else `RuleChangeError` naming the field."""
    try:
        rule = with_status(state.rule(), "enabled")
        compile_ruleset(RulesetSpec(version="check", rules=(rule,)), columns)
    except RuleError as error:
        raise RuleChangeError(str(error), "invalid", _field_of(error.reason)) from None
    return state


def _field_of(reason: str) -> str:
    """The field a `RuleError` reason is about (they start with it, or are the compiler's)."""
    first = reason.split(" ", 1)[0]
    if first == "id":
        return "id"
    return first if first in EDITABLE else "expression"


class RuleStore:
    """The rules of one database, seen beside the rules file (`base`, the spec the runners
    merge them into): the rules in force, versions, and changes."""

    def __init__(
        self, url: str, columns: Mapping[str, pl.DataType], base: Callable[[], RulesetSpec]
    ) -> None:
        self._url = url
        self._columns = dict(columns)
        self._base = base

    def _connect(self) -> _Connection:
        return psycopg.connect(self._url, autocommit=True, connect_timeout=5)

    def rules(self) -> list[RuleState]:
        """Every rule: the file's, each replaced by its managed version if it has one, then the
        managed rules of other ids, by id."""
        with self._connect() as connection:
            managed = {s.id: s for s in map(_state, connection.execute(_CURRENT).fetchall())}
        found = [managed.pop(rule.id, None) or file_state(rule) for rule in self._base().rules]
        return found + [managed[rule_id] for rule_id in sorted(managed)]

    def rule(self, rule_id: str) -> RuleState:
        for state in self.rules():
            if state.id == rule_id:
                return state
        raise RuleChangeError(f"no rule {rule_id!r}", "not_found")

    def versions(self, rule_id: str) -> list[RuleState]:
        """Every stored version of a rule, newest first; the file's version last if the rule
        comes from the file."""
        query = sql.SQL(
            "SELECT {} FROM rule_versions v WHERE v.rule_id = %s ORDER BY v.version DESC"
        ).format(_COLUMNS)
        with self._connect() as connection:
            stored = [_state(row) for row in connection.execute(query, (rule_id,)).fetchall()]
        in_file = [file_state(r) for r in self._base().rules if r.id == rule_id]
        if not stored and not in_file:
            raise RuleChangeError(f"no rule {rule_id!r}", "not_found")
        return stored + in_file

    def create(self, actor: str, definition: RuleState, reason: str) -> RuleState:
        """Store a new rule (status as given, a draft by default at the API): version 1."""
        if any(rule.id == definition.id for rule in self._base().rules):
            raise RuleChangeError(
                f"rule {definition.id!r} is in the rules file: change it instead of creating it",
                "conflict",
                "id",
            )
        checked_rule(definition, self._columns)
        with self._connect() as connection, connection.transaction():
            revision = _bump(connection)
            if _head(connection, definition.id) is not None:
                raise RuleChangeError(f"rule {definition.id!r} exists already", "conflict", "id")
            stored = _write(connection, replace(definition, version=1), actor, reason, revision)
            details = {"version": 1, "status": stored.status, "reason": reason,
                       "definition": _definition(stored)}  # fmt: skip
            audit(connection, actor, "rule_create", ("rule", stored.id), details)
        return stored

    def change(
        self,
        actor: str,
        rule_id: str,
        changes: Mapping[str, object],
        reason: str,
        expected_version: int | None = None,
    ) -> tuple[RuleState, bool]:
        """A new version with `changes` applied (keys of `EDITABLE`): (the rule, whether it
        changed; a change to nothing stores nothing). With `expected_version`, refuse if the
        rule moved on since the caller read it."""
        unknown = sorted(set(changes) - set(EDITABLE))
        if unknown:
            raise RuleChangeError(
                f"{unknown[0]}: not a field a change can set", "invalid", unknown[0]
            )
        try:
            with self._connect() as connection, connection.transaction():
                revision = _bump(connection)
                current = _head(connection, rule_id) or self._file_rule(rule_id)
                if expected_version is not None and expected_version != current.version:
                    raise RuleChangeError(
                        f"rule {rule_id!r} is at version {current.version}, not"
                        f" {expected_version}: read it again", "conflict", "expected_version",
                    )  # fmt: skip
                proposed = replace(current, **changes)  # type: ignore[arg-type]
                differences = _differences(current, proposed)
                if not differences:
                    raise _Unchanged(current)
                checked_rule(proposed, self._columns)
                version = current.version + 1
                stored = _write(connection, replace(proposed, version=version), actor, reason,
                                revision)  # fmt: skip
                details = {"version": version, "status": stored.status, "reason": reason,
                           "changes": differences}  # fmt: skip
                audit(connection, actor, "rule_update", ("rule", rule_id), details)
        except _Unchanged as unchanged:
            return unchanged.state, False
        return stored, True

    def figures(
        self, states: list[RuleState], window: timedelta, label_window: timedelta
    ) -> list[RuleFigures]:
        """Each rule's hit rate (since the later of `now - window` and its last change) and
        precision and recall over the labels of `label_window` (see `rule_stats`)."""
        now = datetime.now(UTC)
        windows = [
            RuleWindow(s.id, max(now - window, s.changed_at or now - window), s.status == "shadow")
            for s in states
        ]
        with self._connect() as connection:
            found = rule_figures(connection, windows, now - label_window)
        return [found[s.id] for s in states]

    def live_spec(self) -> RulesetSpec:
        """The spec runners score with now: the rules file merged with the managed rules."""
        with self._connect() as connection:
            revision, managed = managed_snapshot(connection)
        return merged_spec(self._base(), managed, revision)

    def _file_rule(self, rule_id: str) -> RuleState:
        for rule in self._base().rules:
            if rule.id == rule_id:
                return file_state(rule)
        raise RuleChangeError(f"no rule {rule_id!r}", "not_found")


class _Unchanged(Exception):  # noqa: N818 - a signal to roll back, not an error
    def __init__(self, state: RuleState) -> None:
        self.state = state


def _bump(connection: _Connection) -> int:
    row = connection.execute(_BUMP).fetchone()
    assert row is not None, "migration 0008 creates the rules revision"
    return int(row[0])


def _head(connection: _Connection, rule_id: str) -> RuleState | None:
    row = connection.execute(sql.SQL("{} WHERE r.rule_id = %s").format(_CURRENT), (rule_id,))
    found = row.fetchone()
    return None if found is None else _state(found)


def _write(
    connection: _Connection, state: RuleState, actor: str, reason: str, revision: int
) -> RuleState:
    connection.execute(
        _INSERT,
        (state.id, state.version, state.status, state.description, state.expression,
         state.score, state.action, state.severity, list(state.tags), actor, reason,
         revision),
    )  # fmt: skip
    connection.execute(_MOVE_HEAD, (state.id, state.version))
    written = _head(connection, state.id)
    assert written is not None
    return written


def _definition(state: RuleState) -> dict[str, object]:
    return {name: getattr(state, name) for name in EDITABLE}


def _differences(before: RuleState, after: RuleState) -> dict[str, list[object]]:
    """Field -> [before, after] for the editable fields that differ."""
    return {
        name: [getattr(before, name), getattr(after, name)]
        for name in EDITABLE
        if getattr(before, name) != getattr(after, name)
    }


class RuleReader(RevisionReader):
    """What a runner polls: the rules' revision, and the managed rules at a revision."""

    def __init__(self, url: str) -> None:
        super().__init__(url, "rules")

    def managed(self) -> tuple[int, list[ManagedRule]]:
        """The revision and the current managed rules, read in one snapshot."""
        return managed_snapshot(self._open())


def managed_snapshot(connection: _Connection) -> tuple[int, list[ManagedRule]]:
    """The rules' revision and the current managed rules, read in one snapshot."""
    with connection.transaction():
        connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        revision_row = connection.execute(_REVISION).fetchone()
        rows = connection.execute(_CURRENT).fetchall()
    revision = 0 if revision_row is None else int(revision_row[0])
    return revision, [_state(row).managed() for row in rows]
