"""The source side of change-data capture: a PostgreSQL table, its publication and slot.

- A publication names the table and what to publish. Inserts and truncates always; updates and
  deletes only when the table has a replica identity (a primary key, or REPLICA IDENTITY FULL
  or USING INDEX), because a publication that publishes updates of a table without one makes
  PostgreSQL refuse every UPDATE and DELETE on it: the capture must never break the system
  that writes the table.
- A logical replication slot with the built-in `pgoutput` plugin keeps the changes until the
  capture acknowledges them. It holds WAL on the server while nobody reads it, which is why
  `slot_states` reports every slot's retained WAL and `drop` removes slot and publication.
- The stream is read over psycopg2's `LogicalReplicationConnection` (psycopg 3 has no
  replication protocol), with DateStyle ISO and TimeZone UTC, so timestamps arrive in the
  text form `pgoutput.typed_value` reads.
- A slot can be created exporting a snapshot: a regular connection imports it and reads the
  rows committed before the slot's consistent point, after which the stream carries on from
  exactly there (`snapshot_rows`).

SQL is composed with `psycopg.sql` (identifiers quoted) and parameters; nothing from settings
is pasted into a statement unquoted.
"""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import psycopg
import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg import sql

from fraudstream.adapters.cdc_positions import CaptureError
from fraudstream.adapters.pg_values import parse_lsn
from fraudstream.adapters.pgoutput import Column, Relation

__all__ = ["CaptureError", "CaptureSource", "ReplicationStream", "SlotState", "SourceTable"]

PLUGIN: Final = "pgoutput"
PROTOCOL_VERSION: Final = "1"
SESSION_OPTIONS: Final = "-c DateStyle=ISO -c TimeZone=UTC"
_CONNECT_TIMEOUT_S: Final = 5


@dataclass(frozen=True)
class SourceTable:
    """`schema.name` of the captured table (`public` when no schema is given)."""

    schema: str
    name: str

    @classmethod
    def parse(cls, text: str) -> SourceTable:
        schema, _, name = text.rpartition(".")
        return cls(schema or "public", name)

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class TableInfo:
    """The captured table as the catalog describes it now."""

    relation: Relation
    has_identity: bool
    """Whether updates and deletes can be published without failing them at the source."""
    database: str


@dataclass(frozen=True)
class SlotState:
    """One replication slot on the source server, and the WAL it keeps there."""

    name: str
    slot_type: str
    plugin: str | None
    database: str | None
    active: bool
    active_pid: int | None
    restart_lsn: int | None
    confirmed_flush_lsn: int | None
    retained_bytes: int | None
    """WAL the server keeps for this slot: current WAL position minus the slot's restart LSN."""
    wal_status: str | None


_TABLE: Final = """
SELECT current_database(), c.oid, c.relreplident,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
"""
_COLUMNS: Final = """
SELECT attname, atttypid, atttypmod FROM pg_attribute
WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum
"""
_PUBLICATION: Final = """
SELECT array_remove(ARRAY[
           CASE WHEN p.pubinsert THEN 'insert' END, CASE WHEN p.pubupdate THEN 'update' END,
           CASE WHEN p.pubdelete THEN 'delete' END, CASE WHEN p.pubtruncate THEN 'truncate' END
       ], NULL),
       (SELECT array_agg(t.schemaname || '.' || t.tablename) FROM pg_publication_tables t
        WHERE t.pubname = p.pubname)
FROM pg_publication p WHERE p.pubname = %s
"""
_SLOTS: Final = """
SELECT slot_name, slot_type, plugin, database, active, active_pid,
       restart_lsn::text, confirmed_flush_lsn::text,
       pg_wal_lsn_diff(
           CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                ELSE pg_current_wal_lsn() END,
           restart_lsn)::bigint,
       wal_status
FROM pg_replication_slots
"""


def _lsn(text: object) -> int | None:
    return None if text is None else parse_lsn(str(text))


