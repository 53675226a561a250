"""Labelled fraud: one small function per scenario, each drawing only from its own seeded RNG.

Every scenario takes the cards it hits out of a shared pool, so no card is in two scenarios and
the signals of one (say, the previous card-present location an impossible-travel test relies on)
are not blurred by another. Fraud rows are few (a percent or two), so they are built row by row.

Each scenario is built to be visible to the engine's features (`core.features.config`):
velocity and card testing in `tx_count_by_card_10m`, large amounts in `amount_zscore_by_card`,
impossible travel in `speed_from_prev_kmh_by_card`, a compromised terminal in
`distinct_cards_by_terminal_24h`, account takeover in `is_new_device_for_card` and amounts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import polars as pl

from fraudstream.core.events import TRANSACTION_SCHEMA
from fraudstream.generator.config import SCENARIOS, GeneratorConfig
from fraudstream.generator.population import (
    ATM_MCC,
    ATTACKER_OCTETS,
    Population,
    haversine_km,
    random_hex,
    random_ipv4,
)

MINUTE: Final = 60_000_000
HOUR: Final = 60 * MINUTE
DAY: Final = 24 * HOUR
FAR_KM: Final = 3200.0
"""Impossible travel goes at least this far; with at most 3 h elapsed that is > 1000 km/h."""

_EVENT_FIELDS: Final = (
    "merchant_id", "mcc", "terminal_id", "amount", "currency", "country", "latitude",
    "longitude", "channel", "device_id", "ip",
)  # fmt: skip
ROW_SCHEMA: Final[dict[str, pl.DataType]] = {
    "ts": pl.Int64(),
    "card": pl.Int64(),
    **{name: TRANSACTION_SCHEMA[name] for name in _EVENT_FIELDS},
    "is_fraud": pl.Boolean(),
    "scenario": pl.String(),
}
"""Rows before the card is expanded into card_ref/card_last4/customer_id and ids are given."""

EXPECTED_ROWS: Final[dict[str, float]] = {
    "velocity_attack": 14.0,
    "card_testing": 10.5,
    "large_amount": 1.0,
    "impossible_travel": 2.3,
    "compromised_terminal": 50.0,
    "account_takeover": 3.5,
}
"""Mean rows one incident adds (anchors included); used to keep fraud under a share of the total."""

MAX_FRAUD_SHARE: Final = 0.25

# Far-away places for impossible travel when no simulated merchant is far enough from home.
_FAR_AWAY: Final = (
    ("JP", "JPY", 35.68, 139.69),
    ("BR", "BRL", -23.55, -46.63),
    ("ZA", "ZAR", -26.20, 28.05),
    ("TH", "THB", 13.76, 100.50),
    ("US", "USD", 40.71, -74.01),
    ("GB", "GBP", 51.51, -0.13),
    ("AU", "AUD", -33.87, 151.21),
)


@dataclass(slots=True)
class ScenarioRows:
    """Accumulates fraud (and scenario anchor) rows in `ROW_SCHEMA` order."""

    columns: dict[str, list[object]] = field(
        default_factory=lambda: {name: [] for name in ROW_SCHEMA}
    )

    def add(self, **values: object) -> None:
        if unknown := values.keys() - self.columns.keys():
            raise KeyError(f"not a row column: {sorted(unknown)}")
        for name, column in self.columns.items():
            column.append(values.get(name))

    def to_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.columns, schema=ROW_SCHEMA)


@dataclass(slots=True)
class ScenarioContext:
    """What a scenario needs: the world, its RNG, the card pool, and where it writes rows."""

    config: GeneratorConfig
    pop: Population
    rng: np.random.Generator
    available: np.ndarray  # per card: not yet taken by a scenario
    no_travel: np.ndarray  # per customer: must not be given a legitimate trip
    rows: ScenarioRows = field(default_factory=ScenarioRows)

    def draw_cards(self, k: int, *preferred: np.ndarray) -> np.ndarray:
        """Up to `k` free cards, filling from each preferred card mask in turn, then any."""
        taken: list[np.ndarray] = []
        for mask in (*preferred, np.ones_like(self.available)):
            need = k - sum(len(t) for t in taken)
            pool = np.flatnonzero(self.available & mask)
            if need <= 0 or len(pool) == 0:
                continue
            pick = self.rng.choice(pool, size=min(need, len(pool)), replace=False)
            self.available[pick] = False
            taken.append(np.sort(pick))
        return np.concatenate(taken) if taken else np.zeros(0, np.int64)

    def incident_time(self, duration_us: int) -> int:
        """A start time leaving history before (up to 2 days) and room for the incident after."""
        start, span = self.config.start_us, self.config.span_us
        low = start + min(2 * DAY, span // 4)
        high = max(low + 1, start + span - duration_us - MINUTE)
        return int(self.rng.integers(low, high))

    def online_merchants(self, n: int, country: int | None = None) -> np.ndarray:
        offsets, members = self.pop.online_by_country
        pool = members if country is None else members[offsets[country] : offsets[country + 1]]
        if len(pool) == 0:
            pool = members
        return pool[self.rng.integers(0, len(pool), n)]

    def new_device(self, attacker: bool, country: int = 0) -> tuple[str, str]:
        """A device id never seen on the card and an IP (attacker range, or local-looking)."""
        octets = ATTACKER_OCTETS if attacker else self.pop.country_octets[country]
        octet = np.array([octets[int(self.rng.integers(0, len(octets)))]])
        return random_hex(self.rng, "dev_", 1, 12)[0], random_ipv4(self.rng, octet)[0]

    def home_country(self, card: int) -> int:
        return int(self.pop.customer_country[self.pop.card_customer[card]])

    def add_online(
        self, scenario: str | None, ts: int, card: int, merchant: int, *, amount: float,
        device: tuple[str, str],
    ) -> None:  # fmt: skip
        pop = self.pop
        self.rows.add(
            ts=ts, card=card, merchant_id=pop.merchant_id[merchant],
            mcc=pop.merchant_mcc[merchant], amount=round(amount, 2),
            currency=pop.country_currency[self.home_country(card)],
            country=pop.country_code[pop.merchant_country[merchant]], channel="online",
            device_id=device[0], ip=device[1], is_fraud=scenario is not None, scenario=scenario,
        )  # fmt: skip

    def add_present(
        self, scenario: str | None, ts: int, card: int, merchant: int, *, amount: float,
        terminal: int | None = None,
    ) -> None:  # fmt: skip
        pop = self.pop
        if terminal is None:
            slot = int(self.rng.integers(0, pop.terminal_count[merchant]))
            terminal = int(pop.terminal_start[merchant]) + slot
        country = int(pop.merchant_country[merchant])
        if pop.merchant_mcc[merchant] == ATM_MCC:
            amount = max(20.0, round(amount / 20.0) * 20.0)
        self.rows.add(
            ts=ts, card=card, merchant_id=pop.merchant_id[merchant],
            mcc=pop.merchant_mcc[merchant], terminal_id=pop.terminal_id[terminal],
            amount=round(amount, 2), currency=pop.country_currency[country],
            country=pop.country_code[country], latitude=float(pop.merchant_lat[merchant]),
            longitude=float(pop.merchant_lon[merchant]), channel="card_present",
            is_fraud=scenario is not None, scenario=scenario,
        )  # fmt: skip


def _sorted_offsets(rng: np.random.Generator, n: int, length_us: float) -> np.ndarray:
    return np.sort(rng.uniform(0.0, length_us, n)).astype(np.int64)


def velocity_attack(ctx: ScenarioContext, n_incidents: int) -> None:
    """A stolen card used online 8-20 times in 5-10 minutes, at many merchants, new device."""
    rng = ctx.rng
    for card in ctx.draw_cards(n_incidents).tolist():
        n = int(rng.integers(8, 21))
        duration = rng.uniform(5, 10) * MINUTE
        t0 = ctx.incident_time(int(duration))
        device = ctx.new_device(attacker=True)
        amounts = np.clip(rng.lognormal(np.log(60.0), 0.5, n), 10.0, 400.0)
        merchants = ctx.online_merchants(n)
        for dt, merchant, amount in zip(
            _sorted_offsets(rng, n, duration), merchants, amounts, strict=True
        ):
            ctx.add_online(
                "velocity_attack", t0 + int(dt), card, int(merchant), amount=amount, device=device
            )


def card_testing(ctx: ScenarioContext, n_incidents: int) -> None:
    """5-15 tiny charges in a few minutes at one online merchant, half the time then a big one."""
    rng = ctx.rng
    for card in ctx.draw_cards(n_incidents).tolist():
        n = int(rng.integers(5, 16))
        duration = rng.uniform(1, 5) * MINUTE
        t0 = ctx.incident_time(int(duration) + HOUR)
        device = ctx.new_device(attacker=True)
        merchant = int(ctx.online_merchants(1)[0])
        for dt in _sorted_offsets(rng, n, duration).tolist():
            tiny = rng.uniform(0.5, 3.0)
            ctx.add_online("card_testing", t0 + dt, card, merchant, amount=tiny, device=device)
        if rng.random() < 0.5:
            ts = t0 + int(duration + rng.uniform(5, 55) * MINUTE)
            big = int(ctx.online_merchants(1)[0])
            amount = rng.uniform(150, 1500)
            ctx.add_online("card_testing", ts, card, big, amount=amount, device=device)


def large_amount(ctx: ScenarioContext, n_incidents: int) -> None:
    """One purchase 5-30 times the card's usual amount (a quarter of them above 9000)."""
    rng, pop = ctx.rng, ctx.pop
    for card in ctx.draw_cards(n_incidents).tolist():
        customer = int(pop.card_customer[card])
        amount = pop.usual_amount(customer) * rng.uniform(5, 30)
        if rng.random() < 0.25:
            amount = rng.uniform(9_000, 20_000)
        ts = ctx.incident_time(HOUR)
        if rng.random() < 0.5:
            merchant = int(ctx.online_merchants(1)[0])
            device = ctx.new_device(attacker=True)
            ctx.add_online("large_amount", ts, card, merchant, amount=amount, device=device)
        else:
            offsets, members = pop.physical_by_city
            city = int(pop.customer_city[customer])
            pool = members[offsets[city] : offsets[city + 1]]
            pricey = [m for m in pool.tolist() if pop.merchant_mcc[m] in ("5732", "5311")]
            choices = pricey or pool.tolist() or members.tolist()
            merchant = choices[int(rng.integers(0, len(choices)))]
            ctx.add_present("large_amount", ts, card, merchant, amount=amount)


