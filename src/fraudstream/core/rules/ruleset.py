"""Compiled rules: checked once against the engine's columns, evaluated as one Polars select.

Compilation turns each enabled rule's SQL text into a Polars expression with `pl.sql_expr` (a
SQL parser, never Python `eval`), then checks that it only names known columns, that it looks
at one transaction at a time (no aggregates, windows or subqueries, whose answer would depend
on what else happens to be in the batch) and that it yields a Boolean. A null answer (a
feature that is unknown) counts as not fired.

Two evaluators: `evaluate(frame)` runs every rule in one Polars `select`; `evaluate_batch`
(the engine's) runs the rules `vector.py` compiles to bytecode (`bytecode.py`) over the engine's
arrays and only the rest through Polars, because Polars' fixed cost per expression would
otherwise dominate small batches.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
import polars as pl

from fraudstream.core.errors import RuleError
from fraudstream.core.events import TRANSACTION_SCHEMA
from fraudstream.core.lists import LIST_FEATURES
from fraudstream.core.rules.spec import Rule, RulesetSpec
from fraudstream.core.rules.vector import (
    ColumnSource,
    ProgramSet,
    RuleProgram,
    UnsupportedError,
    compile_rule,
)

_log = logging.getLogger(__name__)

FIRED_COLUMN: Final = "fired_rules"
"""Name of the `list[str]` series `fired_ids` returns."""

_PanicException: type[BaseException] = pl.exceptions.PanicException

_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_SELECT = re.compile(r"\bselect\b", re.IGNORECASE)

_NOT_ROW_WISE: Final[Mapping[str, str]] = {
    "Agg": "an aggregate function",
    "Len": "COUNT(*)",
    "Over": "a window function (OVER ...)",
    "Window": "a window function",
    "Rolling": "a rolling window",
    "SubPlan": "a subquery",
    "Explode": "UNNEST",
    "Filter": "a filter",
    "Slice": "a slice",
    "Sort": "sorting",
    "SortBy": "sorting",
    "Gather": "a gather",
    "Range": "ROW_NUMBER or a range",
    "Rank": "RANK",
    "Quantile": "a quantile",
    "Correlation": "a correlation or covariance",
    "NullCount": "a null count",
    "Shift": "LAG/LEAD",
    "Unique": "a distinct set",
    "Reverse": "a reversal",
}
"""Expression nodes whose value for one row depends on the other rows of the batch."""

_MAX_MASK_RULES: Final = 63
_MASK_MIN_ROWS: Final = 256


class RuleInputs(ColumnSource, Protocol):
    """A batch as the engine holds it: arrays for compiled rules, a frame on demand for Polars."""

    @property
    def rows(self) -> int: ...

    def frame(self) -> pl.DataFrame:
        """Every column a rule may read (built only when some rule needs Polars)."""
        ...


def engine_columns(
    feature_names: Iterable[str],
    boolean_features: Iterable[str] = (),
    count_features: Iterable[str] = (),
) -> dict[str, pl.DataType]:
    """Every column a rule may name, with its type, as the engine's scored frame holds them.

    The transaction columns, `card_present` (Boolean; null when the channel is unknown), the
    features (names in `count_features` are Int64, in `boolean_features` Boolean, others
    Float64) and the list features (`card_on_deny_list`, ...: Boolean, never null).
    """
    booleans = set(boolean_features)
    counts = set(count_features)
    columns: dict[str, pl.DataType] = dict(TRANSACTION_SCHEMA)
    columns["card_present"] = pl.Boolean()
    for name in feature_names:
        if name in counts:
            columns[name] = pl.Int64()
        elif name in booleans:
            columns[name] = pl.Boolean()
        else:
            columns[name] = pl.Float64()
    columns.update(dict.fromkeys(LIST_FEATURES, pl.Boolean()))
    return columns


def fired_ids(hits: pl.DataFrame, rule_ids: Sequence[str] | None = None) -> pl.Series:
    """Per row, the ids of the rules that fired (a `list[str]`), in the order of `rule_ids`.

    `hits` is what `CompiledRuleset.evaluate` returns; `rule_ids` defaults to its columns.
    """
    ids = tuple(hits.columns if rule_ids is None else rule_ids)
    return _FiredIds(ids)(hits)


class _FiredIds:
    """Builds the `list[str]` of fired rule ids per row, two ways depending on the batch size.

    Small batches: `concat_list` of `when(hit).then(id)`, minus the nulls. Large ones (where
    building a list per row per rule is slow): each row's hits packed into a bit mask, one list
    built per distinct mask (few: most rows fire nothing), then gathered per row.
    """

    __slots__ = ("_ids", "_lists_expr", "_mask_expr")

    def __init__(self, rule_ids: Sequence[str]) -> None:
        self._ids = tuple(rule_ids)
        self._lists_expr: pl.Expr | None = None
        self._mask_expr: pl.Expr | None = None
        if self._ids:
            parts = [pl.when(pl.col(i)).then(pl.lit(i, dtype=pl.String())) for i in self._ids]
            self._lists_expr = pl.concat_list(parts).list.drop_nulls().alias(FIRED_COLUMN)
        if 0 < len(self._ids) <= _MAX_MASK_RULES:
            bits = [
                pl.col(rule_id).cast(pl.UInt64()) * (1 << position)
                for position, rule_id in enumerate(self._ids)
            ]
            self._mask_expr = pl.sum_horizontal(bits).alias("mask")

    def __call__(self, hits: pl.DataFrame) -> pl.Series:
        if self._lists_expr is None:
            return pl.Series(FIRED_COLUMN, [[]] * hits.height, dtype=pl.List(pl.String()))
        if self._mask_expr is None or hits.height < _MASK_MIN_ROWS:
            return hits.select(self._lists_expr).to_series()
        masks = hits.select(self._mask_expr).to_series()
        distinct = masks.unique().sort()
        lists = [
            [rule_id for position, rule_id in enumerate(self._ids) if mask >> position & 1]
            for mask in distinct.to_list()
        ]
        table = pl.Series(FIRED_COLUMN, lists, dtype=pl.List(pl.String()))
        return table.gather(distinct.search_sorted(masks))


class CompiledRuleset:
    """The enabled rules of a spec as ready-made Polars expressions. Immutable once built.

    The spec's shadow rules are compiled apart, as `shadow`: the engine evaluates them beside
    the live rules and records their hits, but they never move a score or an action.
    """

    __slots__ = (
        "_columns_used", "_compiled", "_exprs", "_fired", "_in_polars", "_programs_set",
        "_rules", "_shadow", "_spec",
    )  # fmt: skip

    def __init__(
        self,
        spec: RulesetSpec,
        compiled: Sequence[tuple[Rule, pl.Expr, RuleProgram | None]],
        columns_used: frozenset[str],
        shadow: CompiledRuleset | None = None,
    ) -> None:
        self._spec = spec
        self._shadow = shadow
        self._rules = tuple(rule for rule, _, _ in compiled)
        self._exprs = tuple(expr for _, expr, _ in compiled)
        programs = [program for _, _, program in compiled]
        self._columns_used = columns_used
        self._fired = _FiredIds([rule.id for rule in self._rules])
        self._compiled = [j for j, program in enumerate(programs) if program is not None]
        self._in_polars = [j for j, program in enumerate(programs) if program is None]
        self._programs_set = ProgramSet([p for p in programs if p is not None])

    @property
    def spec(self) -> RulesetSpec:
        return self._spec

    @property
    def version(self) -> str:
        return self._spec.version

    @property
    def shadow(self) -> CompiledRuleset | None:
        """The shadow rules, or None when the spec has none."""
        return self._shadow

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The enabled rules, in file order (the columns of `evaluate`'s result)."""
        return self._rules

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(rule.id for rule in self._rules)

    @property
    def columns_used(self) -> frozenset[str]:
        """Every column some enabled rule reads."""
        return self._columns_used

    def __repr__(self) -> str:
        return f"CompiledRuleset(version={self.version!r}, rules={list(self.rule_ids)!r})"

    def evaluate(self, frame: pl.DataFrame) -> pl.DataFrame:
        """One Boolean column per enabled rule (named by its id), one row per input row.

        A rule that fails on this batch's data (say a strict CAST of a bad value) is logged and
        counts as not fired; the other rules still run.
        """
        hits, errors = self.evaluate_with_errors(frame)
        for rule_id, reason in errors.items():
            _log.warning("rule %r failed on a batch of %d rows: %s", rule_id, frame.height, reason)
        return hits

    def evaluate_with_errors(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, str]]:
        """Like `evaluate`, and also the rules that failed at run time with the reason."""
        if not self._exprs:
            return pl.DataFrame(height=frame.height), {}
        self._check_frame(frame)
        try:
            return frame.select(self._exprs), {}
        except (Exception, _PanicException):
            return self._evaluate_one_by_one(frame)

    @property
    def polars_rule_ids(self) -> tuple[str, ...]:
        """The rules outside the compiled subset, which `evaluate_batch` hands to Polars."""
        return tuple(self._rules[j].id for j in self._in_polars)

    def evaluate_batch(self, inputs: RuleInputs) -> tuple[npt.NDArray[np.bool_], dict[str, str]]:
        """Hits as a (rows, rules) Boolean matrix, and the rules that failed with the reason.

        Same answers as `evaluate` (a failed rule has not fired); compiled bytecode where it
        can, Polars for the rest.
        """
        rows = inputs.rows
        compiled_hits, failed = self._programs_set.run(inputs, rows)
        if not self._in_polars:
            hits = compiled_hits
        else:
            hits = np.zeros((rows, len(self._rules)), dtype=np.bool_)
            hits[:, self._compiled] = compiled_hits
        errors = {self._rules[self._compiled[k]].id: reason for k, reason in failed.items()}
        left_to_polars = self._in_polars
        if left_to_polars:
            frame = inputs.frame()
            self._check_frame(frame)
            try:
                selected = frame.select([self._exprs[j] for j in left_to_polars])
                for k, j in enumerate(left_to_polars):
                    hits[:, j] = selected.to_series(k).to_numpy()
            except (Exception, _PanicException):
                for j in left_to_polars:  # again one by one, to tell which rule failed
                    try:
                        hits[:, j] = frame.select(self._exprs[j]).to_series().to_numpy()
                    except (Exception, _PanicException) as error:
                        errors[self._rules[j].id] = _polars_message(error)
        for rule_id, reason in errors.items():
            _log.warning("rule %r failed on a batch of %d rows: %s", rule_id, rows, reason)
        return hits, errors

    def fired_ids(self, hits: pl.DataFrame) -> pl.Series:
        """Per row, the ids of the rules that fired, in rule order (for reason codes)."""
        return self._fired(hits)

    def _check_frame(self, frame: pl.DataFrame) -> None:
        missing = self._columns_used.difference(frame.columns)
        if not missing:
            return
        for rule, expr in zip(self._rules, self._exprs, strict=True):
            absent = sorted(set(expr.meta.root_names()) & missing)
            if absent:
                raise RuleError(rule.id, f"the frame has no column {absent[0]!r}")

    def _evaluate_one_by_one(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, str]]:
        columns: list[pl.Series] = []
        errors: dict[str, str] = {}
        for rule, expr in zip(self._rules, self._exprs, strict=True):
            try:
                columns.append(frame.select(expr).to_series())
            except (Exception, _PanicException) as error:
                errors[rule.id] = _polars_message(error)
                columns.append(pl.Series(rule.id, [False] * frame.height, dtype=pl.Boolean()))
        return pl.DataFrame(columns), errors


