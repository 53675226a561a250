"""Which flagged decisions become alerts, how severe they are, and which routes carry them.

Pure: a scored frame in, one row per (flagged transaction, matching route) out. The PostgreSQL
sink stores these rows in the `alerts` outbox in the same database transaction as the decisions,
and the dispatcher delivers them; routing is configuration (`AlertRoute`), never code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

SEVERITIES = ("low", "medium", "high", "critical")
"""In rising order: a route's `min_severity` admits its own level and every one above it."""

ALERT_COLUMNS = (
    "transaction_id", "route", "channel", "card_ref", "action", "severity", "score", "event_time",
)  # fmt: skip
"""The columns `route_alerts` returns, in the outbox's order."""


@dataclass(frozen=True, slots=True)
class AlertRoute:
    """Flagged decisions whose action is in `actions`, whose severity is at least
    `min_severity` and (when `rules` is not empty) where one of `rules` fired, go to
    `channel` under this route's `name`."""

    name: str
    channel: str
    actions: frozenset[str] = frozenset({"review", "decline"})
    min_severity: str = "low"
    rules: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.min_severity not in SEVERITIES:
            raise ValueError(f"route {self.name}: min_severity must be one of {SEVERITIES}")


@dataclass(frozen=True, slots=True)
class Severity:
    """Score thresholds: a decline at `critical_score` or above is critical, any other decline
    high; a review at `medium_score` or above is medium, any other review low."""

    critical_score: float = 0.95
    medium_score: float = 0.5

    def expression(self) -> pl.Expr:
        action, score = pl.col("action"), pl.col("score")
        return (
            pl.when((action == "decline") & (score >= self.critical_score))
            .then(pl.lit("critical"))
            .when(action == "decline")
            .then(pl.lit("high"))
            .when(score >= self.medium_score)
            .then(pl.lit("medium"))
            .otherwise(pl.lit("low"))
        )


@dataclass(frozen=True, slots=True)
class AlertRouting:
    """The configured routes and severity thresholds, applied to scored frames."""

    routes: tuple[AlertRoute, ...]
    severity: Severity = Severity()

    def alerts(self, frame: pl.DataFrame) -> pl.DataFrame:
        return route_alerts(frame, self.routes, self.severity)


def route_alerts(
    frame: pl.DataFrame, routes: Sequence[AlertRoute], severity: Severity
) -> pl.DataFrame:
    """One row per flagged transaction of `frame` and route that takes it (`ALERT_COLUMNS`).

    `frame` holds the engine's outcome columns (`transaction_id`, `card_ref`, `action`,
    `score`, `is_flagged`, `rules_fired`, `timestamp`).
    """
    flagged = frame.lazy().filter(
        pl.col("is_flagged") & pl.col("action").is_in(["review", "decline"])
    )
    flagged = flagged.select(
        "transaction_id",
        "card_ref",
        "action",
        severity.expression().alias("severity"),
        pl.col("score").cast(pl.Float64),
        pl.col("timestamp").alias("event_time"),
        "rules_fired",
    ).with_columns(
        pl.col("severity").replace_strict(SEVERITIES, range(len(SEVERITIES))).alias("_rank")
    )
    parts = [_taken_by(flagged, route) for route in routes]
    if not parts:
        return _empty(frame)
    return pl.concat(parts).select(ALERT_COLUMNS).collect()


def _taken_by(flagged: pl.LazyFrame, route: AlertRoute) -> pl.LazyFrame:
    wanted = pl.col("action").is_in(sorted(route.actions)) & (
        pl.col("_rank") >= SEVERITIES.index(route.min_severity)
    )
    if route.rules:
        fired = pl.col("rules_fired").list.eval(pl.element().is_in(sorted(route.rules))).list.any()
        wanted = wanted & fired
    return flagged.filter(wanted).with_columns(
        pl.lit(route.name).alias("route"), pl.lit(route.channel).alias("channel")
    )


def _empty(frame: pl.DataFrame) -> pl.DataFrame:
    schema: dict[str, pl.DataType] = dict.fromkeys(ALERT_COLUMNS, pl.String())
    schema["score"] = pl.Float64()
    schema["event_time"] = frame.schema.get("timestamp") or pl.Datetime("us", "UTC")
    return pl.DataFrame(schema=schema)
