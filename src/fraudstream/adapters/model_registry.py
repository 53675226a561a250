"""The `models` table: registered model artifacts and which is live or in shadow.

Artifacts are stored whole (a few hundred kilobytes), so every worker of a deployment loads the
same bytes from the database it already writes to; no shared file system is needed. Activation
is one transaction: the role moves from the old version to the new one, and a unique partial
index keeps at most one version per role. Workers only read: `serving()` is one small query,
cheap enough to poll every few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

from fraudstream.core.errors import FraudstreamError

Role = Literal["live", "shadow"]
ROLES: tuple[Role, ...] = ("live", "shadow")


class RegistryError(FraudstreamError):
    """A registry request that cannot be met (an unknown version, a bad role)."""


@dataclass(frozen=True, slots=True)
class Serving:
    """The version in a role, and its artifact's SHA-256 (which changes if the row does)."""

    role: Role
    version: str
    sha256: str


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    version: str
    kind: str
    role: Role | None
    registered_at: datetime
    activated_at: datetime | None
    metadata: dict[str, Any]


class ModelRegistry:
    """Register, activate and read models in the `models` table of `url`'s database."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._poller: psycopg.Connection[Any] | None = None

    def register(
        self, version: str, kind: str, artifact: bytes, sha256: str, metadata: dict[str, Any]
    ) -> bool:
        """Store an artifact; False when this version is already registered."""
        with psycopg.connect(self._url, autocommit=True) as connection:
            inserted = connection.execute(
                "INSERT INTO models (version, kind, artifact, sha256, metadata)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (version) DO NOTHING",
                (version, kind, artifact, sha256, Jsonb(metadata)),
            )
            return inserted.rowcount == 1

    def activate(self, version: str, role: Role = "live") -> None:
        """Give `version` the role (taking it from whichever version held it)."""
        if role not in ROLES:
            raise RegistryError(f"role {role!r}: expected one of {ROLES}")
        with psycopg.connect(self._url) as connection, connection.transaction():
            found = connection.execute(
                "SELECT role FROM models WHERE version = %s FOR UPDATE", (version,)
            ).fetchone()
            if found is None:
                raise RegistryError(f"model {version}: not registered")
            connection.execute("UPDATE models SET role = NULL WHERE role = %s", (role,))
            connection.execute(
                "UPDATE models SET role = %s, activated_at = now() WHERE version = %s",
                (role, version),
            )

    def retire(self, role: Role) -> str | None:
        """Take the role from its version (no model then serves it); returns that version."""
        with psycopg.connect(self._url, autocommit=True) as connection:
            row = connection.execute(
                "UPDATE models SET role = NULL WHERE role = %s RETURNING version", (role,)
            ).fetchone()
        return None if row is None else str(row[0])

    def serving(self) -> dict[Role, Serving]:
        """Who serves each role, over one connection kept for polling (reopened after an
        error, which is raised: the caller decides whether a failed poll matters)."""
        if self._poller is None or self._poller.closed:
            self._poller = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
        try:
            rows = self._poller.execute(
                "SELECT role, version, sha256 FROM models WHERE role IS NOT NULL"
            ).fetchall()
        except psycopg.Error:
            self.close()
            raise
        return {role: Serving(role, version, sha) for role, version, sha in rows}

    def close(self) -> None:
        if self._poller is not None:
            self._poller.close()
            self._poller = None

    def artifact(self, version: str) -> bytes:
        with psycopg.connect(self._url, autocommit=True) as connection:
            row = connection.execute(
                "SELECT artifact FROM models WHERE version = %s", (version,)
            ).fetchone()
        if row is None:
            raise RegistryError(f"model {version}: not registered")
        return bytes(row[0])

    def models(self) -> list[RegisteredModel]:
        with psycopg.connect(self._url, autocommit=True) as connection:
            rows = connection.execute(
                "SELECT version, kind, role, registered_at, activated_at, metadata"
                " FROM models ORDER BY registered_at"
            ).fetchall()
        return [RegisteredModel(*row) for row in rows]
