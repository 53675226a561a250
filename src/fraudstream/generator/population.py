"""The simulated world: countries and cities, customers with cards and devices, merchants.

Everything is held as flat NumPy arrays indexed by entity number (customer `i`, card `j`, ...) so
the transaction simulator can draw a million rows with gathers instead of Python loops. Strings
(ids, tokens, IPs) live in Python lists the simulator turns into Polars series once.

Card references are opaque tokens (`tok_` + 16 hex characters); a card has at most its last four
digits here. No full card number is ever made up, not even a fake one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from fraudstream.generator.config import GeneratorConfig

EARTH_RADIUS_KM: Final = 6371.0
FAVOURITES: Final = 14
"""Most physical merchants one customer returns to (nearest to home first)."""
_CANDIDATES: Final = 1024

# (ISO 18245 MCC, share of merchants, typical-amount multiplier relative to the customer's own)
PHYSICAL_MCCS: Final = (
    ("5411", 0.28, 0.9),  # grocery stores, supermarkets
    ("5541", 0.14, 1.0),  # service stations (fuel)
    ("5812", 0.26, 0.6),  # eating places, restaurants
    ("5311", 0.10, 1.4),  # department stores
    ("5732", 0.08, 3.5),  # electronics stores
    ("6011", 0.14, 2.0),  # automated cash disbursements (ATM)
)
ONLINE_MCCS: Final = (
    ("5999", 0.33, 1.2),  # miscellaneous retail (generic e-commerce)
    ("5969", 0.15, 0.9),  # direct marketing
    ("5815", 0.20, 0.3),  # digital goods: media
    ("5732", 0.12, 3.0),  # electronics
    ("4511", 0.10, 6.0),  # airlines
    ("7011", 0.10, 4.0),  # hotels and lodging
)
ATM_MCC: Final = "6011"
ONLINE_MERCHANT_SHARE: Final = 0.3

# First octets handed out to countries so that IPs look regional; attackers use the others.
_HOME_OCTETS: Final = (24, 68, 73, 98, 81, 86, 90, 92, 79, 84, 88, 93, 99, 142, 101, 120, 49, 58)
ATTACKER_OCTETS: Final = (5, 37, 45, 46, 91, 103, 176, 185, 193, 196, 197, 200)


@dataclass(frozen=True, slots=True, eq=False)
class Population:
    """Entity tables as parallel arrays. Index `i` of every `customer_*` array is customer `i`."""

    # countries and cities
    country_code: list[str]
    country_currency: list[str]
    country_octets: np.ndarray  # (n_countries, 2) first octets of the country's IPs
    city_country: np.ndarray
    city_lat: np.ndarray
    city_lon: np.ndarray
    city_utc_offset_us: np.ndarray
    # customers
    customer_id: list[str]
    customer_city: np.ndarray
    customer_country: np.ndarray
    customer_lat: np.ndarray
    customer_lon: np.ndarray
    amount_mu: np.ndarray  # log-amount mean of the customer's everyday purchases
    amount_sigma: np.ndarray
    activity: np.ndarray  # relative number of transactions
    online_share: np.ndarray
    rhythm_shift_h: np.ndarray  # early birds (-1) to night owls (+2)
    card_start: np.ndarray
    card_count: np.ndarray
    device_start: np.ndarray
    device_count: np.ndarray
    favourite: np.ndarray  # (n_customers, FAVOURITES) physical merchants, nearest first
    favourite_count: np.ndarray
    # cards and devices
    card_ref: list[str]
    card_last4: list[str]
    card_customer: np.ndarray
    device_id: list[str]
    device_ip: list[str]
    # merchants and terminals
    merchant_id: list[str]
    merchant_mcc: list[str]
    merchant_amount_factor: np.ndarray
    merchant_city: np.ndarray
    merchant_country: np.ndarray
    merchant_lat: np.ndarray
    merchant_lon: np.ndarray
    merchant_online: np.ndarray
    terminal_start: np.ndarray  # physical merchants only; -1 for online ones
    terminal_count: np.ndarray
    terminal_id: list[str]
    terminal_merchant: np.ndarray
    # physical merchants grouped by city, online merchants grouped by country (CSR layout)
    physical_by_city: tuple[np.ndarray, np.ndarray]
    online_by_country: tuple[np.ndarray, np.ndarray]

    def usual_amount(self, customer: int) -> float:
        """Mean of the customer's everyday lognormal amount."""
        return float(np.exp(self.amount_mu[customer] + self.amount_sigma[customer] ** 2 / 2))


