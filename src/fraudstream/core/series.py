"""Polars columns from Python lists, at a small batch's cost.

The public `pl.Series(name, values, dtype)` spends 5-9 µs per call in Python before Polars'
Rust constructor runs (it inspects the values and compares the dtype against each kind it
knows); the Rust constructor itself takes about 1 µs for a list of 16. The scoring API builds
a 16-column frame per batch of about ten requests, so that dispatch was most of the frame's cost
(140 µs of 160). Here the Rust constructors are called directly for the few dtypes the
transaction schema uses.

They are Polars internals, so they are used only if they are importable and build, on a probe,
exactly what the public constructors build; otherwise every call takes the public path. Either
way the frames are the same.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

_Constructor = Callable[[str, Sequence[Any], bool], Any]


_INTERNAL_MODULES = ("polars._plr", "polars.polars")
"""Where Polars' compiled classes live (2.x, then 1.x)."""


def _internals() -> tuple[dict[pl.DataType, _Constructor], Callable[[list[Any]], Any]] | None:
    for module_name in _INTERNAL_MODULES:
        try:
            module = importlib.import_module(module_name)
            py_series, py_data_frame = module.PySeries, module.PyDataFrame
            constructors = {
                pl.String(): py_series.new_str,
                pl.Float64(): py_series.new_opt_f64,
                pl.Int64(): py_series.new_opt_i64,
                pl.Boolean(): py_series.new_opt_bool,
            }
        except (ImportError, AttributeError):
            continue
        return constructors, py_data_frame
    return None


def _public_series(name: str, values: Sequence[Any], dtype: pl.DataType) -> pl.Series:
    return pl.Series(name, values, dtype)


def _public_frame(columns: list[pl.Series]) -> pl.DataFrame:
    return pl.DataFrame(columns)


class _Builders:
    """The constructors in use: Polars' own, once a probe showed they agree with the public
    ones, else the public ones."""

    def __init__(self) -> None:
        self.series: Callable[[str, Sequence[Any], pl.DataType], pl.Series] = _public_series
        self.frame: Callable[[list[pl.Series]], pl.DataFrame] = _public_frame
        self.direct = False
        internals = _internals()
        if internals is not None:
            self._try(*internals)

    def _try(
        self, constructors: dict[pl.DataType, _Constructor], data_frame: Callable[[list[Any]], Any]
    ) -> None:
        def series(name: str, values: Sequence[Any], dtype: pl.DataType) -> pl.Series:
            construct = constructors.get(dtype)
            if construct is None:
                return _public_series(name, values, dtype)
            return pl.Series._from_pyseries(construct(name, values, False))

        def frame(columns: list[pl.Series]) -> pl.DataFrame:
            return pl.DataFrame._from_pydf(data_frame([c._s for c in columns]))

        probe: dict[pl.DataType, list[Any]] = {
            pl.String(): ["a", None, "é"],
            pl.Float64(): [1.5, None, -0.0],
            pl.Int64(): [1, None, -(2**62)],
            pl.Boolean(): [True, None, False],
        }
        try:
            built = frame([series(f"c{i}", v, t) for i, (t, v) in enumerate(probe.items())])
        except Exception:  # any failure of the internals means: not these
            return
        public = _public_frame(
            [_public_series(f"c{i}", v, t) for i, (t, v) in enumerate(probe.items())]
        )
        if built.schema == public.schema and built.equals(public):
            self.series, self.frame, self.direct = series, frame, True


BUILDERS = _Builders()


def typed_series(name: str, values: Sequence[Any], dtype: pl.DataType) -> pl.Series:
    """`pl.Series(name, values, dtype)` for a list of Python values (None for null)."""
    return BUILDERS.series(name, values, dtype)


def frame_of(columns: list[pl.Series]) -> pl.DataFrame:
    """`pl.DataFrame(columns)` for equal-length series with distinct names."""
    return BUILDERS.frame(columns)