class CaptureSource:
    """Publication, slot, snapshot and stream of one captured table."""

    def __init__(self, url: str, table: SourceTable, slot: str, publication: str) -> None:
        self.url = url
        self.table = table
        self.slot = slot
        self.publication = publication

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S)

    def describe(self) -> TableInfo:
        """The table's columns and replica identity; `CaptureError` if there is no such table."""
        with self._connect() as connection:
            found = connection.execute(_TABLE, (self.table.schema, self.table.name)).fetchone()
            if found is None:
                raise CaptureError(f"capture.table: no table {self.table} in the source database")
            database, oid, identity, has_primary_key, has_identity_index = found
            rows = connection.execute(_COLUMNS, (oid,)).fetchall()
        columns = tuple(
            Column(name, type_oid, modifier, False) for name, type_oid, modifier in rows
        )
        relation = Relation(oid, self.table.schema, self.table.name, identity, columns)
        usable = {"f": True, "d": has_primary_key, "i": has_identity_index}.get(identity, False)
        return TableInfo(relation, bool(usable), database)

    def ensure_publication(self, publish: tuple[str, ...]) -> None:
        """The publication exists, holds just the table and publishes the operations in
        `publish` (e.g. `("insert", "truncate")`); altered only where it differs."""
        name = sql.Identifier(self.publication)
        wanted = sql.Literal(", ".join(publish))
        with self._connect() as connection:
            found = connection.execute(_PUBLICATION, (self.publication,)).fetchone()
            if found is None:
                connection.execute(
                    sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = {})").format(
                        name, self.table.identifier, wanted
                    )
                )
                return
            operations, tables = found
            if sorted(tables or []) != [str(self.table)]:
                connection.execute(
                    sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(name, self.table.identifier)
                )
            if set(operations or []) != set(publish):
                connection.execute(
                    sql.SQL("ALTER PUBLICATION {} SET (publish = {})").format(name, wanted)
                )

    def slot_state(self) -> SlotState | None:
        return next((state for state in slot_states(self.url) if state.name == self.slot), None)

    def drop_slot(self) -> bool:
        """Drop the slot (`CaptureError` while a capture reads it); whether it existed."""
        state = self.slot_state()
        if state is None:
            return False
        if state.active:
            raise CaptureError(
                f"slot {self.slot} is in use by process {state.active_pid}: stop the capture first"
            )
        with self._connect() as connection:
            connection.execute("SELECT pg_drop_replication_slot(%s)", (self.slot,))
        return True

    def drop(self) -> tuple[bool, bool]:
        """Drop the slot, then the publication; returns which of the two existed."""
        had_slot = self.drop_slot()
        with self._connect() as connection:
            had_publication = connection.execute(
                "SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,)
            ).fetchone()
            connection.execute(
                sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(self.publication))
            )
        return had_slot, had_publication is not None

    def _replication_connection(self) -> psycopg2.extras.LogicalReplicationConnection:
        parameters = psycopg2.extensions.parse_dsn(self.url)
        options = f"{parameters.pop('options', '')} {SESSION_OPTIONS}".strip()
        parameters.setdefault("connect_timeout", str(_CONNECT_TIMEOUT_S))
        connection: psycopg2.extras.LogicalReplicationConnection = psycopg2.connect(
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            options=options,
            **parameters,
        )
        return connection

    @contextmanager
    def create_slot(self, export_snapshot: bool) -> Iterator[tuple[int, str | None]]:
        """Create the slot; yields its consistent point and, when asked, the name of the
        exported snapshot, valid until the `with` block ends."""
        connection = self._replication_connection()
        try:
            cursor = connection.cursor()
            mode = "EXPORT_SNAPSHOT" if export_snapshot else "NOEXPORT_SNAPSHOT"
            slot = psycopg2.extensions.quote_ident(self.slot, cursor)
            cursor.execute(f"CREATE_REPLICATION_SLOT {slot} LOGICAL {PLUGIN} {mode}")
            row = cursor.fetchone()
            assert row is not None  # the command always answers one row
            yield parse_lsn(row[1]), row[2]
        finally:
            connection.close()

    @contextmanager
    def snapshot_rows(
        self, snapshot: str, relation: Relation, batch: int
    ) -> Iterator[Iterator[list[tuple[str | None, ...]]]]:
        """The table's rows as of the exported `snapshot`, every column as its text form (the
        form the stream carries too), in lists of up to `batch`. The snapshot is imported on
        entry, so the exporting connection may close once this is entered."""
        columns = sql.SQL(", ").join(
            sql.SQL("{}::text").format(sql.Identifier(column.name)) for column in relation.columns
        )
        query = sql.SQL("SELECT {} FROM {}").format(columns, self.table.identifier)
        with psycopg.connect(self.url, connect_timeout=_CONNECT_TIMEOUT_S) as connection:
            connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            connection.read_only = True
            connection.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            connection.execute("SET LOCAL DateStyle = ISO")
            connection.execute("SET LOCAL TimeZone = UTC")
            with connection.cursor(name="fraudstream_capture_snapshot") as cursor:
                cursor.itersize = batch
                cursor.execute(query)
                yield _chunks(cursor, batch)

    def open_stream(self, start_lsn: int, status_interval_s: float) -> ReplicationStream:
        """Start streaming the slot from `start_lsn` (the server starts from the slot's own
        confirmed position when that is later)."""
        connection = self._replication_connection()
        try:
            cursor = connection.cursor()
            cursor.start_replication(
                slot_name=self.slot,
                slot_type=psycopg2.extras.REPLICATION_LOGICAL,
                start_lsn=start_lsn,
                options={"proto_version": PROTOCOL_VERSION, "publication_names": self.publication},
                decode=False,
                status_interval=status_interval_s,
            )
        except BaseException:
            connection.close()
            raise
        return ReplicationStream(connection, cursor)


