"""What the simulator generates: population size, time span, geography and fraud rates.

Rates are fractions of a population, not of transactions, because a fraud scenario hits a card
(or a customer, or a terminal) and then produces however many transactions its pattern needs:

* `velocity_attack`, `card_testing`, `large_amount`, `impossible_travel`: fraction of cards;
* `account_takeover`: fraction of customers;
* `compromised_terminal`: fraction of physical terminals.

A rate above zero always yields at least one incident, so small test runs still contain every
scenario. The fraud share of transactions therefore depends on transactions per card: the
defaults (100 000 transactions, 10 000 customers, 30 days) give about 1.5 %; scale
`n_customers` together with `n_transactions` to keep that share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final

from fraudstream.core.currencies import ISO_4217_CODES
from fraudstream.core.errors import ConfigError
from fraudstream.core.events import is_country_code

SCENARIOS: Final = (
    "velocity_attack",
    "card_testing",
    "large_amount",
    "impossible_travel",
    "compromised_terminal",
    "account_takeover",
)

DEFAULT_SCENARIO_RATES: Final[Mapping[str, float]] = MappingProxyType(
    {
        "velocity_attack": 0.003,
        "card_testing": 0.003,
        "large_amount": 0.005,
        "impossible_travel": 0.004,
        "compromised_terminal": 0.002,
        "account_takeover": 0.003,
    }
)

MAX_SCENARIO_RATE: Final = 0.2
"""Above this a "scenario" is no longer fraud in a legitimate population but the population."""


@dataclass(frozen=True, slots=True)
class City:
    """A place customers live and merchants trade, with its (rounded) UTC offset for rhythm."""

    name: str
    latitude: float
    longitude: float
    utc_offset_hours: float = 0.0
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class HomeCountry:
    """An ISO 3166 alpha-2 country, its ISO 4217 currency, its share of customers and cities."""

    code: str
    currency: str
    weight: float
    cities: tuple[City, ...]


DEFAULT_HOME_COUNTRIES: Final[tuple[HomeCountry, ...]] = (
    HomeCountry(
        "US",
        "USD",
        0.45,
        (
            City("New York", 40.71, -74.01, -5, 3.0),
            City("Chicago", 41.88, -87.63, -6, 1.5),
            City("Los Angeles", 34.05, -118.24, -8, 2.0),
            City("Houston", 29.76, -95.37, -6, 1.2),
        ),
    ),
    HomeCountry(
        "GB",
        "GBP",
        0.15,
        (City("London", 51.51, -0.13, 0, 3.0), City("Manchester", 53.48, -2.24, 0, 1.0)),
    ),
    HomeCountry(
        "DE",
        "EUR",
        0.12,
        (City("Berlin", 52.52, 13.40, 1, 1.5), City("Munich", 48.14, 11.58, 1, 1.0)),
    ),
    HomeCountry(
        "FR",
        "EUR",
        0.10,
        (City("Paris", 48.86, 2.35, 1, 3.0), City("Lyon", 45.76, 4.84, 1, 1.0)),
    ),
    HomeCountry("ES", "EUR", 0.06, (City("Madrid", 40.42, -3.70, 1),)),
    HomeCountry("CA", "CAD", 0.06, (City("Toronto", 43.65, -79.38, -5),)),
    HomeCountry("AU", "AUD", 0.06, (City("Sydney", -33.87, 151.21, 10),)),
)

DEFAULT_START: Final = datetime(2026, 1, 1, tzinfo=UTC)


def _default_rates() -> Mapping[str, float]:
    return DEFAULT_SCENARIO_RATES


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """Everything that determines a generated stream: same config, same bytes.

    `scenario_rates` may name only some scenarios; the others keep their default rate (set a
    rate to 0 to switch a scenario off). `n_transactions` is met exactly unless the fraud alone
    would exceed a quarter of it, in which case incidents are scaled down first.
    """

    seed: int = 0
    n_transactions: int = 100_000
    n_customers: int = 10_000
    n_merchants: int = 2_000
    start: datetime = DEFAULT_START
    days: int = 30
    # A read-only mapping is not hashable; equal configs still hash equal without it.
    scenario_rates: Mapping[str, float] = field(default_factory=_default_rates, hash=False)
    home_countries: tuple[HomeCountry, ...] = DEFAULT_HOME_COUNTRIES

    def __post_init__(self) -> None:
        self._validate_sizes()
        unknown = sorted(set(self.scenario_rates) - set(SCENARIOS))
        if unknown:
            raise ConfigError(f"scenario_rates: unknown scenario(s) {unknown}; known: {SCENARIOS}")
        merged = {**DEFAULT_SCENARIO_RATES, **self.scenario_rates}
        for name, rate in merged.items():
            if not isinstance(rate, int | float) or not 0.0 <= rate <= MAX_SCENARIO_RATE:
                raise ConfigError(f"scenario_rates[{name!r}]: must be in [0, {MAX_SCENARIO_RATE}]")
        object.__setattr__(
            self,
            "scenario_rates",
            MappingProxyType({name: float(merged[name]) for name in SCENARIOS}),
        )
        object.__setattr__(self, "home_countries", tuple(self.home_countries))
        _validate_countries(self.home_countries)

    def _validate_sizes(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed: must be a non-negative integer")
        for name, low in (("n_transactions", 1), ("n_customers", 1), ("n_merchants", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name}: must be an integer >= {low}")
        if isinstance(self.days, bool) or not isinstance(self.days, int) or self.days < 1:
            raise ConfigError("days: must be an integer >= 1")
        if not isinstance(self.start, datetime) or self.start.utcoffset() is None:
            raise ConfigError("start: must be a timezone-aware datetime")

    @property
    def start_us(self) -> int:
        """`start` as integer microseconds since the epoch (UTC), without float rounding."""
        delta = self.start - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds

    @property
    def span_us(self) -> int:
        return self.days * 86_400 * 1_000_000


def _validate_countries(countries: tuple[HomeCountry, ...]) -> None:
    if not countries:
        raise ConfigError("home_countries: at least one country is needed")
    seen: set[str] = set()
    for country in countries:
        where = f"home_countries[{country.code!r}]"
        if not is_country_code(country.code):
            raise ConfigError(f"{where}: code must be an ISO 3166 alpha-2 code like 'US'")
        if country.code in seen:
            raise ConfigError(f"{where}: listed twice")
        seen.add(country.code)
        if country.currency not in ISO_4217_CODES:
            raise ConfigError(f"{where}: {country.currency!r} is not an ISO 4217 currency")
        if not (math.isfinite(country.weight) and country.weight > 0):
            raise ConfigError(f"{where}: weight must be positive")
        if not country.cities:
            raise ConfigError(f"{where}: at least one city is needed")
        for city in country.cities:
            if not (-85.0 <= city.latitude <= 85.0 and -180.0 <= city.longitude <= 180.0):
                raise ConfigError(f"{where}: city {city.name!r} has invalid coordinates")
            if not (math.isfinite(city.weight) and city.weight > 0):
                raise ConfigError(f"{where}: city {city.name!r} weight must be positive")
            if not -12.0 <= city.utc_offset_hours <= 14.0:
                raise ConfigError(f"{where}: city {city.name!r} has an impossible UTC offset")
