"""Rules evaluated with NumPy: the common subset of the rule language, without Polars.

Polars charges a fixed cost per expression per call (tens of microseconds on this hardware),
which is the whole budget of a batch of one. Most rules are comparisons and arithmetic on
numbers joined by AND / OR / NOT; those are compiled here, from the expression tree Polars'
own SQL parser built (`Expr.meta.serialize`), into NumPy operations with Polars' semantics:

- three-valued logic: a null operand gives a null result, except FALSE AND null = FALSE and
  TRUE OR null = TRUE; a rule whose answer is null has not fired;
- NaN (from 0/0 or inf - inf) is a value, not a null: greater than every number and equal to
  itself, as Polars orders floats;
- integers are carried as float64, exact below 2**53 (counts never get near);
- a decimal literal (`2.5`) meets a float column as a float; beside an integer it is only
  accepted where float rounding cannot change the answer.

Anything outside the subset (string functions, IN lists, CASE, casts, integer remainder...)
raises `UnsupportedError`, and that rule stays with Polars. `tests/unit/test_vector_rules.py`
checks that both evaluators agree on random expressions over random data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt
import polars as pl

Kind = Literal["int", "float", "bool", "str", "decimal"]
Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]

_MAX_EXACT_INT = 2**53


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


@dataclass(frozen=True, slots=True)
class RuleProgram:
    """A compiled rule: the column-wise program and its one-row twin."""

    vector: Program
    scalar: Scalar


@dataclass(frozen=True, slots=True)
class Compiled:
    kind: Kind
    run: Program
    scalar: Scalar
    constant: object = None
    """The literal's value for literals (a Fraction for decimals), else None."""
    may_be_nan: bool = False
    """Only arithmetic makes a NaN (0/0, inf - inf); inputs carry NaN only as null."""


_TRUE: Bools = np.array(True)


SCALAR_ROWS: Final = 4
"""Up to this many rows, rules run row by row on Python scalars."""


def compile_rule(expression: pl.Expr, schema: Mapping[str, pl.DataType]) -> RuleProgram:
    """NumPy and scalar programs for a Boolean rule expression, or `UnsupportedError`."""
    tree = json.loads(expression.meta.serialize(format="json"))
    compiled = _Compiler(schema).node(tree)
    if compiled.kind != "bool":
        raise UnsupportedError(f"the expression yields {compiled.kind}, not a Boolean")
    return RuleProgram(compiled.run, compiled.scalar)


def fired(program: RuleProgram, reader: Reader, rows: int, *, scalar: bool | None = None) -> Bools:
    """Where the rule is TRUE (null counts as not fired), as a column of `rows`.

    `scalar` forces one path (tests compare both); by default small batches go row by row.
    """
    if scalar if scalar is not None else rows <= SCALAR_ROWS:
        return np.array([program.scalar(reader.row(r)) is True for r in range(rows)], np.bool_)
    result = program.vector(reader)
    hit = np.logical_and(result.values, result.known)
    return np.broadcast_to(hit, (rows,))


