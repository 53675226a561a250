"""Which features exist, what they are called, and the exact semantics every one of them follows.

Semantics (the contract the kernel implements and the brute-force reference in the tests checks)
--------------------------------------------------------------------------------------------------
Entities are the card (`card_ref`), the customer (`customer_id`), the merchant (`merchant_id`)
and the terminal (`terminal_id`). A transaction with a null key has null features for that
entity. Events are processed in the order given (the runner sorts a batch by event time; a
stream may still deliver them out of order).

* The watermark W is the largest event time accepted so far (across all entities of a state).
  An event with `t < W - allowed_lateness` is *too late*: it is counted in the state's late
  counter, does not change the state, and all its stateful features are null (the state that
  would describe its moment may already have expired). Every other event is *accepted*.
* An accepted event whose `transaction_id` is already in its card's history (its customer's
  when it has no card) at the same event time is a *replay*: it changes nothing. Its features
  are computed from the current state as if it were arriving now (counting itself once), so a
  batch re-read after a crash gets back the same figures. (A re-read message is the same
  event, so its time is the same; looking only at that moment keeps the check cheap.)
* History of an entity = the accepted, non-replayed events processed before, since its last
  reset. An entity is reset (forgotten) when an accepted event arrives more than `ttl` after
  the entity's latest event time.
* Exact windows (length w <= `max_exact_window`): `tx_count_by_E_w` and `amount_sum_by_E_w`
  count the history events with event time in (t - w, t], plus the event itself.
* Bucketed windows (longer): same, but over whole buckets of `bucket` length: a history event
  counts when floor(ts / bucket) * bucket lies in (floor(t / bucket) * bucket - w,
  floor(t / bucket) * bucket]. Exact at the bucket grain.
* `amount_mean/std_by_E` are over the entity's whole history (std is the sample deviation,
  null under two events; below 1e-4 it is 0: float residue, not spread);
  `amount_zscore_by_E` = (amount - mean) / std, null when std is 0.
* The previous transaction is the history event with the greatest event time <= t (ties: the
  later processed). `seconds_since_prev_by_E` = t - its time. The previous *located* one is the
  same among history events with coordinates; when the event itself has coordinates,
  `distance_from_prev_km_by_E` is the haversine distance to it and `speed_from_prev_kmh_by_E`
  the distance over the elapsed hours (elapsed time floored at one second).
* `is_new_{merchant,country,device}_for_card`: true when no history event of the card with that
  value has an event time later than t - ttl; null when the value itself is null.
* Merchant and terminal: `tx_count_by_E_w` as above, and `distinct_cards_by_E_w` = the number of
  distinct entity references (card, else customer) among window events plus the event itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from fraudstream.core.errors import ConfigError

SECOND: Final = 1_000_000
"""Event times are integer microseconds since the epoch, UTC."""
MINUTE: Final = 60 * SECOND
HOUR: Final = 60 * MINUTE
DAY: Final = 24 * HOUR

ACCOUNT_KINDS: Final = ("card", "customer")
"""Entities that pay: windows of count and sum, amount statistics, previous transaction."""
PLACE_KINDS: Final = ("merchant", "terminal")
"""Entities that are paid: windows of count and distinct paying cards."""
ENTITY_KINDS: Final = (*ACCOUNT_KINDS, *PLACE_KINDS)
NOVELTY_FIELDS: Final = ("merchant", "country", "device")
"""Values whose first appearance on a card is a feature (`is_new_country_for_card`)."""


def window_label(length_us: int) -> str:
    """`60_000_000` -> `1m`, `86_400_000_000` -> `24h`, `7 * DAY` -> `7d`."""
    if length_us % DAY == 0 and length_us > DAY:
        return f"{length_us // DAY}d"
    if length_us % HOUR == 0:
        return f"{length_us // HOUR}h"
    if length_us % MINUTE == 0:
        return f"{length_us // MINUTE}m"
    if length_us % SECOND == 0:
        return f"{length_us // SECOND}s"
    raise ConfigError(f"window length {length_us} µs is not a whole number of seconds")


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """The window set, lateness bound, state TTL and bucket grain; validated on construction."""

    account_windows_us: tuple[int, ...] = (
        MINUTE,
        10 * MINUTE,
        HOUR,
        DAY,
        7 * DAY,
        30 * DAY,
    )
    place_windows_us: tuple[int, ...] = (10 * MINUTE, DAY)
    max_exact_window_us: int = DAY
    bucket_us: int = HOUR
    allowed_lateness_us: int = 10 * MINUTE
    ttl_us: int = 31 * DAY
    chunk_size: int = 8
    names: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        self._validate()
        object.__setattr__(self, "names", tuple(_feature_names(self)))

    def _validate(self) -> None:
        for label, windows in (
            ("account_windows_us", self.account_windows_us),
            ("place_windows_us", self.place_windows_us),
        ):
            if not windows:
                raise ConfigError(f"{label}: at least one window is needed")
            if list(windows) != sorted(set(windows)):
                raise ConfigError(f"{label}: windows must be distinct and ascending")
            for length in windows:
                window_label(length)
                if length <= 0:
                    raise ConfigError(f"{label}: window lengths must be positive")
        if any(w > self.max_exact_window_us for w in self.place_windows_us):
            raise ConfigError("place_windows_us: merchant/terminal windows must all be exact")
        if self.bucket_us <= 0 or self.bucket_us > self.max_exact_window_us:
            raise ConfigError("bucket_us: must be positive and no longer than max_exact_window_us")
        if self.allowed_lateness_us < 0:
            raise ConfigError("allowed_lateness_us: must not be negative")
        longest = max(*self.account_windows_us, *self.place_windows_us)
        if self.ttl_us < longest + self.allowed_lateness_us:
            raise ConfigError(
                "ttl_us: must cover the longest window plus the allowed lateness, "
                "or an expired entity could still be inside a window"
            )
        if not 2 <= self.chunk_size <= 1024:
            raise ConfigError("chunk_size: must be between 2 and 1024")

    @property
    def exact_account_windows(self) -> tuple[int, ...]:
        return tuple(w for w in self.account_windows_us if w <= self.max_exact_window_us)

    @property
    def bucketed_account_windows(self) -> tuple[int, ...]:
        return tuple(w for w in self.account_windows_us if w > self.max_exact_window_us)

    @property
    def event_retention_us(self) -> int:
        """How far behind the watermark per-event history must reach for exact windows."""
        longest = max(*self.exact_account_windows, *self.place_windows_us)
        return longest + self.allowed_lateness_us

    @property
    def bucket_retention_us(self) -> int:
        longest = max(self.bucketed_account_windows, default=0)
        return longest + self.allowed_lateness_us + self.bucket_us

    @property
    def boolean_features(self) -> tuple[str, ...]:
        return tuple(f"is_new_{name}_for_card" for name in NOVELTY_FIELDS)

    @property
    def count_features(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n.startswith(("tx_count_", "distinct_cards_")))


def _feature_names(config: FeatureConfig) -> list[str]:
    """Feature column names in the order the kernel writes them."""
    names: list[str] = []
    for kind in ACCOUNT_KINDS:
        labels = [window_label(w) for w in config.account_windows_us]
        names += [f"tx_count_by_{kind}_{label}" for label in labels]
        names += [f"amount_sum_by_{kind}_{label}" for label in labels]
        names += [
            f"amount_mean_by_{kind}",
            f"amount_std_by_{kind}",
            f"amount_zscore_by_{kind}",
            f"seconds_since_prev_by_{kind}",
            f"distance_from_prev_km_by_{kind}",
            f"speed_from_prev_kmh_by_{kind}",
        ]
    names += [f"is_new_{name}_for_card" for name in NOVELTY_FIELDS]
    for kind in PLACE_KINDS:
        labels = [window_label(w) for w in config.place_windows_us]
        names += [f"tx_count_by_{kind}_{label}" for label in labels]
        names += [f"distinct_cards_by_{kind}_{label}" for label in labels]
    return names
