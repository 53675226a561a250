"""The PostgreSQL schema: versioned migrations, and the stored columns rendered for COPY.

Migrations are `NNNN_name.sql` files shipped in `fraudstream/resources/migrations`.
`migrate(url)` applies the files not yet recorded in `schema_migrations`, in version order, each
in its own transaction together with its record, so a failed migration leaves nothing behind.
Every step first takes a transaction-scoped advisory lock, so workers that start at the same
time apply each migration exactly once: the second one waits, then finds it recorded.

A recorded migration whose file no longer has the same SHA-256 raises `MigrationError`: released
migration files are never edited; a change is a new file. Since every migration runs inside a
transaction, it cannot use statements that refuse one (`CREATE INDEX CONCURRENTLY`).

`render(frame)` turns a scored frame into the CSV that the sink COPYs into `transactions`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Final

import polars as pl
import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from fraudstream.core.errors import FraudstreamError

_log = logging.getLogger(__name__)

MIGRATIONS_RESOURCE: Final = "resources/migrations"
_FILE_NAME: Final = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_LOCK_KEY: Final = 0x66726175_64000001
"""Key of the advisory lock that serialises migrations (per database): 'frau' 'd' 1."""

_CONNECT_TIMEOUT_S: Final = 10

_CREATE_LEDGER: Final = sql.SQL(
    """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version     integer PRIMARY KEY,
        name        text NOT NULL,
        checksum    text NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT now()
    )
    """
)


TRANSACTION_COLUMNS: Final = (
    "transaction_id", "event_time", "card_ref", "card_last4", "customer_id", "merchant_id",
    "mcc", "terminal_id", "amount", "currency", "country", "latitude", "longitude", "channel",
    "device_id", "ip", "score", "rule_score", "model_score", "action", "is_flagged",
    "rules_fired", "reasons", "is_late", "ruleset_version", "model_version",
    "shadow_score", "shadow_model_version", "shadow_rules_fired", "kafka_partition",
    "kafka_offset", "ingested_at", "decided_at",
)  # fmt: skip
"""What `transactions` stores from a scored frame (all but `stored_at`), in COPY order."""

FRAUD_COLUMNS: Final = (
    "transaction_id", "event_time", "card_ref", "card_last4", "customer_id", "merchant_id",
    "amount", "currency", "country", "score", "action", "rules_fired", "reasons", "decided_at",
)  # fmt: skip
"""What `fraud_transactions` stores of a flagged transaction, in COPY order."""

FRAME_NAMES: Final = {"event_time": "timestamp"}
"""Stored columns whose name in the engine's frame differs."""

_FRAME_COLUMNS: Final = tuple(FRAME_NAMES.get(column, column) for column in TRANSACTION_COLUMNS)
_ARRAY_COLUMNS: Final = ("rules_fired", "reasons", "shadow_rules_fired")
_UTC_DATETIME: Final = "%Y-%m-%d %H:%M:%S%.6f+00"

_Connection = psycopg.Connection[TupleRow]


