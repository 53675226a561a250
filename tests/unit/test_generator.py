"""The transaction simulator: determinism, schema, labels, and that each fraud scenario has the
shape the engine's features are meant to catch."""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta
from pathlib import Path

import msgspec
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudstream.core.currencies import ISO_4217_CODES
from fraudstream.core.errors import ConfigError
from fraudstream.core.events import (
    TRANSACTION_SCHEMA,
    decode_transaction,
    looks_like_card_number,
    to_frame,
)
from fraudstream.generator import GeneratedStream, GeneratorConfig, generate, iter_batches
from fraudstream.generator.config import SCENARIOS, City, HomeCountry
from fraudstream.generator.output import write_jsonl, write_labels, write_parquet

MINUTE_US = 60_000_000
DAY_US = 24 * 60 * MINUTE_US


@pytest.fixture(scope="module")
def stream() -> GeneratedStream:
    """50k transactions at the default rates and population."""
    return generate(GeneratorConfig(seed=42, n_transactions=50_000))


@pytest.fixture(scope="module")
def labelled(stream: GeneratedStream) -> pl.DataFrame:
    return pl.concat(
        [stream.transactions, stream.labels.drop("transaction_id")], how="horizontal"
    ).with_columns(ts=pl.col("timestamp").dt.epoch("us"))


def _small(seed: int = 3, **overrides: object) -> GeneratorConfig:
    params: dict[str, object] = {
        "seed": seed,
        "n_transactions": 4_000,
        "n_customers": 400,
        "n_merchants": 120,
        "days": 10,
    }
    params.update(overrides)
    return GeneratorConfig(**params)  # type: ignore[arg-type]


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(math.sqrt(a))


# --------------------------------------------------------------------------- determinism, shape


def test_same_seed_same_stream_and_bytes(tmp_path: Path) -> None:
    first, second = generate(_small()), generate(_small())
    assert first.transactions.equals(second.transactions)
    assert first.labels.equals(second.labels)
    a = write_jsonl(first, tmp_path / "a.jsonl").read_bytes()
    b = write_jsonl(second, tmp_path / "b.jsonl").read_bytes()
    assert a == b


def test_different_seed_different_stream() -> None:
    first, other = generate(_small(seed=3)), generate(_small(seed=4))
    assert not first.transactions.equals(other.transactions)
    assert set(first.transactions["card_ref"]).isdisjoint(set(other.transactions["card_ref"]))
    assert set(first.transactions["transaction_id"]).isdisjoint(
        set(other.transactions["transaction_id"])
    )


def test_schema_is_exactly_the_engines(stream: GeneratedStream) -> None:
    assert dict(stream.transactions.schema) == TRANSACTION_SCHEMA
    assert list(stream.transactions.columns) == list(TRANSACTION_SCHEMA)
    assert dict(stream.labels.schema) == {
        "transaction_id": pl.String(),
        "is_fraud": pl.Boolean(),
        "scenario": pl.String(),
    }


def test_row_count_ids_order_and_label_alignment(stream: GeneratedStream) -> None:
    tx = stream.transactions
    assert tx.height == 50_000
    assert tx["transaction_id"].n_unique() == tx.height
    assert tx.equals(tx.sort("timestamp", "transaction_id"))
    assert stream.labels["transaction_id"].equals(tx["transaction_id"])
    labels = stream.labels
    assert labels.filter(pl.col("is_fraud") != pl.col("scenario").is_not_null()).height == 0


def test_required_and_channel_fields(labelled: pl.DataFrame) -> None:
    required = labelled.select("card_ref", "amount", "currency", "channel", "country")
    assert sum(required.null_count().row(0)) == 0
    assert set(labelled["currency"].unique()) <= ISO_4217_CODES
    assert set(labelled["channel"].unique()) == {"card_present", "online"}
    present = labelled.filter(pl.col("channel") == "card_present")
    online = labelled.filter(pl.col("channel") == "online")
    assert present.select(pl.col("latitude", "terminal_id").null_count()).row(0) == (0, 0)
    assert present.select(pl.col("device_id", "ip").null_count()).row(0) == (
        present.height,
        present.height,
    )
    assert online.select(pl.col("latitude", "terminal_id").null_count()).row(0) == (
        online.height,
        online.height,
    )
    assert 0.7 < online["device_id"].is_not_null().mean() < 1.0  # some missing, as in real feeds
    assert 0.0 < labelled["customer_id"].is_null().mean() < 0.03
    assert labelled["mcc"].str.contains(r"^\d{4}$").all()
    assert 0.15 < online.height / labelled.height < 0.6


def test_no_card_numbers_anywhere(labelled: pl.DataFrame) -> None:
    assert labelled["card_ref"].str.starts_with("tok_").all()
    for column in ("card_ref", "customer_id", "merchant_id", "terminal_id", "device_id"):
        values = labelled[column].drop_nulls().unique().to_list()
        assert not any(looks_like_card_number(v) for v in values), column
    assert labelled["card_last4"].drop_nulls().str.contains(r"^\d{4}$").all()