def haversine_km(
    lat1: np.ndarray | float,
    lon1: np.ndarray | float,
    lat2: np.ndarray | float,
    lon2: np.ndarray | float,
) -> np.ndarray:
    """Great-circle distance in km, broadcasting like NumPy."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0))))


def random_hex(rng: np.random.Generator, prefix: str, n: int, n_hex: int = 16) -> list[str]:
    """`n` distinct `prefix + hex` tokens; re-draws the (astronomically rare) duplicates."""
    n_bytes = (n_hex + 1) // 2
    text = rng.bytes(n * n_bytes).hex()
    step = 2 * n_bytes
    tokens = [prefix + text[i : i + n_hex] for i in range(0, n * step, step)]
    seen: set[str] = set()
    for index, drawn in enumerate(tokens):
        token = drawn
        while token in seen:
            token = prefix + rng.bytes(n_bytes).hex()[:n_hex]
        seen.add(token)
        tokens[index] = token
    return tokens


def random_ipv4(rng: np.random.Generator, first_octets: np.ndarray) -> list[str]:
    """One public-looking IPv4 address per given first octet."""
    rest = rng.integers(0, 256, size=(len(first_octets), 3))
    rest[:, 2] = np.clip(rest[:, 2], 1, 254)
    return [
        f"{a}.{b}.{c}.{d}"
        for a, (b, c, d) in zip(first_octets.tolist(), rest.tolist(), strict=True)
    ]


def csr(groups: np.ndarray, members: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Group `members` by `groups`: returns (offsets of length n_groups + 1, members sorted)."""
    order = np.argsort(groups, kind="stable")
    counts = np.bincount(groups, minlength=n_groups)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return offsets, members[order].astype(np.int64)