def impossible_travel(ctx: ScenarioContext, n_incidents: int) -> None:
    """A card present at home, then present > 3200 km away 1-3 hours later (sometimes twice)."""
    rng, pop = ctx.rng, ctx.pop
    physical = np.flatnonzero(~pop.merchant_online)
    for card in ctx.draw_cards(n_incidents).tolist():
        customer = int(pop.card_customer[card])
        ctx.no_travel[customer] = True
        home_lat, home_lon = pop.customer_lat[customer], pop.customer_lon[customer]
        t_home = _local_daytime(ctx, customer, ctx.incident_time(5 * HOUR))
        favourites = pop.favourite[customer, : max(1, pop.favourite_count[customer])]
        local_shop = int(rng.choice(favourites))
        ctx.add_present(None, t_home, card, local_shop, amount=_everyday(ctx, customer))
        ts = t_home + int(rng.uniform(1.0, 3.0) * HOUR)
        dist = haversine_km(
            home_lat, home_lon, pop.merchant_lat[physical], pop.merchant_lon[physical]
        )
        far = physical[dist > FAR_KM]
        amount = _everyday(ctx, customer) * rng.uniform(1.5, 6.0)
        n_far = 2 if rng.random() < 0.3 else 1
        if len(far):
            merchant = int(rng.choice(far))
            for _ in range(n_far):
                ctx.add_present("impossible_travel", ts, card, merchant, amount=amount)
                ts += int(rng.uniform(5, 40) * MINUTE)
        else:
            _add_far_away(ctx, ts, card, amount=amount, lat=float(home_lat), lon=float(home_lon))


