"""The compiled feature state against the brute-force reference in `tests/reference_features.py`.

Hand-written examples pin exact numbers on both implementations (so the reference is checked on
its own); hypothesis then compares every feature of every row on random event sequences, split
into random batches with random `expire()` calls, and checks replay idempotency, batch-split
invariance and that `expire()` keeps the state bounded.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import itertools
import math
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudstream.core.events import TIMESTAMP_DTYPE, TRANSACTION_SCHEMA
from fraudstream.core.features.config import HOUR, MINUTE, SECOND, FeatureConfig

# tests/ is not a package: make the reference importable next to this file's directory.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_features import (
    Row,
    haversine_km,
    reference_features,
    reference_run,
    reference_stats,
)

_STATE_MODULE = "fraudstream.core.features.state"
_HAS_STATE = importlib.util.find_spec(_STATE_MODULE) is not None
needs_kernel = pytest.mark.slow  # the compiled kernel against the reference; never skipped


def new_state(config: FeatureConfig) -> Any:
    """A fresh `FeatureState` (imported lazily: the module may not exist yet)."""
    return importlib.import_module(_STATE_MODULE).FeatureState(config)


SMALL = FeatureConfig(
    account_windows_us=(MINUTE, 10 * MINUTE, HOUR, 4 * HOUR, 12 * HOUR),
    place_windows_us=(10 * MINUTE, HOUR),
    max_exact_window_us=HOUR,
    bucket_us=10 * MINUTE,
    allowed_lateness_us=5 * MINUTE,
    ttl_us=13 * HOUR,
)
"""Windows, buckets and TTL short enough that 60 events exercise all of them."""
DEFAULT = FeatureConfig()

BASE_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z, a multiple of every bucket used here
REL_TOL = 1e-6  # z-scores divide by small running deviations: float, not logic, differences
ABS_TOL = 1e-6


# ---------------------------------------------------------------------------------------------
# Frames and comparison


def tx(transaction_id: str, t: int, **fields: object) -> Row:
    """One input row; `t` is event time in µs. Unspecified optional fields are null."""
    row: Row = {"transaction_id": transaction_id, "timestamp": t, "amount": 10.0}
    row["currency"] = "USD"
    row.update(fields)
    return row


def make_frame(rows: Sequence[Mapping[str, object]]) -> pl.DataFrame:
    """A frame with exactly TRANSACTION_SCHEMA's columns; `timestamp` given as integer µs."""
    columns = {name: [row.get(name) for row in rows] for name in TRANSACTION_SCHEMA}
    frame = pl.DataFrame(columns, schema={**TRANSACTION_SCHEMA, "timestamp": pl.Int64()})
    return frame.with_columns(pl.col("timestamp").cast(TIMESTAMP_DTYPE))


def check_output_schema(out: pl.DataFrame, config: FeatureConfig, n_rows: int) -> None:
    assert out.columns == [*config.names, "is_late"]
    assert out.height == n_rows
    counts, booleans = set(config.count_features), set(config.boolean_features)
    for name in config.names:
        expected = pl.Int64 if name in counts else pl.Boolean if name in booleans else pl.Float64
        assert out.schema[name] == expected, f"{name}: {out.schema[name]} != {expected}"
    assert out.schema["is_late"] == pl.Boolean
    assert out["is_late"].null_count() == 0


def values_match(expected: object, actual: object) -> bool:
    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, float):
        return isinstance(actual, float) and math.isclose(
            expected, actual, rel_tol=REL_TOL, abs_tol=ABS_TOL
        )
    return expected == actual


def compact(row: Row) -> str:
    """An input row in one short line: time relative to BASE_US in seconds, non-null fields."""
    skip = {"transaction_id", "timestamp", "currency"}
    fields = ", ".join(f"{k}={v!r}" for k, v in row.items() if k not in skip and v is not None)
    t = row["timestamp"]
    assert isinstance(t, int)
    offset = (t - BASE_US) / SECOND
    return f"{row['transaction_id']} @ {offset:+.6f} s: {fields}"