def test_legit_timestamps_follow_a_daily_rhythm(labelled: pl.DataFrame) -> None:
    ny = labelled.filter(
        pl.col("scenario").is_null(),
        pl.col("channel") == "card_present",
        pl.col("longitude").is_between(-75.5, -72.5),
    )
    local_hour = (ny["timestamp"].dt.hour().cast(pl.Int32) - 5) % 24
    assert local_hour.is_between(7, 23).mean() > 0.9


# --------------------------------------------------------------------------- fraud scenarios


def test_every_scenario_present_and_fraud_rate_sane(labelled: pl.DataFrame) -> None:
    counts = dict(labelled.group_by("scenario").len().drop_nulls().iter_rows())
    assert set(counts) == set(SCENARIOS)
    assert all(n >= 3 for n in counts.values()), counts
    rate = labelled["is_fraud"].mean()
    assert 0.003 < rate < 0.05


def test_velocity_attack_bursts_within_ten_minutes(labelled: pl.DataFrame) -> None:
    fraud = labelled.filter(pl.col("scenario") == "velocity_attack")
    for card, times in fraud.group_by("card_ref").agg(pl.col("ts").sort()).iter_rows():
        best = max(sum(1 for t in times if s <= t < s + 10 * MINUTE_US) for s in times)
        assert best >= 6, card
    assert fraud["channel"].eq("online").all()
    assert fraud["merchant_id"].n_unique() > fraud["card_ref"].n_unique()


def test_card_testing_is_tiny_charges_at_one_merchant(labelled: pl.DataFrame) -> None:
    tiny = labelled.filter(pl.col("scenario") == "card_testing", pl.col("amount") <= 3.0)
    per_card = tiny.group_by("card_ref").agg(
        pl.len().alias("n"), pl.col("merchant_id").n_unique().alias("shops")
    )
    assert per_card["n"].min() >= 5
    assert per_card["shops"].max() == 1
    assert tiny["amount"].min() >= 0.5


def test_impossible_travel_implies_speed_above_900_kmh(labelled: pl.DataFrame) -> None:
    present = labelled.filter(pl.col("channel") == "card_present").sort("card_ref", "ts")
    present = present.with_columns(
        pl.col("latitude", "longitude", "ts").shift().over("card_ref").name.prefix("prev_"),
        pl.col("scenario").shift().over("card_ref").alias("prev_scenario"),
    )
    first_jumps = present.filter(
        pl.col("scenario") == "impossible_travel",
        pl.col("prev_scenario").is_null(),
    )
    assert first_jumps.height >= 3
    for row in first_jumps.iter_rows(named=True):
        assert row["prev_ts"] is not None
        km = _haversine_km(
            row["prev_latitude"], row["prev_longitude"], row["latitude"], row["longitude"]
        )
        hours = max(row["ts"] - row["prev_ts"], 1_000_000) / 3.6e9
        assert km > 3000
        assert km / hours > 900


def test_compromised_terminal_sees_many_cards_in_a_day(labelled: pl.DataFrame) -> None:
    fraud = labelled.filter(pl.col("scenario") == "compromised_terminal")
    per_terminal = fraud.group_by("terminal_id").agg(
        pl.col("card_ref").n_unique().alias("cards"),
        (pl.col("ts").max() - pl.col("ts").min()).alias("span"),
    )
    assert per_terminal.height >= 2
    assert per_terminal["cards"].min() >= 20
    assert per_terminal["span"].max() < DAY_US
    assert fraud["channel"].eq("card_present").all()


def test_large_amount_is_far_out_of_profile(labelled: pl.DataFrame) -> None:
    usual = (
        labelled.filter(pl.col("scenario").is_null())
        .group_by("card_ref")
        .agg(pl.col("amount").median().alias("usual"))
    )
    large = labelled.filter(pl.col("scenario") == "large_amount").join(usual, on="card_ref")
    assert (large["amount"] > 2 * large["usual"]).mean() > 0.8
    assert (labelled.filter(pl.col("scenario") == "large_amount")["amount"] > 9000).any()


def test_account_takeover_uses_a_device_new_to_the_card(labelled: pl.DataFrame) -> None:
    ato = labelled.filter(pl.col("scenario") == "account_takeover")
    before = labelled.filter(pl.col("scenario").is_null()).select("card_ref", "device_id")
    seen = set(before.drop_nulls().iter_rows())
    rows = ato.select("card_ref", "device_id").drop_nulls().iter_rows()
    assert all(pair not in seen for pair in rows)
    per_card = ato.group_by("card_ref").agg(pl.len(), (pl.col("ts").max() - pl.col("ts").min()))
    assert per_card["len"].is_between(2, 5).all()
    assert (per_card["ts"] <= 60 * MINUTE_US).all()


