"""Backtest: replay a labelled history through the engine and measure the decisions and rules.

The history is scored exactly as the stream would score it: in event-time order, in
micro-batches, through the one engine call every runner uses, with features computed from the
past only. Labels are joined after scoring, so nothing the engine sees carries them.

A foreign dataset fits through a column mapping (engine name -> the dataset's column); a file
with nothing more than a customer, a terminal, an amount, a timestamp and a label works, the
features that need absent fields coming out null. Rows without a transaction id get one from
their position in the file; `conform` brings the rest to the engine's schema (integer ids to
text, naive datetimes taken as UTC).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from fraudstream.core.engine import Engine
from fraudstream.core.errors import ConfigError, InvalidTransaction
from fraudstream.core.events import TRANSACTION_SCHEMA, conform
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.ml import metrics
from fraudstream.ml.artifact import Kind
from fraudstream.ml.evaluate import Comparison, compare
from fraudstream.ml.inputs import model_inputs
from fraudstream.ml.train import TimeSplit
from fraudstream.runners.replay import replay, scenario_report

LABEL: str = "is_fraud"
SCENARIO: str = "scenario"


@dataclass(frozen=True)
class History:
    """Transactions in the engine's schema, and their labels (`transaction_id`, `is_fraud`,
    and `scenario` when the dataset has one)."""

    transactions: pl.DataFrame
    labels: pl.DataFrame


def read_history(
    path: Path,
    mapping: Mapping[str, str] | None = None,
    label: str = LABEL,
    scenario: str | None = SCENARIO,
) -> History:
    """Read a CSV or Parquet history; `mapping` renames the dataset's columns to the engine's
    (`{"customer_id": "CUSTOMER_ID", ...}`). Raises `InvalidTransaction` naming what is
    missing or unknown."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    if path.suffix.lower() == ".parquet":
        raw = pl.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        raw = pl.read_csv(path, try_parse_dates=True)
    else:
        raise InvalidTransaction("$", f"{path.name}: expected a .csv or .parquet file")
    return history_from_frame(raw, mapping or {}, label, scenario)


def history_from_frame(
    raw: pl.DataFrame, mapping: Mapping[str, str], label: str, scenario: str | None
) -> History:
    unknown = [name for name in mapping if name not in TRANSACTION_SCHEMA]
    if unknown:
        raise InvalidTransaction(unknown[0], f"not an engine column: {', '.join(unknown)}")
    absent = [source for source in mapping.values() if source not in raw.columns]
    if label not in raw.columns:
        absent.append(label)
    if absent:
        raise InvalidTransaction(absent[0], f"not in the dataset: {', '.join(absent)}")
    renamed = raw.rename({source: name for name, source in mapping.items()})
    if "transaction_id" not in renamed.columns:
        renamed = renamed.with_columns(
            ("row_" + pl.int_range(pl.len()).cast(pl.String)).alias("transaction_id")
        )
    if renamed.schema.get("timestamp") == pl.String:  # `conform` takes datetimes, not text
        renamed = renamed.with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC"))
    labels = [pl.col("transaction_id"), pl.col(label).cast(pl.Boolean).alias(LABEL)]
    if scenario is not None and scenario in renamed.columns:
        labels.append(pl.col(scenario).cast(pl.String).alias(SCENARIO))
    transactions = conform(renamed.drop(label))
    return History(transactions.select(list(TRANSACTION_SCHEMA)), renamed.select(labels))


