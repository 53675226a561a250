"""The operations of the NumPy rule subset, twice: on columns (`Value`) and on one row of
Python scalars (None for null). Both follow Polars' semantics, spelt out in `vector.py`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from fraudstream.core.rules.evaluation import (
    Bools,
    Floats,
    Program,
    Reader,
    Row,
    Scalar,
    UnsupportedError,
    Value,
)

TRUE: Bools = np.array(True)

ARITHMETIC: dict[str, Callable[[Floats, Floats], Floats]] = {
    "Plus": np.add,
    "Minus": np.subtract,
    "Multiply": np.multiply,
    "Mul": np.multiply,
    "Div": np.true_divide,
    "TrueDivide": np.true_divide,
}
COMPARISONS = frozenset({"Eq", "NotEq", "Gt", "GtEq", "Lt", "LtEq"})


def never(source: object) -> Value:
    raise UnsupportedError("a string literal outside `column = 'text'`")


def text_known(column: str) -> Program:
    """A string column's nulls (its values are only ever compared with a literal)."""

    def run(source: Reader) -> Value:
        return source.equals(column, "")

    return run


def and_(left: Program, right: Program) -> Program:
    def run(source: Reader) -> Value:
        a, b = left(source), right(source)
        a_true, b_true = a.values & a.known, b.values & b.known
        known = (a.known & b.known) | (a.known & ~a.values) | (b.known & ~b.values)
        return Value(a_true & b_true, known)

    return run


def or_(left: Program, right: Program) -> Program:
    def run(source: Reader) -> Value:
        a, b = left(source), right(source)
        a_true, b_true = a.values & a.known, b.values & b.known
        return Value(a_true | b_true, (a.known & b.known) | a_true | b_true)

    return run


def not_(operand: Program) -> Program:
    def run(source: Reader) -> Value:
        a = operand(source)
        return Value(~a.values, a.known)

    return run


def is_null(operand: Program, *, negate: bool) -> Program:
    def run(source: Reader) -> Value:
        known = operand(source).known
        return Value(known if negate else ~known, TRUE)

    return run


def _greater(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> Bools:
    """a > b with NaN above every number, as Polars orders floats."""
    return np.asarray((a > b) | (np.isnan(a) & ~np.isnan(b)))


def _equal(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> Bools:
    """a == b with NaN equal to NaN, as Polars compares floats."""
    return np.asarray((a == b) | (np.isnan(a) & np.isnan(b)))


_PLAIN_COMPARISONS: dict[str, Callable[[Any, Any], Bools]] = {
    "Gt": np.greater,
    "GtEq": np.greater_equal,
    "Lt": np.less,
    "LtEq": np.less_equal,
    "Eq": np.equal,
    "NotEq": np.not_equal,
}


def comparison(op: str, left: Program, right: Program, *, nan_aware: bool) -> Program:
    """Where neither side can hold a NaN (no arithmetic), NumPy's own comparison is Polars'."""
    plain = _PLAIN_COMPARISONS[op]

    def run(source: Reader) -> Value:
        a, b = left(source), right(source)
        known = a.known & b.known
        if not nan_aware or a.values.dtype == np.bool_:
            return Value(plain(a.values, b.values), known)
        if op == "Gt":
            hit = _greater(a.values, b.values)
        elif op == "Lt":
            hit = _greater(b.values, a.values)
        elif op == "GtEq":
            hit = _greater(a.values, b.values) | _equal(a.values, b.values)
        elif op == "LtEq":
            hit = _greater(b.values, a.values) | _equal(a.values, b.values)
        elif op == "Eq":
            hit = _equal(a.values, b.values)
        else:
            hit = ~_equal(a.values, b.values)
        return Value(hit, known)

    return run


def arithmetic(
    operation: Callable[[Floats, Floats], Floats], left: Program, right: Program
) -> Program:
    def run(source: Reader) -> Value:
        a, b = left(source), right(source)
        with np.errstate(all="ignore"):
            values = operation(a.values, b.values)
        return Value(np.asarray(values, dtype=np.float64), a.known & b.known)

    return run


def abs_(operand: Program) -> Program:
    def run(source: Reader) -> Value:
        a = operand(source)
        return Value(np.abs(a.values), a.known)

    return run


# -- the same operations on one row of Python scalars (None = null) --------------------------


def text_one(column: str) -> Scalar:
    def run(row: Row) -> bool | None:
        return row.equals(column, "")

    return run


def and_one(left: Scalar, right: Scalar) -> Scalar:
    def run(row: Row) -> bool | None:
        a, b = left(row), right(row)
        if a is False or b is False:
            return False
        return None if a is None or b is None else True

    return run


def or_one(left: Scalar, right: Scalar) -> Scalar:
    def run(row: Row) -> bool | None:
        a, b = left(row), right(row)
        if a is True or b is True:
            return True
        return None if a is None or b is None else False

    return run


def not_one(operand: Scalar) -> Scalar:
    def run(row: Row) -> bool | None:
        a = operand(row)
        return None if a is None else not a

    return run


def is_null_one(operand: Scalar, *, negate: bool) -> Scalar:
    def run(row: Row) -> bool:
        return (operand(row) is None) != negate

    return run


def _greater_one(a: float, b: float) -> bool:
    return a > b or (math.isnan(a) and not math.isnan(b))


def _equal_one(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


_PLAIN_ONE: dict[str, Callable[[Any, Any], bool]] = {
    "Gt": lambda a, b: a > b,
    "GtEq": lambda a, b: a >= b,
    "Lt": lambda a, b: a < b,
    "LtEq": lambda a, b: a <= b,
    "Eq": lambda a, b: a == b,
    "NotEq": lambda a, b: a != b,
}
_NAN_ORDERED_ONE: dict[str, Callable[[float, float], bool]] = {
    "Gt": _greater_one,
    "GtEq": lambda a, b: _greater_one(a, b) or _equal_one(a, b),
    "Lt": lambda a, b: _greater_one(b, a),
    "LtEq": lambda a, b: _greater_one(b, a) or _equal_one(a, b),
    "Eq": _equal_one,
    "NotEq": lambda a, b: not _equal_one(a, b),
}


def comparison_one(op: str, left: Scalar, right: Scalar, *, nan_aware: bool) -> Scalar:
    compare = (_NAN_ORDERED_ONE if nan_aware else _PLAIN_ONE)[op]

    def run(row: Row) -> bool | None:
        a, b = left(row), right(row)
        return None if a is None or b is None else compare(a, b)

    return run


def _divide_one(a: float, b: float) -> float:
    """IEEE division as NumPy does it: x/0 is ±inf, 0/0 is NaN (Python would raise)."""
    if b == 0.0:
        if a == 0.0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


ARITHMETIC_ONE: dict[str, Callable[[float, float], float]] = {
    "Plus": lambda a, b: a + b,
    "Minus": lambda a, b: a - b,
    "Multiply": lambda a, b: a * b,
    "Mul": lambda a, b: a * b,
    "Div": _divide_one,
    "TrueDivide": _divide_one,
}


def arithmetic_one(
    operation: Callable[[float, float], float], left: Scalar, right: Scalar
) -> Scalar:
    def run(row: Row) -> float | None:
        a, b = left(row), right(row)
        return None if a is None or b is None else operation(a, b)

    return run


def abs_one(operand: Scalar) -> Scalar:
    def run(row: Row) -> float | None:
        a = operand(row)
        return None if a is None else abs(a)

    return run
