"""Allow and deny lists in PostgreSQL (`list_entries`), with the audit log and the revision
counter runners poll (`revisions.lists`).

Every change is one database transaction: the entry, its audit row and the revision bump
commit together. `add_entry` and `remove_entry` take the caller's connection so that another
change (closing a case as fraud) can deny-list a card in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from fraudstream.adapters.api_keys import audit
from fraudstream.adapters.revisions import RevisionReader
from fraudstream.core.errors import ConfigError, FraudstreamError
from fraudstream.core.lists import ENTITIES, LIST_KINDS, Entity, ListEntry, ListKind, ListSnapshot
from fraudstream.core.lists import list_value as canonical_value

_Connection = psycopg.Connection[TupleRow]
_COLUMNS: Final = sql.SQL(
    "id, list, entity, value, reason, expires_at, created_by, created_at, updated_at,"
    " removed_by, removed_at, removed_reason"
)
_ACTIVE: Final = sql.SQL(
    "SELECT {} FROM list_entries WHERE list = %s AND entity = %s AND value = %s"
    " AND removed_at IS NULL FOR UPDATE"
).format(_COLUMNS)
_INSERT: Final = sql.SQL(
    "INSERT INTO list_entries (list, entity, value, reason, expires_at, created_by)"
    " VALUES (%s, %s, %s, %s, %s, %s) RETURNING {}"
).format(_COLUMNS)
_UPDATE: Final = sql.SQL(
    "UPDATE list_entries SET reason = %s, expires_at = %s, updated_at = now()"
    " WHERE id = %s RETURNING {}"
).format(_COLUMNS)
_REMOVE: Final = sql.SQL(
    "UPDATE list_entries SET removed_by = %s, removed_at = now(), removed_reason = %s,"
    " updated_at = now() WHERE id = %s AND removed_at IS NULL RETURNING {}"
).format(_COLUMNS)
_BUMP: Final = (
    "UPDATE revisions SET revision = revision + 1 WHERE name = 'lists' RETURNING revision"
)
_IN_FORCE: Final = (
    "SELECT list, entity, value, expires_at FROM list_entries"
    " WHERE removed_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
)


class ListError(FraudstreamError):
    """A list change that cannot be made: `field` names the culprit (None: the entry itself,
    for instance one that is not on any list)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """A `list_entries` row: active (`removed_at` None), or removed and kept for the record."""

    id: int
    list: ListKind
    entity: Entity
    value: str
    reason: str
    expires_at: datetime | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    removed_by: str | None
    removed_at: datetime | None
    removed_reason: str | None

    @property
    def active(self) -> bool:
        return self.removed_at is None


def _entry(row: tuple[object, ...]) -> StoredEntry:
    return StoredEntry(*row)  # type: ignore[arg-type] - the columns are in the field order


def checked_entry(
    kind: str, entity: str, value: str, reason: str, expires_at: datetime | None
) -> tuple[ListKind, Entity, str, str]:
    """The list, entity, stored value and reason of a new entry; `ListError` names the field
    that is wrong."""
    if kind not in LIST_KINDS:
        raise ListError(f"list {kind!r}: expected one of {', '.join(LIST_KINDS)}", "list")
    if entity not in ENTITIES:
        raise ListError(f"entity {entity!r}: expected one of {', '.join(ENTITIES)}", "entity")
    try:
        stored = canonical_value(entity, value)
    except ConfigError as error:
        raise ListError(str(error), "value") from None
    if not reason.strip():
        raise ListError("reason: must not be empty (say why the entry is listed)", "reason")
    if "\x00" in reason:
        raise ListError("reason: must not contain NUL characters", "reason")
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise ListError("expires_at: must include a timezone", "expires_at")
        if expires_at <= datetime.now(UTC):
            raise ListError(f"expires_at {expires_at.isoformat()}: already past", "expires_at")
    return kind, entity, stored, reason.strip()  # type: ignore[return-value] - checked above