def _jitter(
    rng: np.random.Generator, lat: np.ndarray, lon: np.ndarray, sd_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Scatter points around their city; longitude spread widened so the spread is round."""
    new_lat = np.clip(lat + rng.normal(0.0, sd_deg, lat.shape), -89.9, 89.9)
    stretch = 1.0 / np.maximum(np.cos(np.radians(lat)), 0.2)
    new_lon = lon + rng.normal(0.0, sd_deg, lon.shape) * stretch
    return new_lat, (new_lon + 180.0) % 360.0 - 180.0


def build_population(config: GeneratorConfig, rng: np.random.Generator) -> Population:
    """Draw the whole world for `config` from `rng`; deterministic for a given generator state."""
    countries = config.home_countries
    city_country = np.array([k for k, c in enumerate(countries) for _ in c.cities], np.int64)
    cities = [city for country in countries for city in country.cities]
    city_lat = np.array([c.latitude for c in cities])
    city_lon = np.array([c.longitude for c in cities])
    city_offset = np.array([round(c.utc_offset_hours * 3600) * 1_000_000 for c in cities])
    country_weight = np.array([c.weight for c in countries])
    city_weight = np.array([c.weight for c in cities])
    city_weight = city_weight / np.bincount(city_country, weights=city_weight)[city_country]
    city_p = city_weight * (country_weight / country_weight.sum())[city_country]
    city_p = city_p / city_p.sum()
    octets = np.array(
        [
            [_HOME_OCTETS[(2 * k) % 18], _HOME_OCTETS[(2 * k + 1) % 18]]
            for k in range(len(countries))
        ]
    )

    n_cust = config.n_customers
    customer_city = rng.choice(len(cities), size=n_cust, p=city_p)
    cust_lat, cust_lon = _jitter(rng, city_lat[customer_city], city_lon[customer_city], 0.12)
    amount_mu = rng.normal(np.log(35.0), 0.45, n_cust)
    amount_sigma = rng.uniform(0.45, 0.85, n_cust)
    activity = rng.gamma(2.0, 1.0, n_cust)
    online_share = rng.beta(2.0, 4.0, n_cust)
    rhythm_shift = rng.choice(np.array([-1, 0, 0, 1, 2]), size=n_cust)

    card_count = np.where(rng.random(n_cust) < 0.3, 2, 1)
    card_start = np.concatenate([[0], np.cumsum(card_count)[:-1]]).astype(np.int64)
    n_cards = int(card_count.sum())
    card_customer = np.repeat(np.arange(n_cust), card_count)
    card_ref = random_hex(rng, "tok_", n_cards)
    card_last4 = [f"{v:04d}" for v in rng.integers(0, 10_000, n_cards).tolist()]

    device_count = np.where(rng.random(n_cust) < 0.4, 2, 1)
    device_start = np.concatenate([[0], np.cumsum(device_count)[:-1]]).astype(np.int64)
    device_customer = np.repeat(np.arange(n_cust), device_count)
    device_id = random_hex(rng, "dev_", len(device_customer), 12)
    device_octet = octets[
        city_country[customer_city[device_customer]], rng.integers(0, 2, len(device_customer))
    ]
    device_ip = random_ipv4(rng, device_octet)

    merchants = _merchants(config, rng, city_p, city_lat, city_lon)
    (m_city, m_lat, m_lon, m_online, m_mcc, m_factor, t_start, t_count, t_id, t_merchant) = (
        merchants
    )
    n_merch = config.n_merchants
    physical = np.flatnonzero(~m_online)
    online = np.flatnonzero(m_online)
    physical_by_city = csr(m_city[physical], physical, len(cities))
    online_by_country = csr(city_country[m_city[online]], online, len(countries))
    favourite, favourite_count = _favourites(
        rng,
        customer_city=customer_city,
        city_country=city_country,
        cust_lat=cust_lat,
        cust_lon=cust_lon,
        merchant_city=m_city,
        merchant_lat=m_lat,
        merchant_lon=m_lon,
        physical=physical,
    )
    return Population(
        country_code=[c.code for c in countries],
        country_currency=[c.currency for c in countries],
        country_octets=octets,
        city_country=city_country,
        city_lat=city_lat,
        city_lon=city_lon,
        city_utc_offset_us=city_offset.astype(np.int64),
        customer_id=[f"cust_{i:07d}" for i in range(n_cust)],
        customer_city=customer_city,
        customer_country=city_country[customer_city],
        customer_lat=cust_lat,
        customer_lon=cust_lon,
        amount_mu=amount_mu,
        amount_sigma=amount_sigma,
        activity=activity,
        online_share=online_share,
        rhythm_shift_h=rhythm_shift,
        card_start=card_start,
        card_count=card_count,
        device_start=device_start,
        device_count=device_count,
        favourite=favourite,
        favourite_count=favourite_count,
        card_ref=card_ref,
        card_last4=card_last4,
        card_customer=card_customer,
        device_id=device_id,
        device_ip=device_ip,
        merchant_id=[f"merch_{i:06d}" for i in range(n_merch)],
        merchant_mcc=m_mcc,
        merchant_amount_factor=m_factor,
        merchant_city=m_city,
        merchant_country=city_country[m_city],
        merchant_lat=m_lat,
        merchant_lon=m_lon,
        merchant_online=m_online,
        terminal_start=t_start,
        terminal_count=t_count,
        terminal_id=t_id,
        terminal_merchant=t_merchant,
        physical_by_city=physical_by_city,
        online_by_country=online_by_country,
    )


def _merchants(
    config: GeneratorConfig,
    rng: np.random.Generator,
    city_p: np.ndarray,
    city_lat: np.ndarray,
    city_lon: np.ndarray,
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], np.ndarray,
    np.ndarray, np.ndarray, list[str], np.ndarray,
]:  # fmt: skip
    n = config.n_merchants
    city = rng.choice(len(city_p), size=n, p=city_p)
    lat, lon = _jitter(rng, city_lat[city], city_lon[city], 0.1)
    online = rng.random(n) < ONLINE_MERCHANT_SHARE
    online[0], online[1] = True, False  # both kinds always exist
    mcc = np.empty(n, dtype=object)
    factor = np.empty(n)
    for mask, table in ((online, ONLINE_MCCS), (~online, PHYSICAL_MCCS)):
        weights = np.array([w for _, w, _ in table])
        pick = rng.choice(len(table), size=int(mask.sum()), p=weights / weights.sum())
        mcc[mask] = np.array([code for code, _, _ in table], dtype=object)[pick]
        factor[mask] = np.array([f for _, _, f in table])[pick]
    count = np.where(online, 0, rng.integers(1, 5, n))
    start = np.where(online, -1, np.concatenate([[0], np.cumsum(count)[:-1]]))
    terminal_merchant = np.repeat(np.arange(n), count)
    slot = np.arange(len(terminal_merchant)) - start[terminal_merchant]
    terminal_id = [
        f"term_{m:06d}_{s}" for m, s in zip(terminal_merchant.tolist(), slot.tolist(), strict=True)
    ]
    return (
        city,
        lat,
        lon,
        online,
        [str(code) for code in mcc],
        factor,
        start.astype(np.int64),
        count.astype(np.int64),
        terminal_id,
        terminal_merchant,
    )


def _favourites(
    rng: np.random.Generator,
    *,
    customer_city: np.ndarray,
    city_country: np.ndarray,
    cust_lat: np.ndarray,
    cust_lon: np.ndarray,
    merchant_city: np.ndarray,
    merchant_lat: np.ndarray,
    merchant_lon: np.ndarray,
    physical: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Each customer's 6-14 nearest physical merchants in their city (else country, else all).

    In a big city, each block of customers looks among a random `_CANDIDATES` of the city's
    shops rather than all of them, so the cost stays linear in customers: "nearest of a
    thousand nearby shops" is as plausible a habit as "nearest of all".
    """
    n_cust = len(customer_city)
    favourite = np.zeros((n_cust, FAVOURITES), np.int64)
    wanted = rng.integers(6, FAVOURITES + 1, n_cust)
    count = np.zeros(n_cust, np.int64)
    for city in np.unique(customer_city).tolist():
        customers = np.flatnonzero(customer_city == city)
        pool = physical[merchant_city[physical] == city]
        if len(pool) == 0:
            pool = physical[city_country[merchant_city[physical]] == city_country[city]]
        if len(pool) == 0:
            pool = physical
        k = min(FAVOURITES, len(pool))
        city_pool = pool
        for block in range(0, len(customers), _CANDIDATES):
            who = customers[block : block + _CANDIDATES]
            if len(city_pool) > _CANDIDATES:
                pool = np.sort(rng.choice(city_pool, size=_CANDIDATES, replace=False))
            # Within a city a flat (equirectangular) distance ranks as well as great circles.
            squeeze = np.cos(np.radians(cust_lat[who, None]))
            dx = (merchant_lon[pool] - cust_lon[who, None] + 180.0) % 360.0 - 180.0
            dist = (dx * squeeze) ** 2 + (merchant_lat[pool] - cust_lat[who, None]) ** 2
            if k < len(pool):
                near = np.argpartition(dist, k - 1, axis=1)[:, :k]
            else:
                near = np.broadcast_to(np.arange(len(pool)), (len(who), len(pool)))
            order = np.argsort(np.take_along_axis(dist, near, axis=1), axis=1, kind="stable")
            favourite[who, :k] = pool[np.take_along_axis(near, order, axis=1)]
        count[customers] = np.minimum(wanted[customers], k)
    return favourite, count
