"""What compiled rules read and return: a batch's columns as `Value`s, or one `Row` of it.

`Reader` converts each column once per batch however many rules read it; `Row` reads the same
columns as Python scalars for the one-row-at-a-time path (see `vector.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]


class UnsupportedError(Exception):
    """The expression uses something the NumPy evaluator does not do; Polars evaluates it."""


class ColumnSource(Protocol):
    """Where compiled rules read their inputs; one instance per batch."""

    def number(self, column: str) -> Floats:
        """A numeric or Boolean column as float64 (Boolean as 0/1), NaN where null."""
        ...

    def equals(self, column: str, text: str) -> tuple[Bools, Bools]:
        """(column == text, column is not null) for a string column."""
        ...


@dataclass(frozen=True, slots=True)
class Value:
    """A column of results: `values` where `known`, null elsewhere (values there are junk).

    Literals are 0-d arrays; NumPy broadcasting makes them columns when they meet one.
    """

    values: npt.NDArray[Any]
    known: Bools


class Reader:
    """One batch's columns as `Value`s, each converted once however many rules read it."""

    __slots__ = ("_lists", "_numbers", "_source", "_texts")

    def __init__(self, source: ColumnSource) -> None:
        self._source = source
        self._numbers: dict[str, Value] = {}
        self._lists: dict[str, list[float]] = {}
        self._texts: dict[tuple[str, str], Value] = {}

    def number(self, column: str, *, boolean: bool) -> Value:
        value = self._numbers.get(column)
        if value is None:
            raw = self._source.number(column)
            known = ~np.isnan(raw)
            value = self._numbers[column] = Value(raw != 0 if boolean else raw, known)
        return value

    def equals(self, column: str, text: str) -> Value:
        value = self._texts.get((column, text))
        if value is None:
            hit, known = self._source.equals(column, text)
            value = self._texts[column, text] = Value(hit, known)
        return value

    def row(self, index: int) -> Row:
        return Row(self, index)

    def number_list(self, column: str) -> list[float]:
        """A column as Python floats (NaN for null), for the one-row-at-a-time path."""
        values = self._lists.get(column)
        if values is None:
            values = self._lists[column] = self._source.number(column).tolist()
        return values


class Row:
    """One row of a batch, read as Python scalars (None for null)."""

    __slots__ = ("_index", "_reader")

    def __init__(self, reader: Reader, index: int) -> None:
        self._reader, self._index = reader, index

    def number(self, column: str, *, boolean: bool) -> float | bool | None:
        value = self._reader.number_list(column)[self._index]
        if math.isnan(value):
            return None
        return value != 0 if boolean else value

    def equals(self, column: str, text: str) -> bool | None:
        value = self._reader.equals(column, text)
        return bool(value.values[self._index]) if value.known[self._index] else None


Program = Callable[[Reader], Value]
Scalar = Callable[[Row], Any]
"""The same rule on one row: Python floats and bools, None for null (cheaper than NumPy
below a handful of rows, where a NumPy call's fixed cost dwarfs its work)."""
