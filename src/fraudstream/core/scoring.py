"""The model-scoring interface the engine calls on every batch.

A model sees the batch's inputs as one float matrix (a row per transaction, a column per name in
`feature_names`, NaN where a value is unknown) and returns, per row, a fraud probability-like
score in [0, 1]. For the rows it explains (those scoring high enough to matter), it also names
the features that pushed the score up the most: its reason codes. Explaining only those rows
keeps a quiet batch cheap. The ML layer (Isolation Forest, gradient boosting) implements this
protocol; the core only depends on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """Scores in [0, 1] (NaN when the model cannot score a row) and, for the rows the model
    explains, their top drivers (row index -> descriptions such as `amount=950.0`)."""

    scores: npt.NDArray[np.float64]
    drivers: Mapping[int, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rows = self.scores.shape[0]
        if any(not 0 <= row < rows for row in self.drivers):
            raise ValueError("ModelOutput: a driver names a row outside the batch")


@runtime_checkable
class ModelScorer(Protocol):
    """What the engine needs from a model: its version, its inputs and a vectorised score."""

    @property
    def version(self) -> str: ...

    @property
    def feature_names(self) -> tuple[str, ...]: ...

    def score(self, inputs: npt.NDArray[np.float64], explain: bool = True) -> ModelOutput:
        """Score every row of `inputs` (one column per `feature_names`, NaN for unknown);
        `explain=False` skips the drivers (a shadow model's reasons are never shown)."""
        ...