class MigrationError(FraudstreamError):
    """Migration files and recorded migrations disagree; the message names the file."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its version, name and SQL text."""

    version: int
    name: str
    sql: str

    @property
    def file_name(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The shipped migration files, in version order."""
    folder = resources.files("fraudstream").joinpath(MIGRATIONS_RESOURCE)
    found = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            if entry.name.endswith(".sql"):
                raise MigrationError(f"{entry.name}: migration files are named NNNN_name.sql")
            continue
        version = int(match["version"])
        found.append(Migration(version, match["name"], entry.read_text(encoding="utf-8")))
    return _checked_order(found)


def _checked_order(migrations: Iterable[Migration]) -> list[Migration]:
    ordered = sorted(migrations, key=lambda migration: migration.version)
    for before, after in itertools.pairwise(ordered):
        if before.version == after.version:
            raise MigrationError(f"{after.file_name}: version also used by {before.file_name}")
    return ordered


def migrate(url: str, migrations: Sequence[Migration] | None = None) -> list[int]:
    """Apply the pending migrations to the database at `url`; return the versions applied.

    `migrations` defaults to the shipped files (tests pass their own).
    """
    wanted = _checked_order(load_migrations() if migrations is None else migrations)
    applied: list[int] = []
    with psycopg.connect(url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S) as connection:
        with connection.transaction():
            _lock(connection)
            connection.execute(_CREATE_LEDGER)
            _verify(_recorded(connection), wanted)
        for migration in wanted:
            if _apply(connection, migration):
                applied.append(migration.version)
    return applied


def _lock(connection: _Connection) -> None:
    connection.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))


def _recorded(connection: _Connection) -> dict[int, tuple[str, str]]:
    """version -> (name, checksum) of the migrations the database has applied."""
    rows = connection.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {int(version): (str(name), str(checksum)) for version, name, checksum in rows}


def _verify(recorded: dict[int, tuple[str, str]], wanted: Sequence[Migration]) -> None:
    by_version = {migration.version: migration for migration in wanted}
    for version, (name, checksum) in sorted(recorded.items()):
        migration = by_version.get(version)
        if migration is None:  # a newer release migrated this database; its schema is a superset
            _log.warning(
                "database has migration %04d_%s.sql, unknown to this version", version, name
            )
        elif migration.checksum != checksum:
            raise MigrationError(
                f"{migration.file_name}: changed since it was applied "
                f"(checksum {migration.checksum[:12]}, recorded {checksum[:12]}); "
                "add a new migration instead of editing an applied one"
            )


def _apply(connection: _Connection, migration: Migration) -> bool:
    """Apply one migration with its record in one transaction, unless another process did."""
    with connection.transaction():
        _lock(connection)
        done = connection.execute(
            "SELECT checksum FROM schema_migrations WHERE version = %s", (migration.version,)
        ).fetchone()
        if done is not None:
            _verify({migration.version: (migration.name, str(done[0]))}, [migration])
            return False
        _log.info("applying migration %s", migration.file_name)
        connection.execute(migration.sql.encode())  # a file of several statements, no parameters
        connection.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
            (migration.version, migration.name, migration.checksum),
        )
    return True


@dataclass(frozen=True, slots=True)
class Rendered:
    """A scored frame as `transactions` rows (headerless CSV in COPY order) and the ids of its
    flagged transactions."""

    transactions: bytes
    flagged_ids: list[str]


def render(frame: pl.DataFrame) -> Rendered:
    """The stored columns of a scored frame as CSV; other columns (the features) are ignored.

    Polars writes a null as an empty field and an empty string as `""`, exactly how COPY's CSV
    format tells them apart, and floats in shortest round-trip form. Datetimes are converted to
    UTC and written with a literal `+00` (formatting a zoned datetime is four times slower);
    naive ones are taken as UTC. Rows are in id order, so two writers of overlapping batches
    take their row locks in the same order (no deadlock).
    """
    schema = frame.schema
    missing = [name for name in _FRAME_COLUMNS if name not in schema]
    if missing:
        raise ValueError(f"scored frame lacks the columns {missing}")
    selection = _selection(tuple(schema[name] for name in _FRAME_COLUMNS))
    stored = frame.select(selection).sort("transaction_id")
    flagged = frame.get_column("transaction_id").filter(frame.get_column("is_flagged"))
    csv = stored.write_csv(include_header=False, datetime_format=_UTC_DATETIME)
    return Rendered(csv.encode(), flagged.to_list())


@functools.lru_cache(maxsize=8)
def _selection(dtypes: tuple[pl.DataType, ...]) -> tuple[pl.Expr, ...]:
    """The expressions `render` selects, for frames with these column types.

    Cached: building them in Python costs more than running them on a thousand rows.
    """
    return tuple(
        _stored(name, dtype).alias(column)
        for name, dtype, column in zip(_FRAME_COLUMNS, dtypes, TRANSACTION_COLUMNS, strict=True)
    )


def _stored(name: str, dtype: pl.DataType) -> pl.Expr:
    if name in _ARRAY_COLUMNS:
        return _array_literal(name)
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        return pl.col(name).dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return pl.col(name)


def _array_literal(column: str) -> pl.Expr:
    """A list of strings as a Postgres `text[]` literal: `{"a","say \\"hi\\""}`.

    Every element is double-quoted with `\\` and `"` backslash-escaped, so commas, braces,
    spaces and the word NULL inside an element stay text; a null element becomes NULL.
    """
    escaped = (
        pl.element()
        .str.replace_all("\\", "\\\\", literal=True)
        .str.replace_all('"', '\\"', literal=True)
    )
    element = pl.when(pl.element().is_null()).then(pl.lit("NULL"))
    quoted = element.otherwise(pl.lit('"') + escaped + pl.lit('"'))
    joined = pl.col(column).list.eval(quoted).list.join(",")
    return pl.lit("{") + joined + pl.lit("}")
