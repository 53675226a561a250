"""Turn a population into a labelled, time-ordered transaction stream.

The legitimate bulk is drawn fully vectorised: transactions are shared out over customers by
activity, then every row gets a card, a local-time-of-day, a channel, a merchant (nearest
favourites for card-present, popular domestic shops online), an amount from the customer's
lognormal profile scaled by the merchant category, and the device or terminal that goes with the
channel. A tenth of the customers take one trip (domestic or abroad); card-present spending
moves to the destination, and around the journey itself card-present use pauses long enough that
legitimate travel never looks faster than a plane.

Determinism: every random draw comes from a NumPy generator seeded with `(seed, stream code)`, and
every sort is stable, so the same config gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import polars as pl

from fraudstream.core.events import TIMESTAMP_DTYPE, conform
from fraudstream.generator.config import GeneratorConfig
from fraudstream.generator.population import (
    ATM_MCC,
    Population,
    build_population,
    haversine_km,
)
from fraudstream.generator.scenarios import DAY, HOUR, ROW_SCHEMA, run_scenarios

# Relative share of transactions per local hour 0..23: quiet nights, lunch and evening peaks.
HOURLY_WEIGHTS: Final = np.array(
    [0.6, 0.3, 0.2, 0.15, 0.15, 0.3, 0.8, 2.5, 4.0, 5.0, 5.5, 6.0,
     7.5, 7.0, 6.0, 6.0, 6.5, 7.5, 8.0, 7.5, 6.0, 4.5, 3.0, 1.5]
)  # fmt: skip
TRIP_SHARE: Final = 0.1
ABROAD_TRIP_SHARE: Final = 0.35
PLANE_KMH: Final = 700.0
MISSING_CUSTOMER: Final = 0.01
MISSING_DEVICE: Final = 0.02
MISSING_IP: Final = 0.03

_POPULATION, _LEGIT, _NULLS, _IDS = 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class GeneratedStream:
    """Transactions in the engine's schema and, row for row, their ground truth."""

    transactions: pl.DataFrame
    labels: pl.DataFrame


def generate(config: GeneratorConfig) -> GeneratedStream:
    """Simulate `config.n_transactions` transactions (exactly, unless fraud had to be capped)."""
    words = (config.seed,)
    pop = build_population(config, np.random.default_rng([*words, _POPULATION]))
    scenario_rows, no_travel = run_scenarios(config, pop, words)
    n_legit = max(0, config.n_transactions - scenario_rows.height)
    legit = _legit_rows(config, pop, np.random.default_rng([*words, _LEGIT]), n_legit, no_travel)
    rows = pl.concat([legit, scenario_rows]).sort("ts", maintain_order=True)
    return _assemble(config, pop, rows)