class _Compiler:
    def __init__(self, schema: Mapping[str, pl.DataType]) -> None:
        self._schema = schema

    def node(self, tree: object) -> Compiled:
        if not isinstance(tree, dict) or len(tree) != 1:
            raise UnsupportedError(f"unexpected expression node {str(tree)[:60]}")
        ((tag, body),) = tree.items()
        handler = {
            "Column": self._column,
            "Literal": self._literal,
            "BinaryExpr": self._binary_expr,
            "Function": self._function,
            "Cast": self._cast,
        }.get(tag)
        if handler is None:
            raise UnsupportedError(f"expression node {tag}")
        return handler(body)

    # -- leaves -------------------------------------------------------------------------

    def _column(self, name: object) -> Compiled:
        if not isinstance(name, str) or name not in self._schema:
            raise UnsupportedError(f"column {name!r}")
        kind = _kind_of(self._schema[name])

        if kind == "str":

            def no_direct_use(source: object) -> Value:
                raise UnsupportedError("a string column outside `column = 'text'`")

            return Compiled("str", no_direct_use, no_direct_use, constant=name)

        boolean = kind == "bool"

        def read(source: Reader) -> Value:
            return source.number(name, boolean=boolean)

        def read_one(row: Row) -> Any:
            return row.number(name, boolean=boolean)

        return Compiled(kind, read, read_one)

    def _literal(self, body: object) -> Compiled:
        if not isinstance(body, dict) or len(body) != 1:
            raise UnsupportedError("literal")
        ((form, inner),) = body.items()
        if not isinstance(inner, dict) or len(inner) != 1:
            raise UnsupportedError(f"{form} literal")
        ((type_name, raw),) = inner.items()
        if type_name == "Int" and isinstance(raw, int) and abs(raw) < _MAX_EXACT_INT:
            return _constant("int", np.array(float(raw)), raw)
        if type_name == "Float" and isinstance(raw, float):
            return _constant("float", np.array(raw), raw)
        if type_name == "Boolean" and isinstance(raw, bool):
            return _constant("bool", np.array(raw), raw)
        if type_name == "String" and isinstance(raw, str):
            return Compiled("str", _never, _never, constant=raw)
        if type_name == "Decimal" and isinstance(raw, list) and len(raw) == 3:
            value = Fraction(int(raw[0]), 10 ** int(raw[2]))
            return _constant("decimal", np.array(float(value)), value)
        raise UnsupportedError(f"literal of type {type_name}")

    # -- operators ----------------------------------------------------------------------

    def _binary_expr(self, body: dict[str, Any]) -> Compiled:
        op = body.get("op")
        left, right = self.node(body.get("left")), self.node(body.get("right"))
        return self._apply(str(op), left, right)

    def _apply(self, op: str, left: Compiled, right: Compiled) -> Compiled:
        if op in ("And", "LogicalAnd", "Or", "LogicalOr"):
            if left.kind != "bool" or right.kind != "bool":
                raise UnsupportedError(f"{op} of {left.kind} and {right.kind}")
            if "And" in op:
                return Compiled(
                    "bool", _and(left.run, right.run), _and_one(left.scalar, right.scalar)
                )
            return Compiled("bool", _or(left.run, right.run), _or_one(left.scalar, right.scalar))
        if op in _COMPARISONS:
            return self._compare(op, left, right)
        if op in _ARITHMETIC:
            return self._arithmetic(op, left, right)
        raise UnsupportedError(f"operator {op}")

    def _compare(self, op: str, left: Compiled, right: Compiled) -> Compiled:
        if "str" in (left.kind, right.kind):
            return self._compare_text(op, left, right)
        if left.kind == "bool" or right.kind == "bool":
            if left.kind != right.kind or op not in ("Eq", "NotEq"):
                raise UnsupportedError(f"{op} of {left.kind} and {right.kind}")
        else:
            _check_decimal_comparison(left, right)
        nan_aware = (left.may_be_nan or right.may_be_nan) and left.kind != "bool"
        return Compiled(
            "bool",
            _comparison(op, left.run, right.run, nan_aware=nan_aware),
            _comparison_one(op, left.scalar, right.scalar, nan_aware=nan_aware),
        )

    def _compare_text(self, op: str, left: Compiled, right: Compiled) -> Compiled:
        """Only `column = 'text'` (either way round, or <>) is done here."""
        column, text = (left, right) if left.run is not _never else (right, left)
        if (
            op not in ("Eq", "NotEq")
            or column.kind != "str"
            or text.kind != "str"
            or column.run is _never
            or text.run is not _never
        ):
            raise UnsupportedError(f"{op} on strings other than column = 'text'")
        name, literal, negate = str(column.constant), str(text.constant), op == "NotEq"

        def equals(source: Reader) -> Value:
            value = source.equals(name, literal)
            return Value(~value.values, value.known) if negate else value

        def equals_one(row: Row) -> bool | None:
            hit = row.equals(name, literal)
            return None if hit is None else hit != negate

        return Compiled("bool", equals, equals_one)

    def _arithmetic(self, op: str, left: Compiled, right: Compiled) -> Compiled:
        kinds = {left.kind, right.kind}
        if not kinds <= {"int", "float", "decimal"}:
            raise UnsupportedError(f"{op} of {left.kind} and {right.kind}")
        if "decimal" in kinds and kinds != {"decimal", "float"}:
            raise UnsupportedError(f"{op} of a decimal literal with {left.kind} and {right.kind}")
        kind: Kind = "int" if kinds == {"int"} and op != "Div" else "float"
        run = _arithmetic(_ARITHMETIC[op], left.run, right.run)
        one = _arithmetic_one(_ARITHMETIC_ONE[op], left.scalar, right.scalar)
        return Compiled(kind, run, one, may_be_nan=True)

    def _function(self, body: dict[str, Any]) -> Compiled:
        function, inputs = body.get("function"), body.get("input")
        if not isinstance(inputs, list):
            raise UnsupportedError("function without inputs")
        args = [self.node(item) for item in inputs]
        if isinstance(function, dict) and len(function) == 1:
            ((family, name),) = function.items()
            if family == "Boolean":
                return self._boolean_function(str(name), args)
            if family == "Sql" and isinstance(name, dict) and set(name) == {"Binary"}:
                if len(args) != 2:
                    raise UnsupportedError("binary SQL function")
                return self._apply(str(name["Binary"]), args[0], args[1])
        if function == "Abs" and len(args) == 1 and args[0].kind in ("int", "float"):
            arg = args[0]
            return Compiled(
                arg.kind, _abs(arg.run), _abs_one(arg.scalar), may_be_nan=arg.may_be_nan
            )
        if function == "Coalesce" and args:
            return _coalesce(args)
        raise UnsupportedError(f"function {str(function)[:40]}")

    def _boolean_function(self, name: str, args: list[Compiled]) -> Compiled:
        if len(args) != 1 or args[0].run is _never:
            raise UnsupportedError(f"{name} here")
        (arg,) = args
        if name == "Not" and arg.kind == "bool":
            return Compiled("bool", _not(arg.run), _not_one(arg.scalar))
        if name in ("IsNull", "IsNotNull"):
            negate = name == "IsNotNull"
            if arg.kind == "str":
                column = str(arg.constant)
                operand, operand_one = _text_known(column), _text_one(column)
            else:
                operand, operand_one = arg.run, arg.scalar
            return Compiled(
                "bool", _is_null(operand, negate=negate), _is_null_one(operand_one, negate=negate)
            )
        raise UnsupportedError(f"Boolean function {name}")

    def _cast(self, body: dict[str, Any]) -> Compiled:
        inner = self.node(body.get("expr"))
        if body.get("dtype") == {"Literal": "Boolean"} and inner.kind == "bool":
            return inner  # NOT wraps its operand in a cast to Boolean: a no-op on a Boolean
        raise UnsupportedError(f"CAST to {body.get('dtype')}")


