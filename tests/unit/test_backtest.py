"""Backtests: the measures, foreign datasets, determinism, and no look-ahead."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from tests.unit.test_engine import _engine
from typer.testing import CliRunner

from fraudstream.cli import app
from fraudstream.core.errors import InvalidTransaction
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.ml import metrics
from fraudstream.ml.backtest import History, backtest, history_from_frame
from fraudstream.runners.replay import replay

DAY0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_ranking_and_alerting_measures_on_a_worked_example() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([False, False, True, True])
    figures = metrics.ranking(scores, labels)
    assert figures["roc_auc"] == pytest.approx(0.75)
    assert figures["average_precision"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert metrics.recall_at_alert_rate(scores, labels, 0.25) == 0.5, "one alert: the 0.8"
    assert metrics.ranking(scores, np.zeros(4, dtype=bool))["roc_auc"] is None


def test_card_precision_counts_each_card_once_per_day() -> None:
    scored = pl.DataFrame(
        {
            "timestamp": [DAY0, DAY0, DAY0, DAY0 + timedelta(days=1), DAY0 + timedelta(days=1)],
            "card": ["a", "a", "b", "a", "c"],
            "score": [0.9, 0.8, 0.1, 0.2, 0.7],
            "is_fraud": [True, True, False, False, False],
        }
    )
    # day 1: top card a (fraud) -> 1/1; day 2: top card c (not fraud) -> 0/1
    assert metrics.card_precision_at_k(scored, 1) == pytest.approx(0.5)
    # day 1 with k=2: cards a, b -> 1 fraud of 2; day 2: a, c -> 0 -> mean 0.25
    assert metrics.card_precision_at_k(scored, 2) == pytest.approx(0.25)


def test_rule_table_counts_hits_precision_and_recall() -> None:
    decisions = pl.DataFrame(
        {
            "rules_fired": [["big"], ["big", "fast"], [], ["fast"]],
            "is_fraud": [True, False, True, True],
        }
    )
    table = metrics.with_every_rule(metrics.rule_table(decisions), ["big", "fast", "never"])
    rows = {row["rule_id"]: row for row in table.iter_rows(named=True)}
    assert (rows["big"]["hits"], rows["big"]["precision"]) == (2, 0.5)
    assert rows["fast"]["recall"] == pytest.approx(1 / 3)
    assert rows["never"]["hits"] == 0 and rows["never"]["precision"] is None


def _foreign(n: int = 400) -> pl.DataFrame:
    rng = np.random.default_rng(3)
    return pl.DataFrame(
        {
            "CUSTOMER_ID": rng.integers(0, 40, n),
            "TERMINAL_ID": rng.integers(0, 15, n),
            "TX_AMOUNT": rng.gamma(2.0, 30.0, n).round(2),
            "TX_DATETIME": [
                (DAY0 + timedelta(minutes=7 * i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(n)
            ],
            "TX_FRAUD": rng.random(n) < 0.05,
        }
    )


def test_a_foreign_dataset_with_only_customer_terminal_amount_time_and_label() -> None:
    mapping = {
        "customer_id": "CUSTOMER_ID",
        "terminal_id": "TERMINAL_ID",
        "amount": "TX_AMOUNT",
        "timestamp": "TX_DATETIME",
    }
    history = history_from_frame(_foreign(), mapping, "TX_FRAUD", None)
    report = backtest(history, _engine(), FeatureConfig(), k=5)
    assert report.transactions == 400
    assert report.fraud == int(_foreign().get_column("TX_FRAUD").sum())
    assert report.ranking["roc_auc"] is not None
    decided, _ = replay(history.transactions, _engine(), FeatureState(FeatureConfig()))
    assert decided.get_column("speed_from_prev_kmh_by_customer").null_count() == 400, "no location"
    assert decided.get_column("tx_count_by_customer_1h").null_count() == 0, "customer counts"


def test_a_mapping_naming_an_unknown_column_is_refused_by_name() -> None:
    with pytest.raises(InvalidTransaction, match="TX_NOPE"):
        history_from_frame(_foreign(), {"amount": "TX_NOPE"}, "TX_FRAUD", None)
    with pytest.raises(InvalidTransaction, match="amout"):
        history_from_frame(_foreign(), {"amout": "TX_AMOUNT"}, "TX_FRAUD", None)


def _generated(n: int, seed: int = 11) -> History:
    stream = generate(GeneratorConfig(seed=seed, n_transactions=n))
    return History(stream.transactions, stream.labels)


def test_the_backtest_is_deterministic_for_a_seed() -> None:
    first = backtest(_generated(6000), _engine(), FeatureConfig()).as_dict()
    second = backtest(_generated(6000), _engine(), FeatureConfig()).as_dict()
    first.pop("rate_tx_per_s")
    second.pop("rate_tx_per_s")
    assert first == second
    assert first["fraud"] > 0 and first["roc_auc"] is not None


def test_no_feature_sees_a_later_transaction() -> None:
    """Scoring a history and the same history with more, later transactions appended gives
    the first part exactly the same features and scores: nothing looks ahead."""
    whole = _generated(6000).transactions.sort("timestamp", maintain_order=True)
    early = whole.head(3000)
    config = FeatureConfig()
    alone, _ = replay(early, _engine(), FeatureState(config))
    within, _ = replay(whole, _engine(), FeatureState(config))
    early_ids = early.get_column("transaction_id").implode()
    prefix = within.filter(pl.col("transaction_id").is_in(early_ids))
    assert prefix.height == alone.height
    assert prefix.drop("decided_at", strict=False).equals(alone.drop("decided_at", strict=False))


def test_the_command_writes_json_and_html_and_rejects_a_bad_mapping(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    _foreign().write_csv(path)
    maps = ["customer_id=CUSTOMER_ID", "terminal_id=TERMINAL_ID", "amount=TX_AMOUNT"]
    args = ["backtest", str(path), "--label", "TX_FRAUD", "--map", "timestamp=TX_DATETIME"]
    for item in maps:
        args += ["--map", item]
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    result = CliRunner().invoke(app, [*args, "--json", str(out_json), "--html", str(out_html)])
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    assert report["transactions"] == 400 and len(report["rules"]) > 0
    assert "<table" in out_html.read_text()
    bad = CliRunner().invoke(app, [*args, "--map", "amount"])
    assert bad.exit_code == 2 and "engine_column=dataset_column" in bad.output