def _chunks(cursor: psycopg.Cursor[Any], size: int) -> Iterator[list[tuple[str | None, ...]]]:
    while rows := cursor.fetchmany(size):
        yield rows


class ReplicationStream:
    """A started logical replication stream: read payloads, wait, acknowledge."""

    def __init__(
        self,
        connection: psycopg2.extras.LogicalReplicationConnection,
        cursor: psycopg2.extras.ReplicationCursor,
    ) -> None:
        self._connection = connection
        self._cursor = cursor

    def read(self) -> bytes | None:
        """The next message's payload, or None when none is waiting (never blocks); psycopg2
        answers the server's keepalives and sends the status every `status_interval_s`."""
        message = self._cursor.read_message()
        return None if message is None else bytes(message.payload)

    def wait(self, timeout_s: float) -> None:
        """Block until data arrives or `timeout_s` passes."""
        select.select([self._cursor], [], [], timeout_s)

    def acknowledge(self, lsn: int) -> None:
        """Tell the server every transaction ending at or before `lsn` is safe downstream."""
        self._cursor.send_feedback(write_lsn=lsn, flush_lsn=lsn, force=True)

    def close(self) -> None:
        self._connection.close()


def slot_states(url: str) -> list[SlotState]:
    """Every replication slot of the server at `url`, active or not, with its retained WAL."""
    with psycopg.connect(url, connect_timeout=_CONNECT_TIMEOUT_S) as connection:
        rows = connection.execute(_SLOTS + " ORDER BY slot_name").fetchall()
    return [_slot_state(row) for row in rows]


def _slot_state(row: tuple[Any, ...]) -> SlotState:
    name, slot_type, plugin, database, active, pid, restart, confirmed, retained, status = row
    return SlotState(
        name=name,
        slot_type=slot_type,
        plugin=plugin,
        database=database,
        active=bool(active),
        active_pid=pid,
        restart_lsn=_lsn(restart),
        confirmed_flush_lsn=_lsn(confirmed),
        retained_bytes=None if retained is None else int(retained),
        wal_status=status,
    )