# -- the operations ---------------------------------------------------------------------------

_ARITHMETIC: dict[str, Callable[[Floats, Floats], Floats]] = {
    "Plus": np.add,
    "Minus": np.subtract,
    "Multiply": np.multiply,
    "Mul": np.multiply,
    "Div": np.true_divide,
    "TrueDivide": np.true_divide,
}
_COMPARISONS = frozenset({"Eq", "NotEq", "Gt", "GtEq", "Lt", "LtEq"})


def _never(source: object) -> Value:
    raise UnsupportedError("a string literal outside `column = 'text'`")


def _text_known(column: str) -> Program:
    """A string column's nulls (its values are only ever compared with a literal)."""

    def run(source: Reader) -> Value:
        return source.equals(column, "")

    return run


def _constant(kind: Kind, value: npt.NDArray[Any], literal: object) -> Compiled:
    result = Value(value, _TRUE)
    one = bool(value) if kind == "bool" else float(value)
    return Compiled(kind, lambda source: result, lambda row: one, constant=literal)


def _and(left: Program, right: Program) -> Program:
    def run(source: Reader) -> Value:
        a, b = left(source), right(source)
        a_true, b_true = a.values & a.known, b.values & b.known
        known = (a.known & b.known) | (a.known & ~a.values) | (b.known & ~b.values)
        return Value(a_true & b_true, known)

    return run


def _or(left: Program, right: Program) -> Program:
    def run(source: Reader) -> Value:
        a, b = left(source), right(source)
        a_true, b_true = a.values & a.known, b.values & b.known
        return Value(a_true | b_true, (a.known & b.known) | a_true | b_true)

    return run


def _not(operand: Program) -> Program:
    def run(source: Reader) -> Value:
        a = operand(source)
        return Value(~a.values, a.known)

    return run


def _is_null(operand: Program, *, negate: bool) -> Program:
    def run(source: Reader) -> Value:
        known = operand(source).known
        return Value(known if negate else ~known, _TRUE)

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


