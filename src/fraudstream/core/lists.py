"""Allow and deny lists as features: `card_on_deny_list`, `merchant_on_allow_list`, ...

A list entry names one value of one entity (a card reference, a customer, a merchant, a
device, an IP address or network), the list it is on, and optionally when it expires. The
core receives the entries in force as a `ListSnapshot` (plain data, loaded by an adapter) and
answers, per transaction, whether its entity is on a list. Expiry is judged against the
transaction's own event time, so a decision does not depend on when a batch happened to run;
the loader also leaves out entries already expired by the clock.

An entity that is null is on no list (false, not null): `NOT merchant_on_allow_list` fires for
a transaction without a merchant, which is what a rule written that way means.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Final, Literal, get_args

import numpy as np
import numpy.typing as npt
import polars as pl

from fraudstream.core.errors import ConfigError
from fraudstream.core.events import looks_like_card_number

ListKind = Literal["deny", "allow"]
Entity = Literal["card", "customer", "merchant", "device", "ip"]
LIST_KINDS: Final[tuple[ListKind, ...]] = get_args(ListKind)
ENTITIES: Final[tuple[Entity, ...]] = get_args(Entity)
ENTITY_COLUMNS: Final[Mapping[Entity, str]] = {
    "card": "card_ref",
    "customer": "customer_id",
    "merchant": "merchant_id",
    "device": "device_id",
    "ip": "ip",
}
"""The transaction column each entity's values are matched against."""

LIST_FEATURES: Final[Mapping[str, tuple[Entity, ListKind]]] = {
    f"{entity}_on_{kind}_list": (entity, kind) for entity in ENTITIES for kind in LIST_KINDS
}
"""Every list feature a rule may read: Boolean, never null."""

_NEVER: Final = np.iinfo(np.int64).max
_ABSENT: Final = np.iinfo(np.int64).min
_MAX_VALUE_LENGTH: Final = 128
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def list_value(entity: str, value: str) -> str:
    """The stored form of a list value: trimmed, and an IP address or network in canonical
    form. Raises `ConfigError` naming what is wrong (an unknown entity, an empty or too long
    value, a full card number, or an IP value that is neither an address nor a network)."""
    if entity not in ENTITIES:
        raise ConfigError(f"entity {entity!r}: expected one of {', '.join(ENTITIES)}")
    text = value.strip()
    if not text or len(text) > _MAX_VALUE_LENGTH:
        raise ConfigError(f"value: must be 1 to {_MAX_VALUE_LENGTH} characters")
    if not text.isprintable():
        raise ConfigError("value: must not contain control characters")
    if looks_like_card_number(text):
        raise ConfigError("value: looks like a full card number; list the card's reference")
    if entity == "ip":
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as error:
            raise ConfigError(f"value {text!r}: not an IP address or network ({error})") from None
        single = network.num_addresses == 1
        return str(network.network_address) if single else network.with_prefixlen
    return text


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One value on one list; `expires_us` is microseconds since the epoch, or None."""

    kind: ListKind
    entity: Entity
    value: str
    expires_us: int | None = None

    @staticmethod
    def expiring(kind: ListKind, entity: Entity, value: str, expires: datetime | None) -> ListEntry:
        expires_us = None if expires is None else (expires - _EPOCH) // timedelta(microseconds=1)
        return ListEntry(kind, entity, value, expires_us)


@dataclass(slots=True)
class _Members:
    """One (entity, list): exact values, and IP networks by prefix length (IP lists only)."""

    exact: dict[str, int] = field(default_factory=dict)
    networks: dict[tuple[int, int], dict[int, int]] = field(default_factory=dict)
    """(address bits, prefix length) -> {network address as an integer -> expiry}."""

    def add(self, entry: ListEntry) -> None:
        expires = _NEVER if entry.expires_us is None else entry.expires_us
        if entry.entity == "ip" and "/" in entry.value:
            network = ipaddress.ip_network(entry.value)
            family = (network.max_prefixlen, network.prefixlen)
            by_address = self.networks.setdefault(family, {})
            key = int(network.network_address)
            by_address[key] = max(by_address.get(key, _ABSENT), expires)
        else:
            self.exact[entry.value] = max(self.exact.get(entry.value, _ABSENT), expires)


class ListSnapshot:
    """The list entries in force, as of one `revision` of the lists."""

    def __init__(self, entries: Iterable[ListEntry] = (), revision: int = 0) -> None:
        self.revision = revision
        self._members: dict[tuple[Entity, ListKind], _Members] = {}
        count = 0
        for entry in entries:
            self._members.setdefault((entry.entity, entry.kind), _Members()).add(entry)
            count += 1
        self.entries = count

    def membership(self, feature: str, batch: pl.DataFrame) -> npt.NDArray[np.bool_]:
        """Per row of `batch` (the engine's transaction schema): is its entity on the list
        `feature` names, at the row's event time? Costs nothing while that list is empty."""
        try:
            entity, kind = LIST_FEATURES[feature]
        except KeyError:
            raise ConfigError(f"{feature!r} is not a list feature") from None
        members = self._members.get((entity, kind))
        if members is None:
            return np.zeros(batch.height, dtype=np.bool_)
        values = batch.get_column(ENTITY_COLUMNS[entity]).to_list()
        expiry = np.fromiter(
            (_ABSENT if v is None else members.exact.get(v, _ABSENT) for v in values),
            dtype=np.int64,
            count=len(values),
        )
        if members.networks or entity == "ip":
            expiry = np.maximum(expiry, _ip_expiry(members, values))
        event_us = batch.get_column("timestamp").dt.epoch("us").to_numpy()
        return expiry > event_us


def _ip_expiry(members: _Members, values: list[str | None]) -> npt.NDArray[np.int64]:
    """The latest expiry of any entry covering each row's address: the exact entries matched
    in canonical form (an event may write an IPv6 address another way), then the networks."""
    expiry = np.full(len(values), _ABSENT, dtype=np.int64)
    for row, text in enumerate(values):
        if text is None:
            continue
        parsed = _parse_address(text)
        if parsed is None:
            continue
        canonical, key, bits = parsed
        best = members.exact.get(canonical, _ABSENT)
        for (family_bits, prefix), by_address in members.networks.items():
            if family_bits == bits:
                host_bits = bits - prefix
                best = max(best, by_address.get(key >> host_bits << host_bits, _ABSENT))
        expiry[row] = best
    return expiry


@lru_cache(maxsize=65_536)
def _parse_address(text: str) -> tuple[str, int, int] | None:
    """(canonical text, integer value, bits) of an IP address, or None if it is not one."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(address), int(address), address.max_prefixlen
