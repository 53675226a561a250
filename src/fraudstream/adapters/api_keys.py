"""API keys in PostgreSQL (`api_keys`), and the audit log every change is written to.

A key is `fsk_<id>_<secret>`: the id names it in lists and logs, the secret is 32 random bytes.
Only the SHA-256 of the whole key is stored, so a database dump gives no usable key; the key is
shown once, by `create`. A fast hash is right here: the secret is random, not a password, so
there is nothing to guess from the hash.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, get_args

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from fraudstream.core.errors import FraudstreamError

Role = Literal["scorer", "analyst", "rule_admin"]
ROLES: Final[tuple[str, ...]] = get_args(Role)
KEY_PREFIX: Final = "fsk_"

_Connection = psycopg.Connection[TupleRow]
_COLUMNS: Final = sql.SQL("id, name, role, rate_limit_per_s, created_by, created_at, revoked_at")
_INSERT: Final = sql.SQL(
    "INSERT INTO api_keys (id, name, role, key_sha256, rate_limit_per_s, created_by)"
    " VALUES (%s, %s, %s, %s, %s, %s) RETURNING {}"
).format(_COLUMNS)
_REVOKE: Final = sql.SQL(
    "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s RETURNING {}"
).format(_COLUMNS)
_ALL: Final = sql.SQL("SELECT {} FROM api_keys ORDER BY created_at, id").format(_COLUMNS)
_FIND: Final = sql.SQL(
    "SELECT {} FROM api_keys WHERE key_sha256 = %s AND revoked_at IS NULL"
).format(_COLUMNS)


class ApiKeyError(FraudstreamError):
    """A key that cannot be created or revoked; the message says why."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    name: str
    role: Role
    rate_limit_per_s: float
    created_by: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def key_digest(key: str) -> str:
    """What is stored of a key, and looked up when one is presented."""
    return hashlib.sha256(key.encode()).hexdigest()


def _row(row: tuple[object, ...]) -> ApiKey:
    key_id, name, role, rate, created_by, created_at, revoked_at = row
    return ApiKey(
        id=str(key_id),
        name=str(name),
        role=role,  # type: ignore[arg-type] - the table's CHECK admits only roles
        rate_limit_per_s=float(rate),  # type: ignore[arg-type]
        created_by=str(created_by),
        created_at=created_at,  # type: ignore[arg-type]
        revoked_at=revoked_at,  # type: ignore[arg-type]
    )


def audit(
    connection: _Connection,
    actor: str,
    action: str,
    entity: tuple[str, str],
    details: dict[str, object] | None = None,
) -> None:
    """One `audit_log` row, in the caller's database transaction."""
    connection.execute(
        "INSERT INTO audit_log (actor, action, entity_type, entity_id, details)"
        " VALUES (%s, %s, %s, %s, %s)",
        (actor, action, entity[0], entity[1], Jsonb(details or {})),
    )


class KeyStore:
    """Create, list, revoke and look up keys. Changes open a connection per call (they are
    rare); lookups share one, kept open, and are cached by the API (`runners/api_auth.py`)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lookup: _Connection | None = None
        self._lookup_lock = threading.Lock()

    def _connect(self) -> _Connection:
        return psycopg.connect(self._url, autocommit=True, connect_timeout=5)

    def create(
        self, name: str, role: str, rate_limit_per_s: float, actor: str
    ) -> tuple[ApiKey, str]:
        """A new key and its secret text (shown once: only its digest is stored)."""
        if role not in ROLES:
            raise ApiKeyError(f"role {role!r}: expected one of {', '.join(ROLES)}")
        if not name.strip():
            raise ApiKeyError("name: must not be empty")
        if not rate_limit_per_s > 0:
            raise ApiKeyError(f"rate limit {rate_limit_per_s}: must be above 0 requests/s")
        key_id = secrets.token_hex(6)
        text = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        with self._connect() as connection, connection.transaction():
            row = connection.execute(
                _INSERT,
                (key_id, name.strip(), role, key_digest(text), rate_limit_per_s, actor),
            ).fetchone()
            assert row is not None
            audit(connection, actor, "create", ("api_key", key_id), {"name": name, "role": role})
        return _row(row), text

    def revoke(self, key_id: str, actor: str) -> ApiKey:
        with self._connect() as connection, connection.transaction():
            row = connection.execute(_REVOKE, (key_id,)).fetchone()
            if row is None:
                raise ApiKeyError(f"no API key {key_id!r}")
            audit(connection, actor, "revoke", ("api_key", key_id))
        return _row(row)

    def all(self) -> list[ApiKey]:
        with self._connect() as connection:
            rows = connection.execute(_ALL).fetchall()
        return [_row(row) for row in rows]

    def find(self, digest: str) -> ApiKey | None:
        """The active key whose digest this is, or None; raises `psycopg.OperationalError`
        when the database cannot be reached (the next call reconnects)."""
        with self._lookup_lock:
            if self._lookup is None or self._lookup.closed or self._lookup.broken:
                self._lookup = self._connect()
            try:
                row = self._lookup.execute(_FIND, (digest,)).fetchone()
            except (psycopg.OperationalError, psycopg.InterfaceError):
                self._lookup.close()
                raise
        return None if row is None else _row(row)

    def close(self) -> None:
        with self._lookup_lock:
            if self._lookup is not None:
                self._lookup.close()
