"""Who may call what: API keys (looked up by digest, cached briefly), roles, rate limits.

A key is looked up once and then cached for `cache_s` seconds, so a revoked key stops working
within that time and no request waits on the database twice in a row. Unknown keys are cached
too, so a flood of wrong keys costs one query per distinct key, not one per request.

Roles grant permissions: a scoring client (`scorer`) scores; an `analyst` reads decisions and
works cases and lists; a `rule_admin` does what an analyst does and manages rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import anyio.to_thread

from fraudstream.adapters.api_keys import ApiKey, KeyStore, key_digest

Permission = Literal["score", "read", "cases", "lists", "rules"]
PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "scorer": frozenset({"score"}),
    "analyst": frozenset({"read", "cases", "lists"}),
    "rule_admin": frozenset({"read", "cases", "lists", "rules"}),
}
_CACHE_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class _Cached:
    key: ApiKey | None
    until: float


class Authenticator:
    """Presented key text -> the stored key, or None."""

    def __init__(
        self, store: KeyStore, cache_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._cache: dict[str, _Cached] = {}
        self._cache_s = cache_s
        self._clock = clock

    async def key(self, presented: str) -> ApiKey | None:
        """Raises `psycopg.OperationalError` when the key is not cached and the database
        cannot be reached."""
        now = self._clock()
        cached = self._cache.get(presented)
        if cached is not None and cached.until > now:
            return cached.key
        found = await anyio.to_thread.run_sync(self._store.find, key_digest(presented))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[presented] = _Cached(found, now + self._cache_s)
        return found


class RateLimiter:
    """A token bucket per key: `rate` requests a second, bursts of up to one second's worth
    (at least one request)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._clock = clock

    def wait_s(self, key_id: str, rate: float) -> float:
        """0 when the request may go (and takes a token), else the seconds until it may."""
        now = self._clock()
        capacity = max(1.0, rate)
        tokens, last = self._buckets.get(key_id, (capacity, now))
        tokens = min(capacity, tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1.0 - tokens) / rate


def allows(key: ApiKey, permission: str) -> bool:
    return permission in PERMISSIONS.get(key.role, frozenset())