def compile_ruleset(
    spec: RulesetSpec, available_columns: Mapping[str, pl.DataType]
) -> CompiledRuleset:
    """Compile the enabled rules of `spec` (its shadow rules apart) against the columns they
    may read.

    Raises `RuleError` naming the first rule that cannot be parsed, names an unknown column,
    depends on other rows, or does not yield a Boolean. Disabled rules are not compiled.
    """
    schema = dict(available_columns)
    shadow = None
    if spec.shadow_rules:
        shadow = _compiled(spec, spec.shadow_rules, schema)
    return _compiled(spec, spec.enabled_rules, schema, shadow)


def _compiled(
    spec: RulesetSpec,
    rules: tuple[Rule, ...],
    schema: dict[str, pl.DataType],
    shadow: CompiledRuleset | None = None,
) -> CompiledRuleset:
    empty = pl.DataFrame(schema=schema)
    nulls = empty.clear(2)
    compiled: list[tuple[Rule, pl.Expr, RuleProgram | None]] = []
    used: set[str] = set()
    for rule in rules:
        expr = _compile_rule(rule, schema, empty, nulls)
        used.update(expr.meta.root_names())
        compiled.append((rule, expr, _numpy_program(rule, schema)))
    return CompiledRuleset(spec, compiled, frozenset(used), shadow)


