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
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from fraudstream.core.rules.evaluation import (
    Bools,
    ColumnSource,
    Program,
    Reader,
    Row,
    Scalar,
    UnsupportedError,
    Value,
)
from fraudstream.core.rules.operations import (
    ARITHMETIC,
    ARITHMETIC_ONE,
    COMPARISONS,
    TRUE,
    abs_,
    abs_one,
    and_,
    and_one,
    arithmetic,
    arithmetic_one,
    comparison,
    comparison_one,
    is_null,
    is_null_one,
    never,
    not_,
    not_one,
    or_,
    or_one,
    text_known,
    text_one,
)

__all__ = [
    "SCALAR_ROWS",
    "ColumnSource",
    "Reader",
    "RuleProgram",
    "UnsupportedError",
    "compile_rule",
    "fired",
]

Kind = Literal["int", "float", "bool", "str", "decimal"]

_MAX_EXACT_INT = 2**53


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
            return Compiled("str", never, never, constant=raw)
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
                    "bool", and_(left.run, right.run), and_one(left.scalar, right.scalar)
                )
            return Compiled("bool", or_(left.run, right.run), or_one(left.scalar, right.scalar))
        if op in COMPARISONS:
            return self._compare(op, left, right)
        if op in ARITHMETIC:
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
            comparison(op, left.run, right.run, nan_aware=nan_aware),
            comparison_one(op, left.scalar, right.scalar, nan_aware=nan_aware),
        )

    def _compare_text(self, op: str, left: Compiled, right: Compiled) -> Compiled:
        """Only `column = 'text'` (either way round, or <>) is done here."""
        column, text = (left, right) if left.run is not never else (right, left)
        if (
            op not in ("Eq", "NotEq")
            or column.kind != "str"
            or text.kind != "str"
            or column.run is never
            or text.run is not never
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
        run = arithmetic(ARITHMETIC[op], left.run, right.run)
        one = arithmetic_one(ARITHMETIC_ONE[op], left.scalar, right.scalar)
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
            return Compiled(arg.kind, abs_(arg.run), abs_one(arg.scalar), may_be_nan=arg.may_be_nan)
        if function == "Coalesce" and args:
            return _coalesce(args)
        raise UnsupportedError(f"function {str(function)[:40]}")

    def _boolean_function(self, name: str, args: list[Compiled]) -> Compiled:
        if len(args) != 1 or args[0].run is never:
            raise UnsupportedError(f"{name} here")
        (arg,) = args
        if name == "Not" and arg.kind == "bool":
            return Compiled("bool", not_(arg.run), not_one(arg.scalar))
        if name in ("IsNull", "IsNotNull"):
            negate = name == "IsNotNull"
            if arg.kind == "str":
                column = str(arg.constant)
                operand, operand_one = text_known(column), text_one(column)
            else:
                operand, operand_one = arg.run, arg.scalar
            return Compiled(
                "bool", is_null(operand, negate=negate), is_null_one(operand_one, negate=negate)
            )
        raise UnsupportedError(f"Boolean function {name}")

    def _cast(self, body: dict[str, Any]) -> Compiled:
        inner = self.node(body.get("expr"))
        if body.get("dtype") == {"Literal": "Boolean"} and inner.kind == "bool":
            return inner  # NOT wraps its operand in a cast to Boolean: a no-op on a Boolean
        raise UnsupportedError(f"CAST to {body.get('dtype')}")


def _constant(kind: Kind, value: npt.NDArray[Any], literal: object) -> Compiled:
    result = Value(value, TRUE)
    one = bool(value) if kind == "bool" else float(value)
    return Compiled(kind, lambda source: result, lambda row: one, constant=literal)


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