def assert_rows_match(
    expected: Sequence[Row], actual: Sequence[Row], inputs: Sequence[Row], first_index: int = 0
) -> None:
    """Every feature of every row equal (floats approximately); the message names the first."""
    assert len(expected) == len(actual)
    for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
        wrong = {
            name: (want[name], got.get(name))
            for name in want
            if not values_match(want[name], got.get(name))
        }
        if wrong:
            index = first_index + i
            shown = "\n  ".join(f"{k}: expected {e!r}, got {a!r}" for k, (e, a) in wrong.items())
            history = "\n  ".join(compact(row) for row in inputs[: index + 1])
            pytest.fail(f"row {index} differs:\n  {shown}\ninput up to that row:\n  {history}")


def run_kernel_batches(
    rows: Sequence[Row], config: FeatureConfig, cuts: Sequence[int], expires: Sequence[bool]
) -> tuple[list[Row], Any]:
    """Feed `rows` split at `cuts`; call `expire()` after batch i when `expires[i]`."""
    state = new_state(config)
    bounds = [0, *cuts, len(rows)]
    out_rows: list[Row] = []
    for i, (start, stop) in enumerate(itertools.pairwise(bounds)):
        out = state.update(make_frame(rows[start:stop]))
        check_output_schema(out, config, stop - start)
        out_rows += out.to_dicts()
        if expires[i]:
            evicted = state.expire()
            assert isinstance(evicted, int)
            assert evicted >= 0
    return out_rows, state


# ---------------------------------------------------------------------------------------------
# Strategies

CITIES = (
    (40.7128, -74.0060),  # New York
    (51.5074, -0.1278),  # London
    (48.8566, 2.3522),  # Paris
    (-33.8688, 151.2093),  # Sydney
    (-40.7128, 105.9940),  # antipode of New York
)
AMOUNTS = st.one_of(
    st.integers(0, 2_000_000).map(lambda cents: cents / 100),
    st.sampled_from([0.0, 10.0, 19.99, 100.0, 20_000.0]),
)
LOCATIONS = st.one_of(
    st.none(),
    st.sampled_from(CITIES),
    st.tuples(st.floats(-90.0, 90.0, allow_nan=False), st.floats(-180.0, 180.0, allow_nan=False)),
)