def iter_batches(
    stream: GeneratedStream, batch_size: int
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """(transactions, labels) slices of at most `batch_size` rows, in time order."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    for offset in range(0, stream.transactions.height, batch_size):
        yield (
            stream.transactions.slice(offset, batch_size),
            stream.labels.slice(offset, batch_size),
        )


def _take(values: list[str], index: np.ndarray) -> pl.Series:
    """`values[index]` as a string series; negative indexes become nulls."""
    positions = pl.Series(index.astype(np.int64))
    missing = np.flatnonzero(index < 0)
    if len(missing):
        positions = positions.scatter(missing, None)
    return pl.Series(values, dtype=pl.String).gather(positions)


def _pick(
    rng: np.random.Generator,
    groups: tuple[np.ndarray, np.ndarray],
    group: np.ndarray,
    skew: float = 1.0,
) -> np.ndarray:
    """One member per row from its group (`u ** skew` favours the first); -1 if none."""
    offsets, members = groups
    count = offsets[group + 1] - offsets[group]
    slot = (count * rng.random(len(group)) ** skew).astype(np.int64)
    index = np.minimum(offsets[group] + slot, max(len(members) - 1, 0))
    return np.where(count > 0, members[index] if len(members) else -1, -1)


def _legit_rows(
    config: GeneratorConfig,
    pop: Population,
    rng: np.random.Generator,
    n: int,
    no_travel: np.ndarray,
) -> pl.DataFrame:
    n_cust = len(pop.customer_id)
    cust = np.repeat(np.arange(n_cust), rng.multinomial(n, pop.activity / pop.activity.sum()))
    second = rng.random(n) < 0.3
    card = pop.card_start[cust] + second * (pop.card_count[cust] - 1)

    hour_cdf = np.cumsum(HOURLY_WEIGHTS) / HOURLY_WEIGHTS.sum()
    hour = np.searchsorted(hour_cdf, rng.random(n), side="right") + pop.rhythm_shift_h[cust]
    local = rng.integers(0, config.days, n) * DAY + hour * HOUR + rng.integers(0, HOUR, n)
    utc = local - pop.city_utc_offset_us[pop.customer_city[cust]]
    ts = config.start_us + utc % config.span_us

    online = rng.random(n) < pop.online_share[cust]
    # Card present: a favourite near home (nearest most often), sometimes anywhere in the city.
    slot = (pop.favourite_count[cust] * rng.random(n) ** 1.6).astype(np.int64)
    merchant = pop.favourite[cust, slot]
    elsewhere = rng.random(n) < 0.05
    city_pick = _pick(rng, pop.physical_by_city, pop.customer_city[cust])
    merchant = np.where(elsewhere & (city_pick >= 0), city_pick, merchant)
    online |= _travel(config, pop, rng, cust=cust, ts=ts, merchant=merchant, no_travel=no_travel)
    # Online: popular shops at home mostly, any country now and then.
    home = pop.customer_country[cust]
    shop = _pick(rng, pop.online_by_country, home, skew=2.2)
    anywhere = (rng.random(n) < 0.15) | (shop < 0)
    all_online = pop.online_by_country[1]
    shop[anywhere] = all_online[
        (len(all_online) * rng.random(int(anywhere.sum())) ** 2).astype(int)
    ]
    merchant = np.where(online, shop, merchant)

    z = rng.standard_normal(n)
    factor = pop.merchant_amount_factor[merchant]
    amount = np.exp(pop.amount_mu[cust] + np.log(factor) + pop.amount_sigma[cust] * z)
    mcc = np.asarray(pop.merchant_mcc, dtype=object)[merchant]
    atm = (mcc == ATM_MCC) & ~online
    amount = np.where(atm, np.maximum(20.0, np.round(amount / 20.0) * 20.0), amount)
    amount = np.round(np.clip(amount, 0.5, 7_500.0), 2)

    device = pop.device_start[cust] + (rng.random(n) < 0.25) * (pop.device_count[cust] - 1)
    device = np.where(online, device, -1)
    terminal_slot = (pop.terminal_count[merchant] * rng.random(n)).astype(np.int64)
    terminal = np.where(online, -1, pop.terminal_start[merchant] + terminal_slot)
    m_country = pop.merchant_country[merchant]
    currency = np.where(online, home, m_country)
    lat = np.where(online, np.nan, pop.merchant_lat[merchant])
    lon = np.where(online, np.nan, pop.merchant_lon[merchant])
    return pl.DataFrame(
        {
            "ts": ts.astype(np.int64),
            "card": card.astype(np.int64),
            "merchant_id": _take(pop.merchant_id, merchant),
            "mcc": _take(pop.merchant_mcc, merchant),
            "terminal_id": _take(pop.terminal_id, terminal),
            "amount": amount,
            "currency": _take(pop.country_currency, currency),
            "country": _take(pop.country_code, m_country),
            "latitude": pl.Series(lat, nan_to_null=True),
            "longitude": pl.Series(lon, nan_to_null=True),
            "channel": np.where(online, "online", "card_present"),
            "device_id": _take(pop.device_id, device),
            "ip": _take(pop.device_ip, device),
            "is_fraud": np.zeros(n, dtype=bool),
            "scenario": pl.Series([None] * n, dtype=pl.String),
        },
        schema=ROW_SCHEMA,
    )


def _travel(
    config: GeneratorConfig,
    pop: Population,
    rng: np.random.Generator,
    *,
    cust: np.ndarray,
    ts: np.ndarray,
    merchant: np.ndarray,
    no_travel: np.ndarray,
) -> np.ndarray:
    """Give some customers one trip; rewrite `merchant` in place for card-present spending there.

    Returns the rows that must become online: card-present use while in transit (a pause of
    `distance / PLANE_KMH + 2` hours, at least 4, either side of the stay) or at a destination
    without physical merchants.
    """
    n_cust, n_cities = len(pop.customer_id), len(pop.city_lat)
    travellers = np.flatnonzero((rng.random(n_cust) < TRIP_SHARE) & ~no_travel)
    if n_cities < 2 or len(travellers) == 0:
        return np.zeros(len(cust), dtype=bool)
    home_city = pop.customer_city[travellers]
    home_country = pop.city_country[home_city]
    abroad = rng.random(len(travellers)) < ABROAD_TRIP_SHARE
    destination = np.empty(len(travellers), np.int64)
    for i, (city, country, go_abroad) in enumerate(
        zip(home_city.tolist(), home_country.tolist(), abroad.tolist(), strict=True)
    ):
        domestic = np.flatnonzero((pop.city_country == country) & (np.arange(n_cities) != city))
        foreign = np.flatnonzero(pop.city_country != country)
        choices = foreign if (go_abroad and len(foreign)) or not len(domestic) else domestic
        choices = choices if len(choices) else np.flatnonzero(np.arange(n_cities) != city)
        destination[i] = choices[int(rng.integers(0, len(choices)))]
    dist = haversine_km(
        pop.customer_lat[travellers],
        pop.customer_lon[travellers],
        pop.city_lat[destination],
        pop.city_lon[destination],
    )
    pause = (np.maximum(4.0, dist / PLANE_KMH + 2.0) * HOUR).astype(np.int64)
    length = rng.integers(2, 7, len(travellers)) * DAY
    start = config.start_us + rng.integers(0, max(1, config.days - 1), len(travellers)) * DAY
    start = start + rng.integers(6 * HOUR, 14 * HOUR, len(travellers))

    trip = np.full(n_cust, -1, np.int64)
    trip[travellers] = np.arange(len(travellers))
    row_trip = trip[cust]
    rows = np.flatnonzero(row_trip >= 0)
    k = row_trip[rows]
    t = ts[rows]
    begin, end = start[k], start[k] + length[k]
    staying = (t >= begin) & (t < end)
    in_transit = ((t >= begin - pause[k]) & (t < begin)) | ((t >= end) & (t < end + pause[k]))
    there = _pick(rng, pop.physical_by_city, destination[k])
    merchant[rows[staying & (there >= 0)]] = there[staying & (there >= 0)]
    to_online = np.zeros(len(cust), dtype=bool)
    to_online[rows[in_transit | (staying & (there < 0))]] = True
    return to_online


def _assemble(config: GeneratorConfig, pop: Population, rows: pl.DataFrame) -> GeneratedStream:
    """Expand cards into card_ref/last4/customer, blank some optional fields, give ids."""
    n = rows.height
    rng = np.random.default_rng([config.seed, _NULLS])
    card = rows["card"].to_numpy()
    customer = pop.card_customer[card]
    customer = np.where(rng.random(n) < MISSING_CUSTOMER, -1, customer)
    drop_device = pl.Series(rng.random(n) < MISSING_DEVICE)
    drop_ip = pl.Series(rng.random(n) < MISSING_IP)
    tag = np.random.default_rng([config.seed, _IDS]).bytes(3).hex()
    width = max(9, len(str(n)))
    frame = rows.select(
        (pl.lit(f"tx_{tag}_") + pl.int_range(1, n + 1).cast(pl.String).str.zfill(width)).alias(
            "transaction_id"
        ),
        pl.col("ts").cast(TIMESTAMP_DTYPE).alias("timestamp"),
        card_ref=_take(pop.card_ref, card),
        card_last4=_take(pop.card_last4, card),
        customer_id=_take(pop.customer_id, customer),
        merchant_id=pl.col("merchant_id"),
        mcc=pl.col("mcc"),
        terminal_id=pl.col("terminal_id"),
        amount=pl.col("amount"),
        currency=pl.col("currency"),
        country=pl.col("country"),
        latitude=pl.col("latitude"),
        longitude=pl.col("longitude"),
        channel=pl.col("channel"),
        device_id=pl.when(drop_device).then(None).otherwise(pl.col("device_id")),
        ip=pl.when(drop_ip).then(None).otherwise(pl.col("ip")),
        is_fraud=pl.col("is_fraud"),
        scenario=pl.col("scenario"),
    )
    frame = conform(frame)
    labels = frame.select("transaction_id", "is_fraud", "scenario")
    return GeneratedStream(transactions=frame.drop("is_fraud", "scenario"), labels=labels)
