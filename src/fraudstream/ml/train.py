"""Train models on the engine's own features, split by time with a label-delay gap.

Features come from replaying the history through the engine (`ml.dataset`), so a model sees at
training time exactly what the stream computes online: each row's features from earlier
transactions only. The split is by event time: a training window, then a gap as long as labels
take to arrive (the rows in it are used by neither side), then the evaluation window.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import polars as pl
from sklearn.ensemble import IsolationForest

from fraudstream.core.errors import ConfigError
from fraudstream.ml.scorers import (
    GradientBoostingScorer,
    IsolationForestScorer,
    Matrix,
    anomaly_anchors,
)

MAX_POSITIVE_WEIGHT = 50.0
"""Fraud rows weigh neg/pos times a legitimate one, up to this: enough to make the trees look
at a 1 % class, not so much that a handful of frauds dominate the splits."""


@dataclass(frozen=True)
class TimeSplit:
    """Train on [start, train_end), skip `gap` (labels not yet known), evaluate the rest."""

    train_end: datetime
    gap: timedelta = timedelta(days=7)

    @property
    def test_start(self) -> datetime:
        return self.train_end + self.gap

    def masks(self, timestamps: pl.Series) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Boolean masks of the training and the evaluation rows."""
        train = (timestamps < self.train_end).to_numpy()
        test = (timestamps >= self.test_start).to_numpy()
        if not train.any() or not test.any():
            raise ConfigError(
                f"time split: train before {self.train_end:%Y-%m-%d %H:%M}, evaluate from "
                f"{self.test_start:%Y-%m-%d %H:%M}: one side holds no transactions "
                f"(the history runs {timestamps.min()} .. {timestamps.max()})"
            )
        return train, test


def fraction_split(timestamps: pl.Series, train_share: float, gap: timedelta) -> TimeSplit:
    """A split whose training window holds the first `train_share` of the history's time."""
    start, end = timestamps.min(), timestamps.max()
    if not isinstance(start, datetime) or not isinstance(end, datetime):
        raise ConfigError("time split: the history has no timestamps")
    return TimeSplit(start + (end - start) * train_share, gap)


def model_version(kind: str, payload_hint: bytes, trained_at: datetime) -> str:
    """`if-20261123T101500-1a2b3c4d`: kind, training time and a digest of the training data."""
    prefix = {"isolation_forest": "if", "gradient_boosting": "gb"}[kind]
    digest = hashlib.sha256(payload_hint).hexdigest()[:8]
    return f"{prefix}-{trained_at:%Y%m%dT%H%M%S}-{digest}"


def train_isolation_forest(
    inputs: Matrix,
    names: tuple[str, ...],
    version: str,
    *,
    alert_rate: float = 0.01,
    trees: int = 100,
    seed: int = 0,
) -> IsolationForestScorer:
    """Fit on unlabelled rows; anchor the score so `alert_rate` of them would be reviewed."""
    if not 0 < alert_rate < 1:
        raise ConfigError(f"alert_rate must be in (0, 1), got {alert_rate}")
    fill = np.nan_to_num(np.nanmedian(inputs, axis=0), nan=0.0)
    filled = np.where(np.isnan(inputs), fill, inputs)
    forest = IsolationForest(n_estimators=trees, max_samples=256, random_state=seed)
    forest.fit(filled)
    anomaly = -forest.score_samples(filled)
    low, high = np.nanquantile(inputs, [0.25, 0.75], axis=0)
    spread = np.nan_to_num(high - low, nan=1.0)
    spread = np.where(spread > 0, spread, np.maximum(np.abs(fill), 1.0))
    return IsolationForestScorer(
        version, names, forest, fill=fill, anchors=anomaly_anchors(anomaly, alert_rate),
        spread=spread,
    )  # fmt: skip


def train_gradient_boosting(
    inputs: Matrix,
    labels: npt.NDArray[np.bool_],
    names: tuple[str, ...],
    version: str,
    *,
    rounds: int = 400,
    validation_share: float = 0.15,
    seed: int = 0,
) -> tuple[GradientBoostingScorer, dict[str, float]]:
    """Fit LightGBM on time-ordered rows; the latest `validation_share` stops the boosting
    when their average precision stops improving. Returns the scorer and training facts.

    One thread: LightGBM's OpenMP threads spin while they wait, and on a machine whose other
    core is busy (a worker, the database) two threads ran each round 30 times slower here."""
    fraud = int(labels.sum())
    if fraud < 10 or fraud == labels.size:
        raise ConfigError(f"supervised training needs fraud and legitimate rows; {fraud} fraud")
    cut = int(labels.size * (1 - validation_share))
    weight = float(min(MAX_POSITIVE_WEIGHT, (labels.size - fraud) / fraud))
    params = {
        "objective": "binary", "learning_rate": 0.05, "num_leaves": 31,
        "min_child_samples": 50, "feature_fraction": 0.8, "bagging_fraction": 0.8,
        "bagging_freq": 1, "lambda_l2": 1.0, "scale_pos_weight": weight,
        "metric": "average_precision", "seed": seed, "deterministic": True,
        "force_row_wise": True, "verbose": -1, "num_threads": 1,
    }  # fmt: skip
    if not labels[cut:].any():  # nothing to stop on: train on everything, all rounds
        cut = labels.size
    train = lgb.Dataset(inputs[:cut], labels[:cut], feature_name=list(names))
    stopping = {}
    if cut < labels.size:
        valid = lgb.Dataset(inputs[cut:], labels[cut:], reference=train)
        stopping = {"valid_sets": [valid], "callbacks": [lgb.early_stopping(40, verbose=False)]}
    booster = lgb.train(params, train, rounds, **stopping)
    best = booster.best_iteration or None
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    facts = {"positive_weight": weight, "rounds": float(booster.current_iteration())}
    return GradientBoostingScorer(version, names, booster, positive_weight=weight), facts