def add_entry(
    connection: _Connection,
    actor: str,
    kind: str,
    entity: str,
    value: str,
    reason: str,
    expires_at: datetime | None = None,
) -> tuple[StoredEntry, bool]:
    """Put a value on a list, in the caller's transaction: (the entry, whether it is new).
    A value already on that list gets the new reason and expiry instead of a second entry."""
    kind, entity, stored, reason = checked_entry(kind, entity, value, reason, expires_at)
    existing = connection.execute(_ACTIVE, (kind, entity, stored)).fetchone()
    if existing is None:
        row = connection.execute(
            _INSERT, (kind, entity, stored, reason, expires_at, actor)
        ).fetchone()
    else:
        row = connection.execute(_UPDATE, (reason, expires_at, existing[0])).fetchone()
    assert row is not None
    entry = _entry(row)
    details: dict[str, object] = {"list": kind, "entity": entity, "value": stored,
                                  "reason": reason, "expires_at": _iso(expires_at)}  # fmt: skip
    action = "list_add" if existing is None else "list_update"
    audit(connection, actor, action, ("list_entry", str(entry.id)), details)
    connection.execute(_BUMP)
    return entry, existing is None


def remove_entry(connection: _Connection, actor: str, entry_id: int, reason: str) -> StoredEntry:
    """Take an active entry off its list, in the caller's transaction."""
    if not reason.strip() or "\x00" in reason:
        raise ListError("reason: must be text, not empty (say why the entry is removed)", "reason")
    row = connection.execute(_REMOVE, (actor, reason.strip(), entry_id)).fetchone()
    if row is None:
        raise ListError(f"no active list entry {entry_id}")
    entry = _entry(row)
    details = {"list": entry.list, "entity": entry.entity, "value": entry.value, "reason": reason}
    audit(connection, actor, "list_remove", ("list_entry", str(entry_id)), details)
    connection.execute(_BUMP)
    return entry


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


class ListStore:
    """Lists of one database: changes, queries, and the snapshot runners score with."""

    def __init__(self, url: str) -> None:
        self._url = url

    def _connect(self) -> _Connection:
        return psycopg.connect(self._url, autocommit=True, connect_timeout=5)

    def add(
        self,
        actor: str,
        kind: str,
        entity: str,
        value: str,
        reason: str,
        expires_at: datetime | None = None,
    ) -> tuple[StoredEntry, bool]:
        with self._connect() as connection, connection.transaction():
            return add_entry(connection, actor, kind, entity, value, reason, expires_at)

    def remove(self, actor: str, entry_id: int, reason: str) -> StoredEntry:
        with self._connect() as connection, connection.transaction():
            return remove_entry(connection, actor, entry_id, reason)

    def entries(
        self,
        kind: str | None = None,
        entity: str | None = None,
        value: str | None = None,
        *,
        include_removed: bool = False,
        limit: int = 1000,
    ) -> list[StoredEntry]:
        """Entries, newest first, filtered by any of list, entity and value (canonical form)."""
        if value is not None:
            value = checked_entry(kind or "deny", entity or "customer", value, "-", None)[2]
        conditions = [sql.SQL("TRUE")]
        parameters: list[object] = []
        for column, wanted in (("list", kind), ("entity", entity), ("value", value)):
            if wanted is not None:
                conditions.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                parameters.append(wanted)
        if not include_removed:
            conditions.append(sql.SQL("removed_at IS NULL"))
        query = sql.SQL("SELECT {} FROM list_entries WHERE {} ORDER BY id DESC LIMIT %s").format(
            _COLUMNS, sql.SQL(" AND ").join(conditions)
        )
        with self._connect() as connection:
            rows = connection.execute(query, [*parameters, limit]).fetchall()
        return [_entry(row) for row in rows]

    def entry(self, entry_id: int) -> StoredEntry | None:
        query = sql.SQL("SELECT {} FROM list_entries WHERE id = %s").format(_COLUMNS)
        with self._connect() as connection:
            row = connection.execute(query, (entry_id,)).fetchone()
        return None if row is None else _entry(row)


class ListReader(RevisionReader):
    """What a runner polls: the lists' revision, and the entries in force at a revision."""

    def __init__(self, url: str) -> None:
        super().__init__(url, "lists")

    def snapshot(self) -> ListSnapshot:
        """The entries in force and the revision they are of, read in one snapshot."""
        connection = self._open()
        with connection.transaction():
            connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            revision = self.revision(connection)
            rows = connection.execute(_IN_FORCE).fetchall()
        entries = [
            ListEntry.expiring(kind, entity, value, expires)
            for kind, entity, value, expires in rows
        ]
        return ListSnapshot(entries, revision=revision)
