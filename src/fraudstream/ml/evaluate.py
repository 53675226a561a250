"""Train on one window, score a later one, and compare rules, models and both together.

One replay of the history through the rules-only engine gives every row its features (from the
past only) and its rule decision. Models are trained on the training window and score the
evaluation window with the same vectorised call the engine makes; "rules + model" is what the
engine would decide with that model live: the higher of the two scores, and a flag when either
the rules flag or the model scores at or above the review threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from fraudstream.core.decision import DecisionConfig
from fraudstream.ml import metrics
from fraudstream.ml.artifact import Kind, Scorer
from fraudstream.ml.inputs import input_matrix
from fraudstream.ml.train import (
    TimeSplit,
    model_version,
    train_gradient_boosting,
    train_isolation_forest,
)

VARIANT_COLUMNS = (
    "variant", "roc_auc", "average_precision", "recall_at_alert_rate",
    "card_precision_at_k_per_day", "flagged", "flag_precision", "flag_recall",
)  # fmt: skip


@dataclass
class Comparison:
    """Per variant figures on the evaluation window, and the models trained for it."""

    split: TimeSplit
    train_rows: int
    train_fraud: int
    test_rows: int
    test_fraud: int
    table: pl.DataFrame
    models: dict[Kind, Scorer] = field(default_factory=dict)
    training: dict[Kind, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "train_end": self.split.train_end.isoformat(),
            "gap_days": self.split.gap.total_seconds() / 86400,
            "train_rows": self.train_rows,
            "train_fraud": self.train_fraud,
            "test_rows": self.test_rows,
            "test_fraud": self.test_fraud,
            "models": {kind: scorer.version for kind, scorer in self.models.items()},
            "variants": self.table.to_dicts(),
        }


def compare(
    scored: pl.DataFrame,
    split: TimeSplit,
    names: tuple[str, ...],
    kinds: tuple[Kind, ...],
    *,
    alert_rate: float = 0.01,
    k: int = 100,
    decision: DecisionConfig | None = None,
    seed: int = 0,
) -> Comparison:
    """`scored`: the rules-only replay joined with labels (`timestamp`, `card`, `score`,
    `is_flagged`, `is_fraud` and the model inputs), in event-time order."""
    review_at = (decision or DecisionConfig()).review_at
    train, test = split.masks(scored.get_column("timestamp"))
    labels = scored.get_column("is_fraud").to_numpy().astype(bool)
    inputs = input_matrix(scored, names)
    trained_at = datetime.now(UTC)
    hint = f"{split.train_end.isoformat()}|{int(train.sum())}|{seed}".encode()
    models: dict[Kind, Scorer] = {}
    training: dict[Kind, dict[str, Any]] = {}
    if "isolation_forest" in kinds:
        version = model_version("isolation_forest", hint, trained_at)
        models["isolation_forest"] = train_isolation_forest(
            inputs[train], names, version, alert_rate=alert_rate, seed=seed
        )
        training["isolation_forest"] = {}
    if "gradient_boosting" in kinds:
        version = model_version("gradient_boosting", hint, trained_at)
        scorer, facts = train_gradient_boosting(
            inputs[train], labels[train], names, version, seed=seed
        )
        models["gradient_boosting"] = scorer
        training["gradient_boosting"] = facts
    window = scored.filter(pl.Series(test))
    rule_score = window.get_column("score").to_numpy()
    rule_flag = window.get_column("is_flagged").to_numpy()
    rows = [_figures(window, "rules", rule_score, rule_flag, alert_rate, k)]
    for kind, scorer in models.items():
        model_score = np.clip(scorer.score(inputs[test], explain=False).scores, 0.0, 1.0)
        model_flag = model_score >= review_at
        rows.append(_figures(window, kind, model_score, model_flag, alert_rate, k))
        rows.append(
            _figures(
                window,
                f"rules+{kind}",
                np.fmax(rule_score, model_score),
                rule_flag | model_flag,
                alert_rate,
                k,
            )
        )
    return Comparison(
        split, int(train.sum()), int(labels[train].sum()), int(test.sum()),
        int(labels[test].sum()), pl.DataFrame(rows).select(VARIANT_COLUMNS), models, training,
    )  # fmt: skip


def _figures(
    window: pl.DataFrame,
    name: str,
    scores: npt.NDArray[np.float64],
    flagged: npt.NDArray[np.bool_],
    alert_rate: float,
    k: int,
) -> dict[str, object]:
    labels = window.get_column("is_fraud").to_numpy().astype(bool)
    fraud, flags = int(labels.sum()), int(flagged.sum())
    caught = int((flagged & labels).sum())
    cards = window.select("timestamp", "card", "is_fraud").with_columns(score=scores)
    return {
        "variant": name,
        **metrics.ranking(scores, labels),
        "recall_at_alert_rate": metrics.recall_at_alert_rate(scores, labels, alert_rate),
        "card_precision_at_k_per_day": metrics.card_precision_at_k(cards, k),
        "flagged": flags,
        "flag_precision": caught / flags if flags else None,
        "flag_recall": caught / fraud if fraud else None,
    }