def _comparison(op: str, left: Program, right: Program, *, nan_aware: bool) -> Program:
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


def _arithmetic(
    operation: Callable[[Floats, Floats], Floats], left: Program, right: Program
) -> Program:
    def run(source: Reader) -> Value:
        a, b = left(source), right(source)
        with np.errstate(all="ignore"):
            values = operation(a.values, b.values)
        return Value(np.asarray(values, dtype=np.float64), a.known & b.known)

    return run


def _abs(operand: Program) -> Program:
    def run(source: Reader) -> Value:
        a = operand(source)
        return Value(np.abs(a.values), a.known)

    return run


def _coalesce(args: list[Compiled]) -> Compiled:
    kinds = {arg.kind for arg in args}
    if kinds == {"bool"}:
        kind: Kind = "bool"
    elif kinds <= {"int", "float"}:
        kind = "int" if kinds == {"int"} else "float"
    else:
        raise UnsupportedError(f"COALESCE of {sorted(kinds)}")
    programs = [arg.run for arg in args]
    scalars = [arg.scalar for arg in args]

    def run_one(row: Row) -> Any:
        for scalar in scalars:
            value = scalar(row)
            if value is not None:
                return value
        return None

    def run(source: Reader) -> Value:
        result = programs[0](source)
        for program in programs[1:]:
            other = program(source)
            values = np.where(result.known, result.values, other.values)
            result = Value(values, result.known | other.known)
        return result

    return Compiled(kind, run, run_one, may_be_nan=any(arg.may_be_nan for arg in args))


def _check_decimal_comparison(left: Compiled, right: Compiled) -> None:
    """A decimal literal against integers: fine unless float rounding crosses an integer."""
    for decimal, other in ((left, right), (right, left)):
        if decimal.kind != "decimal":
            continue
        if other.kind == "decimal":
            raise UnsupportedError("a comparison of two decimal literals")
        if other.kind == "int":
            exact = decimal.constant
            assert isinstance(exact, Fraction)
            rounded = Fraction(float(exact))
            same_floor = math.floor(rounded) == math.floor(exact)
            same_integrality = (rounded.denominator == 1) == (exact.denominator == 1)
            if not (same_floor and same_integrality):
                raise UnsupportedError(f"decimal {exact} is not a float against an integer")


def _kind_of(dtype: pl.DataType) -> Kind:
    if dtype == pl.Boolean:
        return "bool"
    if dtype == pl.String:
        return "str"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    raise UnsupportedError(f"a column of type {dtype}")


# -- the same operations on one row of Python scalars (None = null) --------------------------


def _text_one(column: str) -> Scalar:
    def run(row: Row) -> bool | None:
        return row.equals(column, "")

    return run


def _and_one(left: Scalar, right: Scalar) -> Scalar:
    def run(row: Row) -> bool | None:
        a, b = left(row), right(row)
        if a is False or b is False:
            return False
        return None if a is None or b is None else True

    return run


def _or_one(left: Scalar, right: Scalar) -> Scalar:
    def run(row: Row) -> bool | None:
        a, b = left(row), right(row)
        if a is True or b is True:
            return True
        return None if a is None or b is None else False

    return run


def _not_one(operand: Scalar) -> Scalar:
    def run(row: Row) -> bool | None:
        a = operand(row)
        return None if a is None else not a

    return run


def _is_null_one(operand: Scalar, *, negate: bool) -> Scalar:
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


def _comparison_one(op: str, left: Scalar, right: Scalar, *, nan_aware: bool) -> Scalar:
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


_ARITHMETIC_ONE: dict[str, Callable[[float, float], float]] = {
    "Plus": lambda a, b: a + b,
    "Minus": lambda a, b: a - b,
    "Multiply": lambda a, b: a * b,
    "Mul": lambda a, b: a * b,
    "Div": _divide_one,
    "TrueDivide": _divide_one,
}


def _arithmetic_one(
    operation: Callable[[float, float], float], left: Scalar, right: Scalar
) -> Scalar:
    def run(row: Row) -> float | None:
        a, b = left(row), right(row)
        return None if a is None or b is None else operation(a, b)

    return run


def _abs_one(operand: Scalar) -> Scalar:
    def run(row: Row) -> float | None:
        a = operand(row)
        return None if a is None else abs(a)

    return run