def gap_strategy(config: FeatureConfig) -> st.SearchStrategy[int]:
    """Clock advances: mostly short, some exactly on a window/TTL edge, some past the TTL."""
    ttl, late = config.ttl_us, config.allowed_lateness_us
    windows = sorted({*config.account_windows_us, *config.place_windows_us, config.bucket_us})
    edges = sorted({max(0, w + d) for w in windows for d in (-1, 0, 1)})
    ttl_edges = [ttl, ttl + 1, ttl + late, ttl + late + 1, ttl - late]
    return st.one_of(
        st.just(0),
        st.integers(0, 2 * SECOND),
        st.integers(0, 2 * windows[0]),
        st.integers(0, 2 * windows[0]),
        st.integers(0, 3 * config.bucket_us),
        st.integers(0, max(config.account_windows_us) // 3),
        st.sampled_from(edges),
        st.sampled_from(ttl_edges),
        st.integers(ttl - 2 * late, ttl + 2 * late),
        st.integers(ttl, 3 * ttl),
    )


def delay_strategy(config: FeatureConfig) -> st.SearchStrategy[int]:
    """How far behind the clock an event is: mostly on time, some late, some too late."""
    late = config.allowed_lateness_us
    return st.one_of(
        st.just(0),
        st.just(0),
        st.just(0),
        st.just(0),
        st.integers(0, 2 * late),
        st.sampled_from([late - 1, late, late + 1]),
    )


@st.composite
def event_sequences(
    draw: st.DrawFn, config: FeatureConfig, min_size: int = 1, max_size: int = 60
) -> list[Row]:
    n = draw(st.integers(min_size, max_size))
    cards = [None, *(f"card-{i}" for i in range(draw(st.integers(2, 4))))]
    customers = [None, *(f"cust-{i}" for i in range(draw(st.integers(1, 3))))]
    merchants = [None, *(f"merch-{i}" for i in range(draw(st.integers(1, 3))))]
    terminals = [None, *(f"term-{i}" for i in range(draw(st.integers(1, 2))))]
    gaps, delays = gap_strategy(config), delay_strategy(config)
    clock = BASE_US + draw(st.integers(0, config.bucket_us - 1))
    rows: list[Row] = []
    for i in range(n):
        if rows and draw(st.integers(0, 9)) == 0:
            rows.append(dict(draw(st.sampled_from(rows))))  # an exact replay
            continue
        clock += draw(gaps)
        card, customer = draw(st.sampled_from(cards)), draw(st.sampled_from(customers))
        if card is None and customer is None:
            customer = customers[1]
        location = draw(LOCATIONS)
        rows.append(
            tx(
                f"tx-{i}",
                clock - draw(delays),
                amount=draw(AMOUNTS),
                card_ref=card,
                customer_id=customer,
                merchant_id=draw(st.sampled_from(merchants)),
                terminal_id=draw(st.sampled_from(terminals)),
                country=draw(st.sampled_from([None, "US", "GB", "FR"])),
                device_id=draw(st.sampled_from([None, "dev-a", "dev-b"])),
                latitude=None if location is None else location[0],
                longitude=None if location is None else location[1],
            )
        )
    return rows


@st.composite
def batch_plans(draw: st.DrawFn, n: int) -> tuple[list[int], list[bool]]:
    """Cut points splitting n rows into batches, and whether to expire after each batch."""
    cuts = sorted(draw(st.sets(st.integers(1, n - 1)))) if n > 1 else []
    expires = draw(st.lists(st.booleans(), min_size=len(cuts) + 1, max_size=len(cuts) + 1))
    return cuts, expires


PROPERTY = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------------------------
# Hand-written examples with exact numbers, run on the reference and on the kernel


def run_reference(rows: Sequence[Row], config: FeatureConfig) -> list[Row]:
    return reference_features(make_frame(rows), config)


def run_kernel(rows: Sequence[Row], config: FeatureConfig) -> list[Row]:
    out = new_state(config).update(make_frame(rows))
    check_output_schema(out, config, len(rows))
    return list(out.to_dicts())


Runner = Callable[[Sequence[Row], FeatureConfig], list[Row]]
IMPLEMENTATIONS = [
    pytest.param(run_reference, id="reference"),
    pytest.param(run_kernel, id="kernel", marks=needs_kernel),
]
NEW_YORK, LONDON = CITIES[0], CITIES[1]


@pytest.mark.parametrize("run", IMPLEMENTATIONS)
def test_seven_transactions_in_ten_minutes(run: Runner) -> None:
    rows = [tx(f"t{i}", BASE_US + i * 90 * SECOND, card_ref="c", amount=i + 1.0) for i in range(7)]
    last = run(rows, SMALL)[-1]
    assert last["tx_count_by_card_10m"] == 7
    assert last["amount_sum_by_card_10m"] == pytest.approx(28.0)
    assert last["tx_count_by_card_1m"] == 1  # the previous one is 90 s back
    assert last["amount_sum_by_card_1m"] == pytest.approx(7.0)
    assert last["seconds_since_prev_by_card"] == pytest.approx(90.0)
    assert last["amount_mean_by_card"] == pytest.approx(3.5)  # history 1..6, not the event
    assert last["tx_count_by_customer_10m"] is None  # no customer on these rows
    assert last["is_late"] is False


@pytest.mark.parametrize("run", IMPLEMENTATIONS)
def test_exact_window_is_open_at_the_start(run: Runner) -> None:
    rows = [
        tx("a", BASE_US, card_ref="c"),
        tx("b", BASE_US + MINUTE, card_ref="c"),  # exactly 1 m later: the first is out of 1m
        tx("c", BASE_US + 2 * MINUTE - 1, card_ref="c"),
    ]
    out = run(rows, SMALL)
    assert [r["tx_count_by_card_1m"] for r in out] == [1, 1, 2]
    assert [r["tx_count_by_card_10m"] for r in out] == [1, 2, 3]


@pytest.mark.parametrize("run", IMPLEMENTATIONS)
def test_new_york_to_london_in_an_hour(run: Runner) -> None:
    rows = [
        tx("ny", BASE_US, card_ref="c", latitude=NEW_YORK[0], longitude=NEW_YORK[1]),
        tx("x", BASE_US + 30 * MINUTE, card_ref="c"),  # no location: skipped for distance
        tx("ldn", BASE_US + HOUR, card_ref="c", latitude=LONDON[0], longitude=LONDON[1]),
        tx("near", BASE_US + HOUR, card_ref="c", latitude=LONDON[0], longitude=LONDON[1] + 0.01),
    ]
    first, middle, london, near = run(rows, SMALL)
    assert first["distance_from_prev_km_by_card"] is None
    assert middle["distance_from_prev_km_by_card"] is None
    assert middle["seconds_since_prev_by_card"] == pytest.approx(1800.0)
    assert london["seconds_since_prev_by_card"] == pytest.approx(1800.0)
    assert london["distance_from_prev_km_by_card"] == pytest.approx(5570.23, abs=0.01)
    assert london["speed_from_prev_kmh_by_card"] == pytest.approx(5570.23, abs=0.01)
    # Same time as London: elapsed time floors at one second.
    km = haversine_km(LONDON, (LONDON[0], LONDON[1] + 0.01))
    assert near["distance_from_prev_km_by_card"] == pytest.approx(km, rel=1e-9)
    assert near["speed_from_prev_kmh_by_card"] == pytest.approx(km * 3600, rel=1e-9)
    assert near["seconds_since_prev_by_card"] == 0.0


@pytest.mark.parametrize("run", IMPLEMENTATIONS)
def test_novelty(run: Runner) -> None:
    rows = [
        tx("a", BASE_US, card_ref="c", merchant_id="m1", country="US", device_id="d1"),
        tx("b", BASE_US + MINUTE, card_ref="c", merchant_id="m1", country="GB"),
        tx("c", BASE_US + 2 * MINUTE, customer_id="u", merchant_id="m2", country="FR"),
        # t - ttl = BASE + 30 s: "b" is still seen, "a" no longer (not strictly later).
        tx(
            "d",
            BASE_US + 13 * HOUR + 30 * SECOND,
            card_ref="c",
            merchant_id="m1",
            country="US",
            device_id="d1",
        ),
    ]
    a, b, c, d = run(rows, SMALL)
    assert (a["is_new_merchant_for_card"], a["is_new_country_for_card"]) == (True, True)
    assert a["is_new_device_for_card"] is True
    assert (b["is_new_merchant_for_card"], b["is_new_country_for_card"]) == (False, True)
    assert b["is_new_device_for_card"] is None  # null value -> null feature
    assert c["is_new_merchant_for_card"] is None  # no card
    assert d["is_new_merchant_for_card"] is False  # "b" had m1
    assert d["is_new_country_for_card"] is True  # only "a" had US
    assert d["is_new_device_for_card"] is True
    assert d["tx_count_by_card_12h"] == 1
    assert d["amount_mean_by_card"] == pytest.approx(10.0)  # no reset: ttl not exceeded


@pytest.mark.parametrize("run", IMPLEMENTATIONS)
def test_too_late_and_late_but_accepted(run: Runner) -> None:
    lateness = SMALL.allowed_lateness_us
    rows = [
        tx("a", BASE_US, card_ref="c", merchant_id="m"),
        tx("b", BASE_US + HOUR, card_ref="c", merchant_id="m"),
        tx("too-late", BASE_US + HOUR - lateness - 1, card_ref="c", merchant_id="m"),
        tx("just-in", BASE_US + HOUR - lateness, card_ref="c", merchant_id="m"),
    ]
    out = run(rows, SMALL)
    too_late, just_in = out[2], out[3]
    assert too_late["is_late"] is True
    assert all(too_late[name] is None for name in SMALL.names)
    assert just_in["is_late"] is False
    # The previous event is the latest one at or before its time ("a"), not "b".
    assert just_in["seconds_since_prev_by_card"] == pytest.approx((HOUR - lateness) / SECOND)
    assert just_in["tx_count_by_card_10m"] == 1  # "b" is after it, "too-late" never counted
    assert just_in["tx_count_by_card_1h"] == 2  # "a" is 55 m back
    assert just_in["amount_mean_by_card"] == pytest.approx(10.0)
    assert out[1]["is_late"] is False
    stats = reference_stats(make_frame(rows), SMALL)
    assert (stats.late_events, stats.replayed_events) == (1, 0)
    assert stats.watermark_us == BASE_US + HOUR


@pytest.mark.parametrize("run", IMPLEMENTATIONS)
def test_amount_statistics(run: Runner) -> None:
    amounts = [10.0, 20.0, 30.0, 40.0]
    rows = [
        tx(f"t{i}", BASE_US + i * SECOND, customer_id="u", amount=a) for i, a in enumerate(amounts)
    ]
    rows.append(tx("same", BASE_US + 10 * SECOND, customer_id="v", amount=5.0))
    rows.append(tx("same2", BASE_US + 11 * SECOND, customer_id="v", amount=5.0))
    rows.append(tx("same3", BASE_US + 12 * SECOND, customer_id="v", amount=7.0))
    out = run(rows, SMALL)
    assert out[0]["amount_mean_by_customer"] is None
    assert out[1]["amount_std_by_customer"] is None  # one history event
    assert out[2]["amount_std_by_customer"] == pytest.approx(math.sqrt(50.0))
    assert out[3]["amount_mean_by_customer"] == pytest.approx(20.0)
    assert out[3]["amount_std_by_customer"] == pytest.approx(10.0)
    assert out[3]["amount_zscore_by_customer"] == pytest.approx(2.0)
    assert out[6]["amount_std_by_customer"] == 0.0
    assert out[6]["amount_zscore_by_customer"] is None  # std is 0
    assert out[3]["amount_sum_by_customer_1m"] == pytest.approx(100.0)


@pytest.mark.parametrize("run", IMPLEMENTATIONS)
def test_tiny_deviation_counts_as_zero(run: Runner) -> None:
    rows = [
        tx("a", BASE_US, customer_id="u", amount=1.0),
        tx("b", BASE_US + SECOND, customer_id="u", amount=1.00001),  # std 7.07e-6 < 1e-4
        tx("c", BASE_US + 2 * SECOND, customer_id="u", amount=5.0),
    ]
    last = run(rows, SMALL)[-1]
    assert last["amount_std_by_customer"] == 0.0
    assert last["amount_zscore_by_customer"] is None


@pytest.mark.parametrize("run", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("amounts", "mean", "std"),
    [
        ((79.79, 0.0, 0.0), 0.0, 0.0),
        ((20_000.0, 10.0, 10.0), 10.0, 0.0),
        ((20_000.0, 10.0, 10.01), 10.005, 0.01 / math.sqrt(2)),
        ((10_000_000.0, 10.0, 10.01), 10.005, 0.01 / math.sqrt(2)),
    ],
)
def test_replay_statistics_leave_the_replayed_amount_out(
    run: Runner, amounts: tuple[float, ...], mean: float, std: float
) -> None:
    """A replay of the first event is described by the other events alone, to full precision."""
    rows = [
        tx(f"t{i}", BASE_US + i * SECOND, card_ref="c", amount=a) for i, a in enumerate(amounts)
    ]
    rows.append(dict(rows[0]))
    last = run(rows, SMALL)[-1]
    assert last["amount_mean_by_card"] == pytest.approx(mean, rel=REL_TOL, abs=ABS_TOL)
    assert last["amount_std_by_card"] == pytest.approx(std, rel=REL_TOL, abs=ABS_TOL)
    if std == 0.0:
        assert last["amount_zscore_by_card"] is None
    else:
        zscore = (amounts[0] - mean) / std
        assert last["amount_zscore_by_card"] == pytest.approx(zscore, rel=REL_TOL)


@pytest.mark.parametrize("run", IMPLEMENTATIONS)
def test_reset_after_ttl(run: Runner) -> None:
    ttl = SMALL.ttl_us
    rows = [
        tx("a", BASE_US, card_ref="c", amount=1.0, merchant_id="m"),
        tx("b", BASE_US + ttl, card_ref="c", amount=2.0, merchant_id="m"),  # not more than ttl
        tx("c", BASE_US + 2 * ttl + 1, card_ref="c", amount=3.0, merchant_id="m"),  # reset
    ]
    _, b, c = run(rows, SMALL)
    assert b["seconds_since_prev_by_card"] == pytest.approx(ttl / SECOND)
    assert b["amount_mean_by_card"] == pytest.approx(1.0)
    assert c["seconds_since_prev_by_card"] is None
    assert c["amount_mean_by_card"] is None
    assert c["is_new_merchant_for_card"] is True
    assert c["tx_count_by_card_12h"] == 1


@pytest.mark.parametrize("run", IMPLEMENTATIONS)
def test_bucketed_windows(run: Runner) -> None:
    bucket = SMALL.bucket_us  # BASE_US is a bucket start
    rows = [
        tx("a", BASE_US + 300 * SECOND, card_ref="c"),
        # 4 h - 200 s after "a", but "a"'s bucket starts 4 h before this one's: out of 4h.
        tx("b", BASE_US + 4 * HOUR + 100 * SECOND, card_ref="c"),
        tx("c", BASE_US + 4 * HOUR + 500 * SECOND, card_ref="c"),
        # Late but accepted, earlier than "c" in the same bucket: "c" counts in 4h, not in 1h.
        tx("d", BASE_US + 4 * HOUR + 250 * SECOND, card_ref="c"),
    ]
    out = run(rows, SMALL)
    assert bucket == 600 * SECOND
    assert [r["tx_count_by_card_4h"] for r in out] == [1, 1, 2, 3]
    assert [r["tx_count_by_card_12h"] for r in out] == [1, 2, 3, 4]
    assert [r["tx_count_by_card_1h"] for r in out] == [1, 1, 2, 2]


@pytest.mark.parametrize("run", IMPLEMENTATIONS)
def test_distinct_cards_and_replay(run: Runner) -> None:
    rows = [
        tx("a", BASE_US, card_ref="k1", merchant_id="m", terminal_id="t"),
        tx("b", BASE_US + SECOND, card_ref="k1", merchant_id="m"),
        tx("c", BASE_US + 2 * SECOND, card_ref="k2", customer_id="u", merchant_id="m"),
        tx("d", BASE_US + 3 * SECOND, customer_id="u", merchant_id="m", terminal_id="t"),
    ]
    rows += [dict(rows[1]), dict(rows[3])]  # replays of "b" (later rows not in its windows), "d"
    out = run(rows, SMALL)
    assert [r["tx_count_by_merchant_10m"] for r in out] == [1, 2, 3, 4, 2, 4]
    assert [r["distinct_cards_by_merchant_10m"] for r in out] == [1, 1, 2, 3, 1, 3]
    assert [r["distinct_cards_by_terminal_10m"] for r in out] == [1, None, None, 2, None, 2]
    assert out[4] == {**out[4], "tx_count_by_card_10m": 2, "seconds_since_prev_by_card": 1.0}
    stats = reference_stats(make_frame(rows), SMALL)
    assert (stats.late_events, stats.replayed_events) == (0, 2)


@needs_kernel
def test_kernel_stats_on_a_small_example() -> None:
    rows = [
        tx("a", BASE_US, card_ref="k", merchant_id="m"),
        tx("b", BASE_US + HOUR, card_ref="k", customer_id="u"),
        tx("late", BASE_US, card_ref="k"),
        tx("b", BASE_US + HOUR, card_ref="k", customer_id="u"),
    ]
    state = new_state(SMALL)
    state.update(make_frame(rows))
    stats = state.stats()
    assert (stats.late_events, stats.replayed_events) == (1, 1)
    assert stats.watermark_us == BASE_US + HOUR
    live = {kind: stats.entities.get(kind, 0) for kind in ("card", "customer", "merchant")}
    assert live == {"card": 1, "customer": 1, "merchant": 1}
    assert stats.entities.get("terminal", 0) == 0
    assert stats.retained_events >= 2
    assert stats.memory_bytes > 0
    assert new_state(SMALL).stats().watermark_us is None


# ---------------------------------------------------------------------------------------------
# Properties


def _check_against_reference(
    rows: list[Row], config: FeatureConfig, cuts: list[int], expires: list[bool]
) -> None:
    expected = reference_run(make_frame(rows), config)
    actual, state = run_kernel_batches(rows, config, cuts, expires)
    assert_rows_match(expected.rows, actual, rows)
    stats = state.stats()
    assert stats.late_events == expected.late_events
    assert stats.replayed_events == expected.replayed_events
    assert stats.watermark_us == expected.watermark_us


@needs_kernel
@settings(PROPERTY, max_examples=500)
@given(data=st.data())
def test_kernel_matches_reference(data: st.DataObject) -> None:
    rows = data.draw(event_sequences(SMALL), label="rows")
    cuts, expires = data.draw(batch_plans(len(rows)), label="plan")
    _check_against_reference(rows, SMALL, cuts, expires)


@needs_kernel
@settings(PROPERTY, max_examples=100)
@given(data=st.data())
def test_kernel_matches_reference_default_config(data: st.DataObject) -> None:
    rows = data.draw(event_sequences(DEFAULT, max_size=40), label="rows")
    cuts, expires = data.draw(batch_plans(len(rows)), label="plan")
    _check_against_reference(rows, DEFAULT, cuts, expires)


@needs_kernel
@settings(PROPERTY, max_examples=100)
@given(data=st.data())
def test_kernel_matches_reference_with_tiny_chunks(data: st.DataObject) -> None:
    """Chunks of two events: late events split chunks and walks cross chunk links often."""
    config = dataclasses.replace(SMALL, chunk_size=2)
    rows = data.draw(event_sequences(config), label="rows")
    cuts, expires = data.draw(batch_plans(len(rows)), label="plan")
    _check_against_reference(rows, config, cuts, expires)


@needs_kernel
@settings(PROPERTY, max_examples=80)
@given(data=st.data())
def test_replays_change_nothing(data: st.DataObject) -> None:
    rows = data.draw(event_sequences(SMALL, min_size=2), label="rows")
    split = data.draw(st.integers(1, len(rows) - 1), label="split")
    prefix, suffix = rows[:split], rows[split:]
    replays = data.draw(st.lists(st.sampled_from(prefix), min_size=1, max_size=10), "replays")

    plain = new_state(SMALL)
    plain.update(make_frame(prefix))
    plain_suffix = plain.update(make_frame(suffix))

    replayed = new_state(SMALL)
    replayed.update(make_frame(prefix))
    before = replayed.stats()
    replay_out = replayed.update(make_frame(replays))
    after = replayed.stats()
    replayed_suffix = replayed.update(make_frame(suffix))

    assert after.retained_events == before.retained_events
    assert after.entities == before.entities
    assert after.watermark_us == before.watermark_us
    assert (after.late_events + after.replayed_events) - (
        before.late_events + before.replayed_events
    ) == len(replays)
    expected_replays = reference_features(make_frame([*prefix, *replays]), SMALL)[split:]
    assert_rows_match(expected_replays, replay_out.to_dicts(), [*prefix, *replays], split)
    assert replayed_suffix.equals(plain_suffix)
    assert replayed.stats().retained_events == plain.stats().retained_events


@needs_kernel
@settings(PROPERTY, max_examples=60)
@given(rows=event_sequences(SMALL))
def test_batch_split_invariance(rows: list[Row]) -> None:
    whole = new_state(SMALL)
    at_once = whole.update(make_frame(rows))
    single = new_state(SMALL)
    one_by_one = pl.concat([single.update(make_frame([row])) for row in rows])
    assert one_by_one.equals(at_once)
    a, b = whole.stats(), single.stats()
    assert (a.late_events, a.replayed_events, a.watermark_us) == (
        b.late_events,
        b.replayed_events,
        b.watermark_us,
    )
    assert a.entities == b.entities


# ---------------------------------------------------------------------------------------------
# Boundedness


def _churning_stream(hours: int, per_hour: int = 10) -> list[Row]:
    """Cards live for about an hour each, customers and merchants a little longer."""
    rows: list[Row] = []
    step = HOUR // per_hour
    for i in range(hours * per_hour):
        hour = i // per_hour
        rows.append(
            tx(
                f"tx-{i}",
                BASE_US + i * step,
                amount=float(i % 97),
                card_ref=f"card-{hour}-{i % 3}",
                customer_id=f"cust-{hour // 2}-{i % 2}",
                merchant_id=f"merch-{hour // 3}-{i % 4}",
                terminal_id=f"term-{hour // 3}",
                country=("US", "GB")[i % 2],
                device_id=f"dev-{hour}",
                latitude=40.0 + (i % 7),
                longitude=-74.0 + (i % 5),
            )
        )
    return rows


def _footprint(stats: Any) -> tuple[int, int]:
    """Bytes in use and, when the state reports it, bytes allocated (else the same figure)."""
    return stats.memory_bytes, getattr(stats, "allocated_bytes", stats.memory_bytes)


def _run_with_expiry(
    rows: list[Row], batch: int = 50
) -> tuple[Any, tuple[int, int], list[tuple[int, int]]]:
    """Process in batches, expiring after each: the peak footprint and the one after each expire."""
    state = new_state(SMALL)
    peak, after_expire = (0, 0), []
    for start in range(0, len(rows), batch):
        state.update(make_frame(rows[start : start + batch]))
        used, allocated = _footprint(state.stats())
        state.expire()
        after_expire.append(_footprint(state.stats()))
        peak = (max(peak[0], used, after_expire[-1][0]), max(peak[1], allocated))
    return state, peak, after_expire


@needs_kernel
def test_expire_keeps_state_bounded() -> None:
    ttl_hours = SMALL.ttl_us // HOUR
    _, (short_used, short_allocated), _ = _run_with_expiry(_churning_stream(2 * ttl_hours))
    assert short_used > 0

    # Ten times longer with the same churn: the footprint must stay near the short run's peak.
    rows = _churning_stream(20 * ttl_hours)
    state, (_, long_allocated), after_expire = _run_with_expiry(rows)
    stats = state.stats()
    assert stats.memory_bytes > 0
    assert max(used for used, _ in after_expire[len(after_expire) // 2 :]) <= 3 * short_used
    assert long_allocated <= 3 * short_allocated

    run = reference_run(make_frame(rows), SMALL)
    assert run.watermark_us is not None
    watermark = run.watermark_us
    assert stats.watermark_us == watermark
    for kind, latest in run.latest_by_entity.items():
        # Must keep: an entity a future accepted event could reach without a reset.
        horizon = watermark - SMALL.allowed_lateness_us - SMALL.ttl_us
        needed = sum(t >= horizon for t in latest.values())
        recent = sum(t >= watermark - 2 * SMALL.ttl_us for t in latest.values())
        live = stats.entities.get(kind, 0)
        assert needed <= live <= recent, (kind, needed, live, recent)
        assert recent < len(latest) / 4  # the bound above is meaningful


def _busy_place_out_of_order(n: int, cards: int, seed: int) -> list[Row]:
    """n events 5 s apart at one terminal and merchant, cards cycling, most events on time and
    the rest up to the allowed lateness behind (late for the place, still accepted)."""
    rng = random.Random(seed)
    lateness = SMALL.allowed_lateness_us
    rows = []
    for i in range(n):
        delay = 0 if rng.random() < 0.6 else rng.randint(0, lateness)
        rows.append(
            tx(f"t{i}", BASE_US + i * 5 * SECOND - delay, card_ref=f"card-{rng.randrange(cards)}",
               terminal_id="busy", merchant_id="shop", amount=float(i % 13))
        )  # fmt: skip
    return rows


@needs_kernel
@pytest.mark.parametrize("chunk_size", [2, 8])
def test_a_busy_place_with_events_out_of_order(chunk_size: int) -> None:
    """A terminal busier than any property example, with a third of its events late: late
    events are inserted into the sorted history (splitting full chunks) and read their
    windows through the bands next to the running totals; every row matches the reference,
    whether the stream comes in one batch or in many."""
    config = dataclasses.replace(SMALL, chunk_size=chunk_size)
    rows = _busy_place_out_of_order(900, cards=120, seed=chunk_size)
    expected = run_reference(rows, config)
    assert_rows_match(expected, run_kernel(rows, config), rows)
    state = new_state(config)
    batched: list[Row] = []
    for start in range(0, len(rows), 37):
        batched += state.update(make_frame(rows[start : start + 37])).to_dicts()
    assert_rows_match(expected, batched, rows)
    counts = [row["tx_count_by_terminal_1h"] for row in expected]
    assert max(counts) > 600  # the hour window holds most of the stream
    assert len({row["distinct_cards_by_terminal_10m"] for row in expected}) > 10
