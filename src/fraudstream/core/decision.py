"""From rule hits and a model score to a score, an action and the reasons, for a whole batch.

The score is a noisy-OR of the fired rules' weights (a rule worth 60 points alone gives 0.6;
two such rules give 0.84), raised to the model's score when a model is present. The action is
the stronger of what the score's thresholds say and what the fired rules demand, so a hard
`decline` rule declines whatever the model thinks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from fraudstream.core.errors import ConfigError

Action = Literal["approve", "review", "decline"]
ACTIONS: Final[tuple[Action, ...]] = ("approve", "review", "decline")
SEVERITY: Final = {action: rank for rank, action in enumerate(ACTIONS)}


@dataclass(frozen=True, slots=True)
class DecisionConfig:
    """Score thresholds: at or above `review_at` → review, at or above `decline_at` → decline."""

    review_at: float = 0.5
    decline_at: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 < self.review_at <= self.decline_at <= 1.0:
            raise ConfigError(
                "decision thresholds: need 0 < review_at <= decline_at <= 1, "
                f"got review_at={self.review_at}, decline_at={self.decline_at}"
            )


def rule_scores(
    hits: npt.NDArray[np.bool_], weights: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Noisy-OR of the fired rules' weights (points out of 100), one score per row."""
    if hits.shape[1] == 0:
        return np.zeros(hits.shape[0], dtype=np.float64)
    keep = 1.0 - np.clip(weights, 0.0, 100.0) / 100.0
    miss = np.where(hits, keep[np.newaxis, :], 1.0).prod(axis=1)
    return np.asarray(1.0 - miss, dtype=np.float64)


def combine_scores(
    rule_score: npt.NDArray[np.float64], model_score: npt.NDArray[np.float64] | None
) -> npt.NDArray[np.float64]:
    if model_score is None:
        return rule_score
    return np.fmax(rule_score, model_score)


def actions_for(
    score: npt.NDArray[np.float64],
    hits: npt.NDArray[np.bool_],
    rule_actions: npt.NDArray[np.int8],
    config: DecisionConfig,
) -> npt.NDArray[np.int8]:
    """Severity rank per row (index into ACTIONS): thresholds, raised by fired rules' actions."""
    by_score = np.where(
        score >= config.decline_at, 2, np.where(score >= config.review_at, 1, 0)
    ).astype(np.int8)
    if hits.shape[1] == 0:
        return by_score
    by_rules = np.where(hits, rule_actions[np.newaxis, :], 0).max(axis=1).astype(np.int8)
    return np.asarray(np.maximum(by_score, by_rules), dtype=np.int8)