def _add_far_away(
    ctx: ScenarioContext, ts: int, card: int, *, amount: float, lat: float, lon: float
) -> None:
    """Fallback for single-region worlds: a made-up shop in a far city outside the population."""
    places = [p for p in _FAR_AWAY if haversine_km(lat, lon, p[2], p[3]) > FAR_KM]
    code, currency, p_lat, p_lon = places[int(ctx.rng.integers(0, len(places)))]
    shop = random_hex(ctx.rng, "merch_x", 1, 8)[0]
    ctx.rows.add(
        ts=ts, card=card, merchant_id=shop, mcc="5311", terminal_id=f"term_{shop[6:]}_0",
        amount=round(amount, 2), currency=currency, country=code, latitude=p_lat,
        longitude=p_lon, channel="card_present", is_fraud=True, scenario="impossible_travel",
    )  # fmt: skip


def compromised_terminal(ctx: ScenarioContext, n_incidents: int) -> None:
    """One terminal charges 20-60 different cards within 2-16 hours (some cards twice)."""
    rng, pop = ctx.rng, ctx.pop
    n_terminals = len(pop.terminal_id)
    terminals = rng.choice(n_terminals, size=min(n_incidents, n_terminals), replace=False)
    card_city = pop.customer_city[pop.card_customer]
    card_country = pop.city_country[card_city]
    for terminal in np.sort(terminals).tolist():
        merchant = int(pop.terminal_merchant[terminal])
        city = int(pop.merchant_city[merchant])
        country = int(pop.city_country[city])
        cards = ctx.draw_cards(
            int(rng.integers(20, 61)), card_city == city, card_country == country
        )
        span = rng.uniform(2, 16) * HOUR
        t0 = ctx.incident_time(int(span))
        for card in cards.tolist():
            hits = 2 if rng.random() < 0.25 else 1
            for dt in _sorted_offsets(rng, hits, span).tolist():
                amount = float(np.clip(rng.lognormal(np.log(220.0), 0.45), 60.0, 1500.0))
                ctx.add_present(
                    "compromised_terminal",
                    t0 + dt,
                    card,
                    merchant,
                    amount=amount,
                    terminal=terminal,
                )


