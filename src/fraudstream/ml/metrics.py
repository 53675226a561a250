"""How well scores and rules separate fraud from the rest, measured the way the field does.

Ranking quality comes from scikit-learn (ROC AUC, average precision). Two operational measures
are ours because they depend on how alerts are worked:

* card precision@k per day: each day, investigators can look at k cards. A card counts once per
  day with its highest score; precision is the share of the k highest-scored cards that had a
  fraudulent transaction that day, averaged over the days (the fraud-detection literature's
  measure; the literature's refinement of dropping cards already known compromised is not
  applied).
* recall at a fixed alert rate: the share of fraud caught if the highest-scored fraction of
  transactions is alerted.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, roc_auc_score


def ranking(scores: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """ROC AUC and average precision; None when the labels hold one class only."""
    if labels.size == 0 or labels.all() or not labels.any():
        return {"roc_auc": None, "average_precision": None}
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
    }


def recall_at_alert_rate(scores: np.ndarray, labels: np.ndarray, alert_rate: float) -> float | None:
    """Fraud caught when the top `alert_rate` share of transactions by score is alerted (ties
    broken by position, so the figure never credits more alerts than the rate allows)."""
    fraud = int(labels.sum())
    if fraud == 0:
        return None
    alerts = math.ceil(alert_rate * scores.size)
    top = np.argsort(-scores, kind="stable")[:alerts]
    return float(labels[top].sum() / fraud)


def card_precision_at_k(scored: pl.DataFrame, k: int) -> float | None:
    """Mean over days of the fraud share among each day's k highest-scored cards.

    `scored` has `timestamp`, `card` (card reference, else customer), `score` and `is_fraud`.
    """
    if scored.is_empty():
        return None
    per_card = scored.group_by(pl.col("timestamp").dt.date().alias("day"), "card").agg(
        pl.col("score").max(), pl.col("is_fraud").any()
    )
    per_day = (
        per_card.sort(["day", "score", "card"], descending=[False, True, False])
        .group_by("day", maintain_order=True)
        .agg(pl.col("is_fraud").head(k).sum().alias("fraud_cards"))
    )
    return float((per_day.get_column("fraud_cards") / k).mean())  # type: ignore[arg-type]


def rule_table(decisions: pl.DataFrame) -> pl.DataFrame:
    """Per rule: hits, hit rate, precision and recall against `is_fraud`.

    `decisions` has `rules_fired` (list of rule ids) and `is_fraud`; rules that never fired
    appear only if listed, so pass the ruleset's ids to `with_every_rule`.
    """
    total = decisions.height
    fraud = int(decisions.get_column("is_fraud").sum())
    hits = (
        decisions.select("rules_fired", "is_fraud")
        .explode("rules_fired")
        .drop_nulls("rules_fired")
        .group_by(pl.col("rules_fired").alias("rule_id"))
        .agg(pl.len().alias("hits"), pl.col("is_fraud").sum().alias("true_hits"))
    )
    return hits.with_columns(
        hit_rate=pl.col("hits") / max(total, 1),
        precision=pl.col("true_hits") / pl.col("hits"),
        recall=pl.col("true_hits") / fraud if fraud else pl.lit(None, pl.Float64),
    ).sort("rule_id")


def with_every_rule(table: pl.DataFrame, rule_ids: list[str]) -> pl.DataFrame:
    """`table` with a zero row for each rule that never fired."""
    every = pl.DataFrame({"rule_id": rule_ids}, schema={"rule_id": pl.String})
    joined = every.join(table, on="rule_id", how="left")
    return joined.with_columns(
        pl.col("hits", "true_hits").fill_null(0), pl.col("hit_rate").fill_null(0.0)
    )
