"""The model-scoring interface the engine calls on every batch.

A model sees the batch's feature columns and returns, per row, a fraud probability-like score in
[0, 1] and the features that pushed that score up the most (its reason codes). The ML layer
(Isolation Forest, gradient boosting) implements this protocol; the core only depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import polars as pl


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """Scores in [0, 1] (NaN when the model cannot score a row) and each row's top drivers."""

    scores: npt.NDArray[np.float64]
    drivers: list[list[str]]

    def __post_init__(self) -> None:
        if len(self.drivers) != self.scores.shape[0]:
            raise ValueError("ModelOutput: one list of drivers per score")


@runtime_checkable
class ModelScorer(Protocol):
    """What the engine needs from a model: its version, its inputs and a vectorised score."""

    @property
    def version(self) -> str: ...

    @property
    def feature_names(self) -> tuple[str, ...]: ...

    def score(self, features: pl.DataFrame) -> ModelOutput:
        """Score every row of `features` (which holds at least `feature_names`)."""
        ...