def _numpy_program(rule: Rule, schema: Mapping[str, pl.DataType]) -> RuleProgram | None:
    """The rule as bytecode, or None when it needs Polars (see `vector.py`)."""
    try:
        return compile_rule(pl.sql_expr(rule.expression), schema)
    except UnsupportedError as reason:
        _log.debug("rule %r runs in Polars: %s", rule.id, reason)
        return None


def _compile_rule(
    rule: Rule, schema: Mapping[str, pl.DataType], empty: pl.DataFrame, nulls: pl.DataFrame
) -> pl.Expr:
    text = rule.expression
    _check_text(rule.id, text)
    try:
        expr = pl.sql_expr(text)
    except (Exception, _PanicException) as error:
        raise RuleError(
            rule.id, f"cannot parse expression {text!r}: {_polars_message(error)}"
        ) from None
    roots = expr.meta.root_names()
    for name in roots:
        if name not in schema:
            raise RuleError(rule.id, f"unknown column {name!r}{_suggestion(name, schema)}")
    reason = _batch_dependence(expr)
    if reason is not None:
        raise RuleError(
            rule.id,
            f"expression uses {reason}; a rule must look at one transaction at a time "
            "(put aggregates in features)",
        )
    if not roots:
        raise RuleError(rule.id, "expression names no column, so it would be a constant")
    expr = expr.alias(rule.id)
    try:
        on_empty = empty.select(expr)
        on_nulls = nulls.select(expr)
    except (Exception, _PanicException) as error:
        raise RuleError(rule.id, f"invalid expression {text!r}: {_polars_message(error)}") from None
    dtype = on_empty.schema[rule.id]
    if dtype != pl.Boolean:
        raise RuleError(rule.id, f"expression must be boolean, got {dtype}")
    if on_empty.height != 0 or on_nulls.height != nulls.height:
        raise RuleError(rule.id, "expression must give one value per transaction")
    return expr.fill_null(False)


