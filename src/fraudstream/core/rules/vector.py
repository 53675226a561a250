"""Rules compiled to bytecode: the common subset of the rule language, without Polars.

Polars charges a fixed cost per expression per call (tens of microseconds on this hardware),
which is the whole budget of a batch of one. Most rules are comparisons and arithmetic on
numbers joined by AND / OR / NOT; those are compiled here, from the expression tree Polars'
own SQL parser built (`Expr.meta.serialize`), into bytecode that one compiled kernel runs
with Polars' semantics (`bytecode.py`):

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
from typing import Any, Literal

import polars as pl

from fraudstream.core.rules.bytecode import (
    ABS,
    ADD,
    AND,
    COALESCE,
    CONST,
    DIV,
    EQ,
    GE,
    GT,
    IS_NOT_NULL,
    IS_NULL,
    LE,
    LOAD,
    LOAD_BOOL,
    LT,
    MAX_STACK,
    MUL,
    NE,
    NOT,
    OR,
    SUB,
    Input,
    ProgramSet,
    RuleProgram,
)
from fraudstream.core.rules.evaluation import Bools, ColumnSource, UnsupportedError

__all__ = [
    "ColumnSource",
    "ProgramSet",
    "RuleProgram",
    "UnsupportedError",
    "compile_rule",
    "fired",
]

Kind = Literal["int", "float", "bool", "str", "decimal"]
Code = tuple[tuple[int, int], ...]

_MAX_EXACT_INT = 2**53
_ARITHMETIC = {"Plus": ADD, "Minus": SUB, "Multiply": MUL, "Mul": MUL, "Div": DIV,
               "TrueDivide": DIV}  # fmt: skip
_COMPARISONS = {"Gt": GT, "GtEq": GE, "Lt": LT, "LtEq": LE, "Eq": EQ, "NotEq": NE}


@dataclass(frozen=True, slots=True)
class Compiled:
    kind: Kind
    code: Code
    """Postfix instructions; empty for a string column or literal (only read by `=`)."""
    depth: int
    """The stack depth the code needs."""
    constant: object = None
    """The literal's value for literals (a Fraction for decimals), the column name for a
    string column, else None."""
    is_column: bool = False


def compile_rule(expression: pl.Expr, schema: Mapping[str, pl.DataType]) -> RuleProgram:
    """The bytecode of a Boolean rule expression, or `UnsupportedError`."""
    tree = json.loads(expression.meta.serialize(format="json"))
    compiler = _Compiler(schema)
    compiled = compiler.node(tree)
    if compiled.kind != "bool":
        raise UnsupportedError(f"the expression yields {compiled.kind}, not a Boolean")
    if compiled.depth > MAX_STACK:
        raise UnsupportedError(f"an expression nested deeper than {MAX_STACK}")
    return RuleProgram(
        compiled.code, tuple(compiler.inputs), tuple(compiler.constants), compiled.depth
    )


def fired(program: RuleProgram, source: ColumnSource, rows: int) -> Bools:
    """Where the rule is TRUE (null counts as not fired), as a column of `rows`."""
    hits, failed = ProgramSet([program]).run(source, rows)
    if failed:
        raise UnsupportedError(failed[0])
    return hits[:, 0]


class _Compiler:
    """Compiles one rule; collects the inputs and constants its code refers to."""

    def __init__(self, schema: Mapping[str, pl.DataType]) -> None:
        self._schema = schema
        self.inputs: list[Input] = []
        self.constants: list[float] = []

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

    def _load(self, spec: Input, op: int = LOAD) -> Code:
        if spec not in self.inputs:
            self.inputs.append(spec)
        return ((op, self.inputs.index(spec)),)

    # -- leaves -------------------------------------------------------------------------

    def _column(self, name: object) -> Compiled:
        if not isinstance(name, str) or name not in self._schema:
            raise UnsupportedError(f"column {name!r}")
        kind = _kind_of(self._schema[name])
        if kind == "str":  # read only through `column = 'text'` or IS NULL
            return Compiled("str", (), 1, constant=name, is_column=True)
        if kind == "bool":
            return Compiled(kind, self._load(Input("bool", name), LOAD_BOOL), 1)
        return Compiled(kind, self._load(Input("number", name)), 1)

    def _literal(self, body: object) -> Compiled:
        if not isinstance(body, dict) or len(body) != 1:
            raise UnsupportedError("literal")
        ((form, inner),) = body.items()
        if not isinstance(inner, dict) or len(inner) != 1:
            raise UnsupportedError(f"{form} literal")
        ((type_name, raw),) = inner.items()
        if type_name == "Int" and isinstance(raw, int) and abs(raw) < _MAX_EXACT_INT:
            return self._constant("int", float(raw), raw)
        if type_name == "Float" and isinstance(raw, float):
            return self._constant("float", raw, raw)
        if type_name == "Boolean" and isinstance(raw, bool):
            return self._constant("bool", float(raw), raw)
        if type_name == "String" and isinstance(raw, str):
            return Compiled("str", (), 1, constant=raw)
        if type_name == "Decimal" and isinstance(raw, list) and len(raw) == 3:
            value = Fraction(int(raw[0]), 10 ** int(raw[2]))
            return self._constant("decimal", float(value), value)
        raise UnsupportedError(f"literal of type {type_name}")

    def _constant(self, kind: Kind, value: float, literal: object) -> Compiled:
        self.constants.append(value)
        return Compiled(kind, ((CONST, len(self.constants) - 1),), 1, constant=literal)

    # -- operators ----------------------------------------------------------------------

    def _binary_expr(self, body: dict[str, Any]) -> Compiled:
        op = body.get("op")
        left, right = self.node(body.get("left")), self.node(body.get("right"))
        return self._apply(str(op), left, right)

    def _apply(self, op: str, left: Compiled, right: Compiled) -> Compiled:
        if op in ("And", "LogicalAnd", "Or", "LogicalOr"):
            if left.kind != "bool" or right.kind != "bool":
                raise UnsupportedError(f"{op} of {left.kind} and {right.kind}")
            return _binary("bool", AND if "And" in op else OR, left, right)
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
        return _binary("bool", _COMPARISONS[op], left, right)

    def _compare_text(self, op: str, left: Compiled, right: Compiled) -> Compiled:
        """Only `column = 'text'` (either way round, or <>) is done here."""
        column, text = (left, right) if left.is_column else (right, left)
        if (
            op not in ("Eq", "NotEq")
            or column.kind != "str"
            or text.kind != "str"
            or not column.is_column
            or text.is_column
        ):
            raise UnsupportedError(f"{op} on strings other than column = 'text'")
        code = self._load(Input("text", str(column.constant), str(text.constant)), LOAD_BOOL)
        if op == "NotEq":
            code += ((NOT, 0),)
        return Compiled("bool", code, 1)

    def _arithmetic(self, op: str, left: Compiled, right: Compiled) -> Compiled:
        kinds = {left.kind, right.kind}
        if not kinds <= {"int", "float", "decimal"}:
            raise UnsupportedError(f"{op} of {left.kind} and {right.kind}")
        if "decimal" in kinds and kinds != {"decimal", "float"}:
            raise UnsupportedError(f"{op} of a decimal literal with {left.kind} and {right.kind}")
        kind: Kind = "int" if kinds == {"int"} and op != "Div" else "float"
        return _binary(kind, _ARITHMETIC[op], left, right)

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
            return Compiled(arg.kind, (*arg.code, (ABS, 0)), arg.depth)
        if function == "Coalesce" and args:
            return _coalesce(args)
        raise UnsupportedError(f"function {str(function)[:40]}")

    def _boolean_function(self, name: str, args: list[Compiled]) -> Compiled:
        if len(args) != 1 or (args[0].kind == "str" and not args[0].is_column):
            raise UnsupportedError(f"{name} here")
        (arg,) = args
        if name == "Not" and arg.kind == "bool":
            return Compiled("bool", (*arg.code, (NOT, 0)), arg.depth)
        if name in ("IsNull", "IsNotNull"):
            op = IS_NOT_NULL if name == "IsNotNull" else IS_NULL
            code = arg.code
            if arg.kind == "str":  # a string column's nulls
                code = self._load(Input("text", str(arg.constant)), LOAD_BOOL)
            return Compiled("bool", (*code, (op, 0)), arg.depth)
        raise UnsupportedError(f"Boolean function {name}")

    def _cast(self, body: dict[str, Any]) -> Compiled:
        inner = self.node(body.get("expr"))
        if body.get("dtype") == {"Literal": "Boolean"} and inner.kind == "bool":
            return inner  # NOT wraps its operand in a cast to Boolean: a no-op on a Boolean
        raise UnsupportedError(f"CAST to {body.get('dtype')}")


def _binary(kind: Kind, op: int, left: Compiled, right: Compiled) -> Compiled:
    depth = max(left.depth, right.depth + 1)
    return Compiled(kind, (*left.code, *right.code, (op, 0)), depth)


def _coalesce(args: list[Compiled]) -> Compiled:
    kinds = {arg.kind for arg in args}
    if kinds == {"bool"}:
        kind: Kind = "bool"
    elif kinds <= {"int", "float"}:
        kind = "int" if kinds == {"int"} else "float"
    else:
        raise UnsupportedError(f"COALESCE of {sorted(kinds)}")
    code = tuple(instruction for arg in args for instruction in arg.code)
    depth = max(arg.depth + k for k, arg in enumerate(args))
    return Compiled(kind, (*code, (COALESCE, len(args))), depth)


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
