"""Rule backtests on the pipeline's own database: reading recent history, and the whole run.

Transactions are stored by the real sink, labels by `store_labels`; every figure is checked
against a direct SQL count or the in-memory frames they were stored from.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import polars as pl
import psycopg
import pytest

from fraudstream.adapters.labels import recent_history, store_labels
from fraudstream.adapters.postgres import PostgresSink
from fraudstream.adapters.postgres_schema import migrate
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.events import TRANSACTION_SCHEMA
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.features.config import DAY, HOUR, MINUTE
from fraudstream.core.rules import Rule, RulesetSpec, compile_ruleset, load_default_ruleset
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.ml.rule_backtest import backtest_rule, run_rule_backtest, warm_up_period
from fraudstream.ports import ScoredBatch

CANDIDATE = Rule(id="big_spend", description="a draft", expression="amount > 500", score=20)

SHORT = FeatureConfig(
    account_windows_us=(MINUTE, 10 * MINUTE, HOUR, DAY, 2 * DAY),
    place_windows_us=(10 * MINUTE, DAY),
    ttl_us=3 * DAY,
)
"""Windows of at most two days, so that the warm-up is shorter than the stored history."""

SHORT_LIVE = RulesetSpec(
    "short-1",
    (
        Rule(id="card_burst", description="", expression="tx_count_by_card_10m > 3", score=30),
        Rule(
            id="customer_spree",
            description="",
            expression="amount_sum_by_customer_2d > 1500",
            score=30,
        ),
    ),
)


@dataclasses.dataclass(frozen=True)
class Stored:
    url: str
    transactions: pl.DataFrame  # engine schema, sorted by event time
    labels: pl.DataFrame  # the labelled rows only (every third transaction has none)
    start: datetime


@pytest.fixture(scope="module")
def generated() -> tuple[pl.DataFrame, pl.DataFrame]:
    stream = generate(GeneratorConfig(seed=8, n_transactions=3000, days=10, n_customers=300))
    transactions = stream.transactions.sort("timestamp", "transaction_id")
    labels = (
        stream.labels.select("transaction_id", "is_fraud")
        .with_row_index("i")
        .filter(pl.col("i") % 3 != 0)
        .drop("i")
    )
    return transactions, labels


@pytest.fixture
def stored(database: str, generated: tuple[pl.DataFrame, pl.DataFrame]) -> Stored:
    transactions, labels = generated
    migrate(database)
    config = FeatureConfig()
    engine = Engine(compile_ruleset(load_default_ruleset(), available_columns(config)))
    frame = engine.process(transactions, FeatureState(config)).frame
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    positioned = frame.with_columns(
        kafka_partition=(index % 3).cast(pl.Int32),
        kafka_offset=index,
        ingested_at=pl.col("timestamp") + timedelta(seconds=1),
        decided_at=pl.col("timestamp") + timedelta(seconds=2),
    )
    with PostgresSink(database) as sink:
        sink.write(ScoredBatch(positioned, ()))
    assert store_labels(database, labels, source="test") == labels.height
    start = transactions.get_column("timestamp").min()
    assert isinstance(start, datetime)
    return Stored(database, transactions, labels, start)


def _between(frame: pl.DataFrame, since: datetime, until: datetime) -> pl.DataFrame:
    return frame.filter((pl.col("timestamp") >= since) & (pl.col("timestamp") < until))


# --- recent_history ---------------------------------------------------------------------


def test_recent_history_reads_the_half_open_window_in_event_time_order(stored: Stored) -> None:
    times = stored.transactions.get_column("timestamp")
    since, until = times[700], times[1900]  # both exactly on a stored event time
    history = recent_history(stored.url, since, until, limit=10_000)

    expected = stored.transactions.slice(700, 1200)
    assert history.truncated is False
    assert history.transactions.schema == pl.Schema(TRANSACTION_SCHEMA)
    assert history.transactions.equals(expected)  # every column, nulls, microseconds
    assert history.transactions.get_column("timestamp").min() == since  # since: included
    assert until not in history.transactions.get_column("timestamp")  # until: excluded


def test_recent_history_returns_labels_only_for_labelled_rows(stored: Stored) -> None:
    since = stored.start + timedelta(days=2)
    until = stored.start + timedelta(days=5)
    history = recent_history(stored.url, since, until, limit=10_000)

    inside = _between(stored.transactions, since, until).get_column("transaction_id")
    expected = stored.labels.filter(pl.col("transaction_id").is_in(inside.implode()))
    assert 0 < expected.height < inside.len()  # some rows are unlabelled
    assert history.labels.schema == pl.Schema(
        {"transaction_id": pl.String(), "is_fraud": pl.Boolean()}
    )
    assert history.labels.sort("transaction_id").equals(expected.sort("transaction_id"))
    assert history.labels.get_column("is_fraud").any()  # fraud and legitimate both read back
    assert not history.labels.get_column("is_fraud").all()


def test_recent_history_keeps_the_latest_rows_when_truncated(stored: Stored) -> None:
    since = stored.start + timedelta(days=1)
    until = stored.start + timedelta(days=4)
    inside = _between(stored.transactions, since, until)
    assert inside.height > 300

    cut = recent_history(stored.url, since, until, limit=300)
    assert cut.truncated is True
    assert cut.transactions.equals(inside.tail(300))
    kept = cut.transactions.get_column("transaction_id").implode()
    assert cut.labels.get_column("transaction_id").is_in(kept).all()

    exact = recent_history(stored.url, since, until, limit=inside.height)
    assert exact.truncated is False
    assert exact.transactions.equals(inside)


def test_recent_history_of_an_empty_window_is_empty(stored: Stored) -> None:
    before = stored.start - timedelta(days=3)
    history = recent_history(stored.url, before, stored.start, limit=100)
    assert history.transactions.is_empty() and history.labels.is_empty()
    assert history.transactions.schema == pl.Schema(TRANSACTION_SCHEMA)
    assert history.truncated is False


def test_recent_history_refuses_naive_times_and_a_zero_limit(stored: Stored) -> None:
    naive = datetime(2026, 1, 2)  # no time zone
    with pytest.raises(ValueError, match="timezone"):
        recent_history(stored.url, naive, stored.start, limit=10)
    with pytest.raises(ValueError, match="limit"):
        recent_history(stored.url, stored.start, stored.start + timedelta(days=1), limit=0)


# --- run_rule_backtest ------------------------------------------------------------------


def _sql_count(url: str, condition: str, since: datetime, until: datetime) -> int:
    query = (
        "SELECT count(*) FROM transactions t LEFT JOIN labels l USING (transaction_id)"
        f" WHERE t.event_time >= %s AND t.event_time < %s AND ({condition})"
    )
    with psycopg.connect(url) as connection:
        row = connection.execute(query, (since, until)).fetchone()
    assert row is not None
    return int(row[0])


def test_run_rule_backtest_agrees_with_sql(stored: Stored) -> None:
    now = stored.start + timedelta(days=8, hours=5)  # later rows are stored, and left out
    measured_from = now - timedelta(days=3)
    warm_from = measured_from - warm_up_period(SHORT)
    assert warm_up_period(SHORT) == timedelta(days=2)
    assert warm_from > stored.start  # the oldest rows are not even read

    result = run_rule_backtest(stored.url, SHORT_LIVE, CANDIDATE, days=3, now=now, config=SHORT)

    def count(condition: str) -> int:
        return _sql_count(stored.url, condition, measured_from, now)

    fraud_hits = count("t.amount > 500 AND l.is_fraud")
    legitimate_hits = count("t.amount > 500 AND NOT l.is_fraud")
    assert min(fraud_hits, legitimate_hits) > 0
    assert result.window_start == measured_from and result.window_end == now
    assert result.transactions == count("true")
    assert result.warm_up_transactions == _sql_count(stored.url, "true", warm_from, measured_from)
    assert result.warm_up_transactions > 0
    assert result.hits == count("t.amount > 500")
    assert result.unlabelled_hits == count("t.amount > 500 AND l.is_fraud IS NULL") > 0
    assert (result.fraud_hits, result.legitimate_hits) == (fraud_hits, legitimate_hits)
    assert result.labelled_fraud == count("l.is_fraud")
    assert result.labelled_legitimate == count("NOT l.is_fraud")
    assert result.precision == pytest.approx(fraud_hits / (fraud_hits + legitimate_hits))
    assert result.recall == pytest.approx(fraud_hits / count("l.is_fraud"))
    assert result.baseline_ruleset_version == "short-1"
    assert result.truncated is False

    # the stored rows score exactly as the frames they were stored from
    loaded = _between(stored.transactions, warm_from, now)
    in_memory = backtest_rule(
        loaded, stored.labels, SHORT_LIVE, CANDIDATE, measured_from=measured_from, config=SHORT
    )
    assert dataclasses.replace(in_memory, window_end=now) == result
    assert result.action_changes  # something to compare


def test_run_rule_backtest_with_the_default_config_warms_up_on_everything_older(
    stored: Stored,
) -> None:
    now = stored.start + timedelta(days=9)
    result = run_rule_backtest(stored.url, load_default_ruleset(), CANDIDATE, days=2, now=now)
    measured_from = now - timedelta(days=2)
    assert warm_up_period(FeatureConfig()) == timedelta(days=30)
    assert (
        result.warm_up_transactions
        == _between(stored.transactions, stored.start, measured_from).height
    )
    assert result.transactions == _between(stored.transactions, measured_from, now).height


def test_run_rule_backtest_reports_truncation(stored: Stored) -> None:
    now = stored.start + timedelta(days=9)
    result = run_rule_backtest(
        stored.url, SHORT_LIVE, CANDIDATE, days=3, now=now, config=SHORT, limit=500
    )
    measured = _between(stored.transactions, now - timedelta(days=3), now).height
    assert measured > 500  # the limit cuts into the measured window itself
    assert result.truncated is True
    assert (result.warm_up_transactions, result.transactions) == (0, 500)
