"""Grafana's macros and template variables, expanded the way Grafana expands them, so tests
can run a dashboard's SQL on a real database.

Grafana's front end first replaces template variables; its PostgreSQL data source then expands
the `$__name(args)` macros (pkg/tsdb/grafana-postgresql-datasource/macros.go in Grafana). This
reproduces both for what a dashboard here may use and refuses anything else, so a query that
would fail in Grafana fails in the test:

    $__timeFilter(col)               col BETWEEN '<from>' AND '<to>'   (RFC 3339, UTC)
    $__timeFrom(), $__timeTo()       '<from>', '<to>'
    $__timeGroup(col, '1m'[, fill])  floor(extract(epoch from col)/60)*60   (epoch seconds;
                                     fill: a number, NULL or previous, applied by Grafana)
    $__timeGroupAlias(...)           the same AS "time" (also $__timeGroup right before a
                                     comma, as Grafana does for pre-5.3 dashboards)
    $__time(col), $__timeEpoch(col)  col AS "time", extract(epoch from col) as "time"
    $__interval, $__interval_ms      the panel's interval (here 1m) as `1m` and `60000`
    $var, ${var}, [[var]],           a template variable's values: for a multi-value or
    ${var:sqlstring|singlequote|     include-All variable each value quoted as an SQL literal
          csv|raw|doublequote}       and joined with commas (All: every value its query
                                     returned, or the variable's allValue as it is)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime


class GrafanaQueryError(ValueError):
    """A query Grafana could not expand: an unknown macro or variable, bad arguments."""


@dataclass(frozen=True)
class Variable:
    """A template variable as selected: its values (All: every value), whether it takes
    several (then each is quoted by default), and a custom All value, if it has one."""

    values: tuple[str, ...]
    multi: bool
    all_value: str | None = None


INTERVAL_S = 60
_MACRO = re.compile(r"\$(\w+)\(([^)]*)\)")  # Grafana's own pattern: no ')' inside the call
_VARIABLE = re.compile(
    r"\$\{(?P<braced>\w+)(?::(?P<format>\w+))?\}"
    r"|\[\[(?P<bracketed>\w+)(?::(?P<bformat>\w+))?\]\]"
    r"|\$(?P<plain>\w+)\b(?!\()"
)
_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _grafana_time(moment: datetime) -> str:
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return f"{text}Z"


def _interval_s(text: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", text.strip().strip("'"))
    if match is None:
        raise GrafanaQueryError(f"not an interval: {text}")
    return int(match.group(1)) * _UNITS_S[match.group(2)]


def _number(value: float) -> str:
    return f"{value:g}"  # as Go's %v prints a float64: 60, 0.5


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _format(name: str, variable: Variable, style: str | None) -> str:
    if variable.all_value is not None:
        return variable.all_value  # a custom "All" value goes in as it is
    values = list(variable.values)
    if not values:
        raise GrafanaQueryError(f"variable ${name} has no values")
    if style is None:
        style = "sqlstring" if variable.multi else "raw"
    formats = {
        "sqlstring": lambda: ",".join(map(_literal, values)),
        "singlequote": lambda: ",".join(map(_literal, values)),
        "doublequote": lambda: ",".join('"' + v.replace('"', '\\"') + '"' for v in values),
        "csv": lambda: ",".join(values),
        "raw": lambda: ",".join(values),
    }
    if style not in formats:
        raise GrafanaQueryError(f"unknown format {style!r} of variable ${name}")
    return formats[style]()


def _expand_variables(query: str, variables: Mapping[str, Variable]) -> str:
    builtins = {"__interval": f"{INTERVAL_S // 60}m", "__interval_ms": str(INTERVAL_S * 1000)}

    def replace(match: re.Match[str]) -> str:
        name = match["braced"] or match["bracketed"] or match["plain"]
        style = match["format"] or match["bformat"]
        if name in builtins and style is None:
            return builtins[name]
        if name.startswith("__"):
            raise GrafanaQueryError(f"unknown built-in variable ${name}")
        if name not in variables:
            raise GrafanaQueryError(f"unknown template variable ${name}")
        return _format(name, variables[name], style)

    return _VARIABLE.sub(replace, query)


def _time_group(column: str, args: list[str]) -> str:
    if len(args) not in (2, 3):
        raise GrafanaQueryError("$__timeGroup takes a column, an interval and a fill")
    if len(args) == 3 and not re.fullmatch(r"(?i)null|previous|-?\d+(\.\d+)?", args[2]):
        raise GrafanaQueryError(f"$__timeGroup: bad fill value {args[2]}")
    seconds = _number(_interval_s(args[1]))
    return f"floor(extract(epoch from {column})/{seconds})*{seconds}"


_MACROS: dict[str, Callable[[str, list[str], str, str], str]] = {
    # name -> (column, all arguments, from, to) -> SQL
    "__time": lambda column, _, __, ___: f'{column} AS "time"',
    "__timeEpoch": lambda column, _, __, ___: f'extract(epoch from {column}) as "time"',
    "__timeFilter": lambda column, _, start, end: f"{column} BETWEEN '{start}' AND '{end}'",
    "__timeFrom": lambda _, __, start, ___: f"'{start}'",
    "__timeTo": lambda _, __, ___, end: f"'{end}'",
    "__timeGroup": lambda column, args, _, __: _time_group(column, args),
    "__timeGroupAlias": lambda column, args, _, __: _time_group(column, args) + ' AS "time"',
}
_NEEDS_COLUMN = {"__time", "__timeEpoch", "__timeFilter", "__timeGroup", "__timeGroupAlias"}


def _macro(name: str, args: list[str], start: datetime, end: datetime) -> str:
    if name not in _MACROS:
        raise GrafanaQueryError(f"unknown macro ${name}")
    column = args[0]
    if name in _NEEDS_COLUMN and not column:
        raise GrafanaQueryError(f"${name} needs a column")
    return _MACROS[name](column, args, _grafana_time(start), _grafana_time(end))


def expand(query: str, start: datetime, end: datetime, variables: Mapping[str, Variable]) -> str:
    """`query` as Grafana's PostgreSQL data source sends it for the range `start`..`end`."""
    query = _expand_variables(query, variables)

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "__timeGroup" and query[match.end() : match.end() + 1] == ",":
            name = "__timeGroupAlias"
        args = [arg.strip() for arg in match.group(2).split(",")]
        return _macro(name, args, start, end)

    expanded = _MACRO.sub(replace, query)
    left = re.search(r"\$\{?\w+|\[\[\w+", expanded)
    if left is not None:
        raise GrafanaQueryError(f"not expanded: {left.group(0)}")
    return expanded
