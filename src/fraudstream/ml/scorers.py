"""Trained models behind the engine's `ModelScorer` protocol.

Both scorers take the engine's input matrix (NaN for unknown values) and return a score in
[0, 1] that the decision thresholds can read, and reason codes for the rows scoring at or above
`explain_at` (the others cost nothing to explain):

* `IsolationForestScorer` (no labels): the forest's anomaly score is mapped through anchors
  taken from the training data, so that the `alert_rate` most anomalous share of the training
  traffic lands at 0.5 (review) and a tenth of that at 0.9 (decline). Its reasons are the
  inputs furthest from their training median, in units of their spread.
* `GradientBoostingScorer` (labels): LightGBM's probability, trained with the fraud class
  weighted up and brought back to the real base rate (the odds divided by the weight), so 0.5
  still means "as likely fraud as not". Its reasons are the inputs that moved the row's raw
  score up most along the paths it took through the trees (path attribution, also known as
  Saabas values): at every split the change in the node's expected value is credited to the
  split's feature. Exact SHAP (`pred_contrib`) cost 0.55 ms per explained row here, 25 times
  the whole batch's prediction, while path attribution is a table lookup per tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest

from fraudstream.core.scoring import ModelOutput

Matrix = npt.NDArray[np.float64]
REASONS_PER_ROW = 3


@dataclass(frozen=True)
class IsolationForestScorer:
    """An Isolation Forest with what it needs to score a stream: each input's median, the
    anomaly-to-score anchors, and each input's spread for reasons."""

    version: str
    feature_names: tuple[str, ...]
    forest: IsolationForest
    fill: Matrix
    """Each input's training median: stands in for unknown values, and is the typical value
    that reasons measure distance from."""
    anchors: Matrix
    spread: Matrix
    explain_at: float = 0.5

    def anomaly(self, inputs: Matrix) -> Matrix:
        """The forest's anomaly score (higher = more isolated), unknown values at the median."""
        filled = np.where(np.isnan(inputs), self.fill, inputs)
        return np.asarray(-self.forest.score_samples(filled), dtype=np.float64)

    def score(self, inputs: Matrix, explain: bool = True) -> ModelOutput:
        scores = np.interp(self.anomaly(inputs), self.anchors, _ANCHOR_SCORES)
        rows = np.flatnonzero(scores >= self.explain_at) if explain else np.empty(0, np.intp)
        if rows.size == 0:
            return ModelOutput(scores)
        distance = np.abs(inputs[rows] - self.fill) / self.spread
        return ModelOutput(scores, _top_drivers(rows, distance, inputs, self.feature_names))


_ANCHOR_SCORES = np.array([0.0, 0.5, 0.9, 1.0])


def anomaly_anchors(anomaly: Matrix, alert_rate: float) -> Matrix:
    """Training anomaly quantiles that map to scores 0, 0.5, 0.9 and 1 (strictly increasing,
    as `np.interp` needs)."""
    quantiles = [0.0, 1.0 - alert_rate, 1.0 - alert_rate / 10, 1.0]
    anchors = np.quantile(anomaly, quantiles)
    for i in range(1, anchors.size):
        anchors[i] = max(anchors[i], anchors[i - 1] + 1e-9)
    return anchors


@dataclass(frozen=True)
class GradientBoostingScorer:
    """A LightGBM booster whose training weighted fraud by `positive_weight`."""

    version: str
    feature_names: tuple[str, ...]
    booster: lgb.Booster
    positive_weight: float = 1.0
    explain_at: float = 0.5

    def probability(self, inputs: Matrix) -> Matrix:
        weighted = np.asarray(self.booster.predict(inputs, num_threads=1), dtype=np.float64)
        return weighted / (weighted + self.positive_weight * (1.0 - weighted))

    def score(self, inputs: Matrix, explain: bool = True) -> ModelOutput:
        scores = self.probability(inputs)
        rows = np.flatnonzero(scores >= self.explain_at) if explain else np.empty(0, np.intp)
        if rows.size == 0:
            return ModelOutput(scores)
        contributions = self.contributions(inputs[rows])
        return ModelOutput(scores, _top_drivers(rows, contributions, inputs, self.feature_names))

    def contributions(self, inputs: Matrix) -> Matrix:
        """Each input's share of each row's raw score (rows x inputs): the path attribution
        of the leaves the row reached, summed over the trees."""
        leaves = np.asarray(self.booster.predict(inputs, pred_leaf=True, num_threads=1))
        leaves = leaves.reshape(inputs.shape[0], -1).astype(np.intp)
        table = self._path_attribution
        trees = np.arange(table.shape[0])
        return np.asarray(table[trees, leaves].sum(axis=1), dtype=np.float64)

    @cached_property
    def _path_attribution(self) -> Matrix:
        """trees x leaves x inputs: what each leaf's path credits to each input."""
        trees = self.booster.dump_model()["tree_info"]
        most_leaves = max(int(tree["num_leaves"]) for tree in trees)
        table = np.zeros((len(trees), most_leaves, self.booster.num_feature()))
        for t, tree in enumerate(trees):
            _credit_paths(tree["tree_structure"], table[t], [])
        return table


def _credit_paths(node: dict[str, Any], leaves: Matrix, path: list[tuple[int, float]]) -> None:
    """Fill `leaves[leaf]` with the credits along the path to each leaf under `node`;
    `path` holds (feature, change in expected value) for the splits above it."""
    if "leaf_value" in node:
        for feature, change in path:
            leaves[int(node.get("leaf_index", 0)), feature] += change
        return
    feature, value = int(node["split_feature"]), float(node["internal_value"])
    for side in ("left_child", "right_child"):
        child = node[side]
        child_value = float(
            child["leaf_value"] if "leaf_value" in child else child["internal_value"]
        )
        _credit_paths(child, leaves, [*path, (feature, child_value - value)])


def _top_drivers(
    rows: npt.NDArray[np.intp], weight: Matrix, inputs: Matrix, names: tuple[str, ...]
) -> dict[int, list[str]]:
    """For each row, the inputs with the largest positive weight, shown with their values."""
    weight = np.where(np.isnan(weight), -np.inf, weight)
    order = np.argsort(-weight, axis=1)[:, :REASONS_PER_ROW]
    drivers: dict[int, list[str]] = {}
    for k, row in enumerate(rows.tolist()):
        picked = [j for j in order[k].tolist() if weight[k, j] > 0]
        drivers[row] = [f"{names[j]}={_show(inputs[row, j])}" for j in picked]
    return drivers


def _show(value: float) -> str:
    if np.isnan(value):
        return "null"
    return f"{value:.6g}"