def _check_text(rule_id: str, text: str) -> None:
    """Refuse what a boolean expression never needs: statements, comments, subqueries."""
    bare = _QUOTED.sub("''", text)
    if ";" in bare:
        raise RuleError(rule_id, "expression must not contain ';' (one expression, no statements)")
    if "--" in bare or "/*" in bare:
        raise RuleError(rule_id, "expression must not contain SQL comments ('--' or '/*')")
    if _SELECT.search(bare):
        raise RuleError(rule_id, "expression must not contain a subquery (SELECT)")


def _batch_dependence(expr: pl.Expr) -> str | None:
    try:
        tree = json.loads(expr.meta.serialize(format="json"))
    except (Exception, _PanicException):  # not serialisable: rely on the dry-run checks
        return None
    return _find_not_row_wise(tree)


def _find_not_row_wise(node: object) -> str | None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _NOT_ROW_WISE:
                return _NOT_ROW_WISE[key]
            if key in ("Column", "Literal"):
                continue
            found = _find_not_row_wise(value)
            if found is not None:
                return found
    elif isinstance(node, list):
        for item in node:
            found = _find_not_row_wise(item)
            if found is not None:
                return found
    elif isinstance(node, str) and node in _NOT_ROW_WISE:
        return _NOT_ROW_WISE[node]
    return None


def _suggestion(name: str, schema: Mapping[str, pl.DataType]) -> str:
    close = difflib.get_close_matches(name, list(schema), n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(name.lower(), list(schema), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _polars_message(error: BaseException) -> str:
    """The first paragraph of a Polars error, on one line."""
    text = str(error).strip()
    first = text.split("\n\n", 1)[0]
    return " ".join(first.split()) or type(error).__name__
