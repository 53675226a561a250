"""The compiled rule evaluator (whole batches and batches of one row) agrees with Polars on
random expressions over random data."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fraudstream.core.engine import available_columns
from fraudstream.core.features import FeatureConfig
from fraudstream.core.rules import load_default_ruleset
from fraudstream.core.rules.vector import UnsupportedError, compile_rule, fired

SCHEMA: dict[str, pl.DataType] = {
    "i1": pl.Int64(),
    "i2": pl.Int64(),
    "f1": pl.Float64(),
    "f2": pl.Float64(),
    "b1": pl.Boolean(),
    "b2": pl.Boolean(),
    "s1": pl.String(),
}


class FrameSource:
    """Reads columns the way the engine hands them over: floats with NaN for null."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame

    def number(self, column: str) -> np.ndarray:
        series = self.frame.get_column(column).cast(pl.Float64)
        return series.fill_null(float("nan")).to_numpy()

    def equals(self, column: str, text: str) -> tuple[np.ndarray, np.ndarray]:
        series = self.frame.get_column(column)
        hit = (series == text).fill_null(False).to_numpy()
        return hit, series.is_not_null().to_numpy()


def _polars_hits(frame: pl.DataFrame, text: str) -> np.ndarray | None:
    try:
        result = frame.select(pl.sql_expr(text).fill_null(False).alias("r")).to_series()
    except Exception:  # Polars refuses it: not a case
        return None
    if result.dtype != pl.Boolean or result.len() != frame.height:
        return None
    return result.to_numpy()


def _compiled_hits(frame: pl.DataFrame, text: str, *, row_by_row: bool = False) -> np.ndarray:
    program = compile_rule(pl.sql_expr(text), SCHEMA)
    if row_by_row:
        rows = [fired(program, FrameSource(frame.slice(r, 1)), 1) for r in range(frame.height)]
        return np.concatenate(rows)
    return fired(program, FrameSource(frame), frame.height)


# -- random data ------------------------------------------------------------------------------

FLOATS = st.one_of(
    st.none(),
    st.sampled_from([0.0, -0.0, 0.1, 0.3, 2.5, -2.5, 5.0, 1e300, -1e300, math.inf, -math.inf]),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
)
INTS = st.one_of(st.none(), st.integers(-1000, 1000), st.sampled_from([0, 1, 3, 5, -3]))
BOOLS = st.one_of(st.none(), st.booleans())
TEXTS = st.one_of(st.none(), st.sampled_from(["US", "GB", "", "us"]))


@st.composite
def frames(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(1, 12))
    columns = {
        "i1": draw(st.lists(INTS, min_size=n, max_size=n)),
        "i2": draw(st.lists(INTS, min_size=n, max_size=n)),
        "f1": draw(st.lists(FLOATS, min_size=n, max_size=n)),
        "f2": draw(st.lists(FLOATS, min_size=n, max_size=n)),
        "b1": draw(st.lists(BOOLS, min_size=n, max_size=n)),
        "b2": draw(st.lists(BOOLS, min_size=n, max_size=n)),
        "s1": draw(st.lists(TEXTS, min_size=n, max_size=n)),
    }
    return pl.DataFrame(columns, schema=SCHEMA)


# -- random expressions -----------------------------------------------------------------------

NUMBER_LEAVES = st.sampled_from(
    ["i1", "i2", "f1", "f2", "0", "1", "5", "-3", "2.5", "0.1", "0.3", "-0.5", "1e3"]
)


def numbers() -> st.SearchStrategy[str]:
    return st.recursive(
        NUMBER_LEAVES,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
            inner.map(lambda x: f"abs({x})"),
            st.tuples(inner, inner).map(lambda t: f"coalesce({t[0]}, {t[1]})"),
        ),
        max_leaves=4,
    )


def booleans() -> st.SearchStrategy[str]:
    comparison = st.tuples(
        numbers(), st.sampled_from(["<", "<=", ">", ">=", "=", "<>", "!="]), numbers()
    ).map(" ".join)
    leaves = st.one_of(
        st.sampled_from(
            ["b1", "b2", "s1 = 'US'", "s1 <> 'GB'", "'US' = s1", "s1 IS NULL", "b1 = b2"]
        ),
        comparison,
        numbers().map(lambda x: f"{x} IS NOT NULL"),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            inner.map(lambda x: f"NOT ({x})"),
            st.tuples(inner, st.sampled_from(["AND", "OR"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
        ),
        max_leaves=5,
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=booleans(), frame=frames())
def test_compiled_and_polars_agree(text: str, frame: pl.DataFrame) -> None:
    expected = _polars_hits(frame, text)
    assume(expected is not None)
    try:
        got = _compiled_hits(frame, text)
    except UnsupportedError:
        assume(False)
        return
    assert got.tolist() == expected.tolist(), text
    one_by_one = _compiled_hits(frame, text, row_by_row=True)
    assert one_by_one.tolist() == expected.tolist(), f"row by row: {text}"


@pytest.mark.parametrize(
    "text",
    [
        "i1 > 0.1",
        "f1 * 0.1 > 0.3",
        "(f1 - f1) = (f2 - f2)",
        "f1 / 0 > 1",
        "NOT b1 AND i1 > 2",
        "b1 OR f1 > 3",
        "coalesce(f1, i1, 0) >= 2.5",
        "s1 = 'US' OR s1 IS NULL",
    ],
)
def test_edge_cases_agree(text: str) -> None:
    frame = pl.DataFrame(
        {
            "i1": [3, None, 0, 1, -3],
            "i2": [0, 1, None, 2, 0],
            "f1": [0.1, None, math.inf, 3.0, 0.0],
            "f2": [None, math.inf, 1.0, 0.1, -0.0],
            "b1": [True, None, False, None, True],
            "b2": [None, True, False, True, False],
            "s1": ["US", None, "GB", "us", ""],
        },
        schema=SCHEMA,
    )
    expected = _polars_hits(frame, text)
    assert expected is not None
    assert _compiled_hits(frame, text).tolist() == expected.tolist()
    assert _compiled_hits(frame, text, row_by_row=True).tolist() == expected.tolist()


@pytest.mark.parametrize(
    "text",
    [
        "i1 * 0.1 > 0.3",  # decimal arithmetic on integers is exact in Polars, not in floats
        "i1 > 2.99999999999999999999",  # rounds to 3.0 as a float: the answer would change
        "s1 LIKE 'U%'",
        "s1 IN ('US', 'GB')",
        "i1 % 2 = 1",
        "CAST(f1 AS INT) = 1",
        "s1 = s1",
    ],
)
def test_outside_the_subset_is_left_to_polars(text: str) -> None:
    with pytest.raises(UnsupportedError):
        compile_rule(pl.sql_expr(text), SCHEMA)


def test_every_default_rule_runs_without_polars() -> None:
    schema = available_columns(FeatureConfig())
    for rule in load_default_ruleset().rules:
        compile_rule(pl.sql_expr(rule.expression), schema)
