"""What compiled rules read: a batch's columns as float64 arrays with NaN for null."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]


class UnsupportedError(Exception):
    """The expression uses something the compiled evaluator does not do; Polars evaluates it."""


class ColumnSource(Protocol):
    """Where compiled rules read their inputs; one instance per batch."""

    def number(self, column: str) -> Floats:
        """A numeric or Boolean column as float64 (Boolean as 0/1), NaN where null."""
        ...

    def equals(self, column: str, text: str) -> tuple[Bools, Bools]:
        """(column == text, column is not null) for a string column."""
        ...