@dataclass
class BacktestReport:
    """What a backtest found, ready for the screen, JSON or HTML."""

    transactions: int
    fraud: int
    flagged: int
    rate_tx_per_s: float
    ranking: dict[str, float | None]
    recall_at_alert_rate: float | None
    alert_rate: float
    card_precision_at_k: float | None
    k: int
    ruleset_version: str
    rules: pl.DataFrame
    scenarios: pl.DataFrame | None = field(default=None)
    comparison: Comparison | None = field(default=None)

    def as_dict(self) -> dict[str, object]:
        return {
            "transactions": self.transactions,
            "fraud": self.fraud,
            "flagged": self.flagged,
            "rate_tx_per_s": round(self.rate_tx_per_s),
            **self.ranking,
            "alert_rate": self.alert_rate,
            "recall_at_alert_rate": self.recall_at_alert_rate,
            "k": self.k,
            "card_precision_at_k_per_day": self.card_precision_at_k,
            "ruleset_version": self.ruleset_version,
            "rules": self.rules.to_dicts(),
            "scenarios": None if self.scenarios is None else self.scenarios.to_dicts(),
            "models": None if self.comparison is None else self.comparison.as_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str)

    def to_html(self) -> str:
        """A self-contained page; every value is escaped."""
        summary = {
            k: v for k, v in self.as_dict().items() if k not in ("rules", "scenarios", "models")
        }
        parts = ["<!doctype html><meta charset=utf-8><title>fraudstream backtest</title>"]
        parts.append("<h1>Backtest</h1>" + _html_table(pl.DataFrame([summary])))
        parts.append("<h2>Rules</h2>" + _html_table(self.rules))
        if self.scenarios is not None:
            parts.append("<h2>Scenarios</h2>" + _html_table(self.scenarios))
        if self.comparison is not None:
            window = f"trained before {self.comparison.split.train_end:%Y-%m-%d %H:%M}"
            parts.append(f"<h2>Models ({html.escape(window)})</h2>")
            parts.append(_html_table(self.comparison.table))
        return "\n".join(parts)


def _html_table(frame: pl.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_show(v))}</td>" for v in row) + "</tr>"
        for row in frame.iter_rows()
    )
    return f"<table border=1><tr>{head}</tr>{rows}</table>"


def _show(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def backtest(
    history: History,
    engine: Engine,
    config: FeatureConfig,
    *,
    k: int = 100,
    alert_rate: float = 0.01,
    batch_size: int = 1000,
    split: TimeSplit | None = None,
    kinds: tuple[Kind, ...] = (),
    seed: int = 0,
) -> BacktestReport:
    """Score the whole history from an empty state and measure the decisions and each rule.

    With a `split`, also train each model kind in `kinds` on the window before it and compare
    rules, models and rules+model on the window after it (see `ml.evaluate`)."""
    if split is not None and engine.model is not None:
        raise ConfigError("a backtest that trains models compares them with the rules alone")
    decisions, progress = replay(history.transactions, engine, FeatureState(config), batch_size)
    scored = decisions.with_columns(pl.coalesce("card_ref", "customer_id").alias("card")).join(
        history.labels, on="transaction_id", how="inner", maintain_order="left"
    )
    scores = scored.get_column("score").to_numpy()
    labels = scored.get_column(LABEL).to_numpy().astype(bool)
    rules = metrics.with_every_rule(metrics.rule_table(scored), list(engine.ruleset.rule_ids))
    scenarios = None
    if SCENARIO in history.labels.columns:
        scenarios = scenario_report(decisions, history.labels)
    comparison = None
    if split is not None:
        names = model_inputs(config)
        comparison = compare(
            scored, split, names, kinds, alert_rate=alert_rate, k=k, decision=engine.decision,
            seed=seed,
        )  # fmt: skip
    return BacktestReport(
        transactions=scored.height,
        fraud=int(labels.sum()),
        flagged=int(scored.get_column("is_flagged").sum()),
        rate_tx_per_s=progress.rate,
        ranking=metrics.ranking(scores, labels),
        recall_at_alert_rate=metrics.recall_at_alert_rate(scores, labels, alert_rate),
        alert_rate=alert_rate,
        card_precision_at_k=metrics.card_precision_at_k(scored, k),
        k=k,
        ruleset_version=engine.ruleset.version,
        rules=rules,
        scenarios=scenarios,
        comparison=comparison,
    )
