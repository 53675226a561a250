"""What a model reads, and how a scored frame becomes the matrix the engine hands it."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import polars as pl

from fraudstream.core.features import FeatureConfig


def model_inputs(config: FeatureConfig) -> tuple[str, ...]:
    """What a model reads: the amount, whether the card was present, and every feature."""
    return ("amount", "card_present", *config.names)


def input_matrix(frame: pl.DataFrame, names: tuple[str, ...]) -> npt.NDArray[np.float64]:
    """The named columns of a scored frame as floats, NaN where null (the engine's layout)."""
    columns = [pl.col(name).cast(pl.Float64) for name in names]
    return frame.select(columns).to_numpy().astype(np.float64, copy=False)