def account_takeover(ctx: ScenarioContext, n_incidents: int) -> None:
    """A new device logs in, then 2-5 high-value online purchases within the hour.

    Four times in ten the takeover comes from abroad: attacker IP and a foreign merchant.
    """
    rng, pop = ctx.rng, ctx.pop
    n_countries = len(pop.country_code)
    for card in ctx.draw_cards(n_incidents).tolist():
        customer = int(pop.card_customer[card])
        home = ctx.home_country(card)
        abroad = n_countries > 1 and rng.random() < 0.4
        device = ctx.new_device(attacker=abroad, country=home)
        where = int((home + rng.integers(1, n_countries)) % n_countries) if abroad else home
        n = int(rng.integers(2, 6))
        t0 = ctx.incident_time(HOUR) + int(rng.uniform(2, 15) * MINUTE)
        usual = pop.usual_amount(customer)
        for dt in _sorted_offsets(rng, n, 45 * MINUTE).tolist():
            amount = min(8_000.0, max(250.0, usual * rng.uniform(4, 15)))
            merchant = int(ctx.online_merchants(1, where)[0])
            ctx.add_online(
                "account_takeover", t0 + dt, card, merchant, amount=amount, device=device
            )


def _everyday(ctx: ScenarioContext, customer: int) -> float:
    pop = ctx.pop
    return float(ctx.rng.lognormal(pop.amount_mu[customer], pop.amount_sigma[customer]))


def _local_daytime(ctx: ScenarioContext, customer: int, ts: int) -> int:
    """Move `ts` to between 09:00 and 19:00 local time on its local day, inside the span."""
    offset = int(ctx.pop.city_utc_offset_us[ctx.pop.customer_city[customer]])
    day_start = (ts + offset) // DAY * DAY - offset
    moved = day_start + int(ctx.rng.uniform(9, 19) * HOUR)
    low, high = ctx.config.start_us, ctx.config.start_us + ctx.config.span_us - 4 * HOUR
    return max(low, min(moved, max(low, high)))


SCENARIO_FUNCTIONS: Final[dict[str, Callable[[ScenarioContext, int], None]]] = {
    "velocity_attack": velocity_attack,
    "card_testing": card_testing,
    "large_amount": large_amount,
    "impossible_travel": impossible_travel,
    "compromised_terminal": compromised_terminal,
    "account_takeover": account_takeover,
}
if tuple(SCENARIO_FUNCTIONS) != SCENARIOS:  # pragma: no cover - a programming error
    raise RuntimeError("SCENARIO_FUNCTIONS must list config.SCENARIOS in order")


def incident_counts(config: GeneratorConfig, pop: Population) -> dict[str, int]:
    """Incidents per scenario: rate x population hit, at least one for a positive rate, and
    scaled down when the fraud alone would pass `MAX_FRAUD_SHARE` of `n_transactions`."""
    population = {
        "compromised_terminal": len(pop.terminal_id),
        "account_takeover": len(pop.customer_id),
    }
    raw = {
        name: rate * population.get(name, len(pop.card_ref))
        for name, rate in config.scenario_rates.items()
    }
    expected = sum(raw[name] * EXPECTED_ROWS[name] for name in raw)
    scale = min(1.0, MAX_FRAUD_SHARE * config.n_transactions / expected) if expected else 1.0
    return {
        name: max(1, round(value * scale)) if config.scenario_rates[name] > 0 else 0
        for name, value in raw.items()
    }


def run_scenarios(
    config: GeneratorConfig, pop: Population, seed_words: tuple[int, ...]
) -> tuple[pl.DataFrame, np.ndarray]:
    """All scenario rows (fraud plus legitimate anchors) and the customers barred from trips.

    Each scenario gets its own RNG stream, so changing one rate does not reshuffle another's
    times and amounts (only which cards are still free).
    """
    available = np.ones(len(pop.card_ref), dtype=bool)
    no_travel = np.zeros(len(pop.customer_id), dtype=bool)
    counts = incident_counts(config, pop)
    frames: list[pl.DataFrame] = []
    for code, (name, function) in enumerate(SCENARIO_FUNCTIONS.items()):
        rng = np.random.default_rng([*seed_words, 100 + code])
        ctx = ScenarioContext(config, pop, rng, available, no_travel)
        function(ctx, counts[name])
        frames.append(ctx.rows.to_frame())
    return pl.concat(frames), no_travel
