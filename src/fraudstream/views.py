"""Rich tables more than one command shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl
from rich.console import Group
from rich.table import Table

if TYPE_CHECKING:
    from fraudstream.ml.backtest import BacktestReport
    from fraudstream.ml.evaluate import Comparison


def scenario_table(report: pl.DataFrame, title: str) -> Table:
    """Recall per fraud scenario and overall precision (see `runners.replay.scenario_report`)."""
    table = Table(title=f"{title} (flag = review or decline)")
    for column in ("scenario", "fraud tx", "caught", "recall", "precision"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for row in report.iter_rows(named=True):
        precision = row["precision"]
        table.add_row(
            str(row["scenario"]),
            f"{row['fraud']:,}",
            f"{row['caught']:,}",
            f"{row['recall']:.1%}",
            "" if precision is None else f"{precision:.1%} of {row['flags']:,} flags",
        )
    return table


def backtest_tables(report: BacktestReport) -> Group:
    """The backtest's figures: one summary table, one row per rule, the scenarios if known."""
    summary = Table(title=f"Backtest of ruleset {report.ruleset_version}")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    figures = {
        "transactions": f"{report.transactions:,} ({report.fraud:,} fraud)",
        "flagged (review or decline)": f"{report.flagged:,}",
        "ROC AUC": _maybe(report.ranking["roc_auc"], "{:.3f}"),
        "average precision": _maybe(report.ranking["average_precision"], "{:.3f}"),
        f"recall at {report.alert_rate:.1%} alerted": _maybe(report.recall_at_alert_rate, "{:.1%}"),
        f"card precision@{report.k} per day": _maybe(report.card_precision_at_k, "{:.1%}"),
        "replay rate": f"{report.rate_tx_per_s:,.0f} tx/s",
    }
    for name, value in figures.items():
        summary.add_row(name, value)
    rules = Table(title="Rules on this history")
    for column in ("rule", "hits", "hit rate", "precision", "recall"):
        rules.add_column(column, justify="left" if column == "rule" else "right")
    for row in report.rules.iter_rows(named=True):
        rules.add_row(
            row["rule_id"],
            f"{row['hits']:,}",
            f"{row['hit_rate']:.2%}",
            _maybe(row["precision"], "{:.1%}"),
            _maybe(row["recall"], "{:.1%}"),
        )
    tables: list[Table] = [summary, rules]
    if report.scenarios is not None:
        tables.append(scenario_table(report.scenarios, "Detection per scenario"))
    if report.comparison is not None:
        tables.append(comparison_table(report.comparison))
    return Group(*tables)


def comparison_table(comparison: Comparison) -> Table:
    """Rules, models and rules+model on the evaluation window."""
    title = (
        f"Trained before {comparison.split.train_end:%Y-%m-%d %H:%M} "
        f"({comparison.train_rows:,} tx, {comparison.train_fraud:,} fraud); evaluated from "
        f"{comparison.split.test_start:%Y-%m-%d %H:%M} "
        f"({comparison.test_rows:,} tx, {comparison.test_fraud:,} fraud)"
    )
    table = Table(title=title)
    headers = ("ROC AUC", "avg prec", "recall@rate", "card P@k", "flagged", "flag P", "flag R")
    table.add_column("variant", no_wrap=True)
    for header in headers:
        table.add_column(header, justify="right")
    for row in comparison.table.iter_rows(named=True):
        table.add_row(
            row["variant"],
            _maybe(row["roc_auc"], "{:.3f}"),
            _maybe(row["average_precision"], "{:.3f}"),
            _maybe(row["recall_at_alert_rate"], "{:.1%}"),
            _maybe(row["card_precision_at_k_per_day"], "{:.1%}"),
            f"{row['flagged']:,}",
            _maybe(row["flag_precision"], "{:.1%}"),
            _maybe(row["flag_recall"], "{:.1%}"),
        )
    return table


def _maybe(value: float | None, template: str) -> str:
    return "n/a" if value is None else template.format(value)