def test_zero_rates_mean_no_fraud() -> None:
    stream = generate(_small(scenario_rates=dict.fromkeys(SCENARIOS, 0.0)))
    assert not stream.labels["is_fraud"].any()
    assert stream.transactions.height == 4_000


def test_single_country_world_still_has_far_impossible_travel() -> None:
    only = (HomeCountry("GB", "GBP", 1.0, (City("London", 51.51, -0.13, 0),)),)
    stream = generate(_small(home_countries=only))
    labels = stream.labels.filter(pl.col("scenario") == "impossible_travel")
    assert labels.height >= 1
    far = stream.transactions.join(labels, on="transaction_id")
    assert far["country"].ne("GB").all()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    n_transactions=st.integers(1, 3_000),
    n_customers=st.integers(1, 300),
    n_merchants=st.integers(2, 80),
    days=st.integers(1, 5),
)
def test_any_small_config_gives_a_valid_stream(
    seed: int, n_transactions: int, n_customers: int, n_merchants: int, days: int
) -> None:
    config = GeneratorConfig(
        seed=seed,
        n_transactions=n_transactions,
        n_customers=n_customers,
        n_merchants=n_merchants,
        days=days,
    )
    stream = generate(config)
    tx = stream.transactions
    assert dict(tx.schema) == TRANSACTION_SCHEMA
    assert tx["transaction_id"].n_unique() == tx.height
    assert tx.height >= n_transactions  # exact unless the minimum of one incident each dominates
    ts = tx["timestamp"]
    assert ts.min() >= config.start  # type: ignore[operator]
    assert ts.max() < config.start + timedelta(days=days)  # type: ignore[operator]
    assert tx.equals(tx.sort("timestamp", "transaction_id"))


# --------------------------------------------------------------------------- output and batches


def test_jsonl_lines_decode_back_to_the_same_frame(tmp_path: Path) -> None:
    stream = generate(_small())
    path = write_jsonl(stream, tmp_path / "tx.jsonl")
    lines = path.read_bytes().splitlines()
    assert len(lines) == stream.transactions.height
    first = msgspec.json.decode(lines[0])
    assert first["timestamp"].endswith("Z")
    assert None not in first.values()
    assert "is_fraud" not in first
    decoded = [decode_transaction(line) for line in lines]
    assert to_frame(decoded).equals(stream.transactions)


def test_parquet_and_labels_files(tmp_path: Path) -> None:
    stream = generate(_small())
    table = pl.read_parquet(write_parquet(stream, tmp_path / "out" / "tx.parquet"))
    assert table.columns == [*TRANSACTION_SCHEMA, "is_fraud", "scenario"]
    assert table.drop("is_fraud", "scenario").equals(stream.transactions)
    assert pl.read_csv(write_labels(stream, tmp_path / "labels.csv"))["is_fraud"].sum() == (
        stream.labels["is_fraud"].sum()
    )
    assert pl.read_parquet(write_labels(stream, tmp_path / "labels.parquet")).equals(stream.labels)


def test_iter_batches_covers_the_stream_in_order() -> None:
    stream = generate(_small())
    batches = list(iter_batches(stream, 999))
    assert [len(t) for t, _ in batches[:-1]] == [999] * (len(batches) - 1)
    assert pl.concat([t for t, _ in batches]).equals(stream.transactions)
    assert all(t["transaction_id"].equals(lab["transaction_id"]) for t, lab in batches)
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_batches(stream, 0))


# --------------------------------------------------------------------------- config and speed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"scenario_rates": {"bogus": 0.1}}, "unknown scenario"),
        ({"scenario_rates": {"card_testing": 0.9}}, "card_testing"),
        ({"start": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"n_merchants": 1}, "n_merchants"),
        ({"days": 0}, "days"),
        ({"home_countries": (HomeCountry("US", "XXX", 1.0, (City("X", 0, 0),)),)}, "ISO 4217"),
        ({"home_countries": ()}, "at least one country"),
        # a digit passed `isupper`; the decoder refuses such a code, so every event would
        ({"home_countries": (HomeCountry("U1", "USD", 1.0, (City("X", 0, 0),)),)}, "alpha-2"),
        ({"home_countries": (HomeCountry("us", "USD", 1.0, (City("X", 0, 0),)),)}, "alpha-2"),
    ],
)
def test_config_rejects_nonsense(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _small(**overrides)


def test_partial_rates_merge_with_defaults() -> None:
    config = _small(scenario_rates={"velocity_attack": 0.01})
    assert config.scenario_rates["velocity_attack"] == 0.01
    assert config.scenario_rates["card_testing"] > 0
    assert hash(config)  # frozen and hashable, usable as a cache key


def test_hundred_thousand_rows_are_fast() -> None:
    begin = time.perf_counter()
    stream = generate(GeneratorConfig(seed=9, n_transactions=100_000))
    elapsed = time.perf_counter() - begin
    assert stream.transactions.height == 100_000
    assert elapsed < 10.0, f"generation took {elapsed:.1f}s"
