"""The figures of a period report, each from one parameterised SQL query over the pipeline's tables.

Why SQL and not a Polars scan of the rows: a period can hold millions of transactions, and the
database already has them indexed by `event_time`; only the aggregates travel. Every query
selects by event time in the half-open period [start, end), alerts by their transaction's event
time (`alerts.event_time`), so the alert figures describe the same transactions as the others.
All queries run in one read-only REPEATABLE READ transaction: one snapshot, so the figures add
up even while workers keep writing. The queries take any `Scope` (a condition with its
parameters) where they can: the dashboard reuses them with its filters on decision time.

Ties are broken by id in byte order (`COLLATE "C"`), the same whatever the database's locale.
Rates are null, never a division by zero, when there is nothing to divide: an empty period, a
rule none of whose hits is labelled (precision unknown, not 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, LiteralString, Protocol

import polars as pl
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

HOURLY_UP_TO: Final = timedelta(days=2)
"""Periods up to this long get an hourly series, longer ones a daily one."""
SCORE_BINS: Final = 20

_BIN: Final = "least(greatest(floor({} * %(bins)s::int), 0), %(bins)s::int - 1)::int"
_COUNT: Final = pl.Int64()
_RATE: Final = pl.Float64()
_ACTIONS: Final = ("approve", "review", "decline")


class Scope(Protocol):
    """Which transactions a figure counts: a condition on `transactions` and its parameters.

    A report's `Period` is one; the dashboard's filters (decision time, action, rule,
    merchant) are another, so both read their figures with the same queries. `alias` is the
    table's alias in the query (`t`), or None for bare column names."""

    def condition(self, alias: str | None) -> sql.Composable: ...

    def params(self, **more: Any) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Period:
    """[start, end) in event time; both timezone-aware."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("a report period needs timezone-aware instants")
        if self.start >= self.end:
            raise ValueError(f"empty period: {self.start} is not before {self.end}")

    @property
    def step_hours(self) -> int:
        """The series' bucket: 1 hour for short periods, else 24 hours (UTC days)."""
        return 1 if self.end - self.start <= HOURLY_UP_TO else 24

    def condition(self, alias: str | None) -> sql.Composable:
        column = sql.Identifier(alias, "event_time") if alias else sql.Identifier("event_time")
        return sql.SQL("{column} >= %(start)s AND {column} < %(end)s").format(column=column)

    def params(self, **more: Any) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, **more}


@dataclass(frozen=True, slots=True)
class Headline:
    """Counts over the whole period; `labelled` are the transactions with a label."""

    transactions: int
    cards: int
    flagged: int
    labelled: int
    labelled_fraud: int

    @property
    def flag_rate(self) -> float | None:
        return self.flagged / self.transactions if self.transactions else None

    @property
    def fraud_rate(self) -> float | None:
        """Fraud among labelled transactions (unlabelled ones are not assumed legitimate)."""
        return self.labelled_fraud / self.labelled if self.labelled else None


@dataclass(frozen=True, slots=True)
class Report:
    """Everything a rendering needs; each frame is one section (and one CSV file)."""

    period: Period
    top: int
    headline: Headline
    amounts: pl.DataFrame
    series: pl.DataFrame
    actions: pl.DataFrame
    rules: pl.DataFrame
    merchants: pl.DataFrame
    countries: pl.DataFrame
    alerts: pl.DataFrame
    scores: pl.DataFrame
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def empty(self) -> bool:
        return self.headline.transactions == 0

    def summary(self) -> pl.DataFrame:
        """The headline as one row, with the period, as the summary CSV holds it."""
        head = self.headline
        return pl.DataFrame(
            {
                "period_start": [self.period.start],
                "period_end": [self.period.end],
                "transactions": [head.transactions],
                "cards": [head.cards],
                "flagged": [head.flagged],
                "flag_rate": [head.flag_rate],
                "labelled": [head.labelled],
                "labelled_fraud": [head.labelled_fraud],
                "fraud_rate": [head.fraud_rate],
            },
            schema_overrides={"flag_rate": _RATE, "fraud_rate": _RATE},
        )

    def sections(self) -> dict[str, pl.DataFrame]:
        """Section name -> its table, in reading order."""
        return {
            "summary": self.summary(), "volume_by_currency": self.amounts,
            "volume_over_time": self.series, "decisions": self.actions, "rules": self.rules,
            "merchants": self.merchants, "countries": self.countries, "alerts": self.alerts,
            "score_distribution": self.scores,
        }  # fmt: skip


Connection = psycopg.Connection[Any]


def collect(
    connection: Connection, period: Period, top: int = 10, bins: int = SCORE_BINS
) -> Report:
    """The period's figures, read in one snapshot. `connection` must have no transaction open."""
    if connection.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("collect() needs a connection with no transaction open")
    with connection.transaction():
        connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        connection.execute("SET LOCAL TimeZone = 'UTC'")  # instants come back in UTC
        headline = headline_counts(connection, period)
        return Report(
            period=period,
            top=top,
            headline=headline,
            amounts=volume_by_currency(connection, period),
            series=volume_over_time(connection, period),
            actions=decisions_by_action(connection, period),
            rules=top_rules(connection, period, top, headline.transactions),
            merchants=top_flagged(connection, period, "merchant_id", top),
            countries=top_flagged(connection, period, "country", top),
            alerts=alert_delivery(connection, period),
            scores=score_distribution(connection, period, bins),
        )


def _query(template: LiteralString, scope: Scope, **parts: sql.Composable) -> sql.Composed:
    """`template` with `{period}` / `{t_period}` (the scope on `transactions` / `t`) filled."""
    return sql.SQL(template).format(
        period=scope.condition(None), t_period=scope.condition("t"), **parts
    )


def _frame(
    connection: Connection, query: sql.Composed, params: dict[str, Any], schema: dict[str, Any]
) -> pl.DataFrame:
    rows = connection.execute(query, params).fetchall()
    return pl.DataFrame(rows, schema=schema, orient="row")


def headline_counts(connection: Connection, period: Scope) -> Headline:
    query = _query(
        "SELECT count(*), count(DISTINCT t.card_ref), count(*) FILTER (WHERE t.is_flagged),"
        " count(l.transaction_id), count(*) FILTER (WHERE l.is_fraud)"
        " FROM transactions t LEFT JOIN labels l USING (transaction_id) WHERE {t_period}",
        period,
    )
    row = connection.execute(query, period.params()).fetchone()
    assert row is not None  # an aggregate without GROUP BY always returns a row
    return Headline(*(int(value) for value in row))


def volume_by_currency(connection: Connection, period: Scope) -> pl.DataFrame:
    """Count and amount per currency: amounts in different currencies do not add up."""
    query = _query(
        "SELECT currency, count(*), sum(amount) FROM transactions WHERE {period}"
        " GROUP BY currency ORDER BY count(*) DESC, currency",
        period,
    )
    schema = {"currency": pl.String(), "transactions": _COUNT, "amount": pl.Float64()}
    return _frame(connection, query, period.params(), schema)


def volume_over_time(connection: Connection, period: Period) -> pl.DataFrame:
    """Transactions and flagged ones per hour or UTC day, empty buckets included. The step is
    in hours, never days, so a bucket is 24 h whatever the session's time zone does."""
    query = _query(
        "WITH buckets AS (SELECT generate_series("
        "  date_bin(make_interval(hours => %(step)s), %(start)s::timestamptz,"
        "           '2000-01-01 00:00:00+00'::timestamptz),"
        "  %(end)s::timestamptz - interval '1 microsecond',"
        "  make_interval(hours => %(step)s)) AS bucket)"
        " SELECT b.bucket, count(t.transaction_id),"
        " count(t.transaction_id) FILTER (WHERE t.is_flagged)"
        " FROM buckets b LEFT JOIN transactions t ON t.event_time >= b.bucket"
        " AND t.event_time < b.bucket + make_interval(hours => %(step)s) AND {t_period}"
        " GROUP BY b.bucket ORDER BY b.bucket",
        period,
    )
    schema = {"bucket": pl.Datetime("us", "UTC"), "transactions": _COUNT, "flagged": _COUNT}
    return _frame(connection, query, period.params(step=period.step_hours), schema)


def decisions_by_action(connection: Connection, period: Scope) -> pl.DataFrame:
    """Every action, even one never taken, with its share of the period's transactions."""
    query = _query(
        "SELECT a.action, count(t.transaction_id),"
        " count(t.transaction_id)::float8 / nullif(sum(count(t.transaction_id)) OVER (), 0)"
        " FROM unnest(%(actions)s::text[]) WITH ORDINALITY AS a(action, position)"
        " LEFT JOIN transactions t ON t.action = a.action AND {t_period}"
        " GROUP BY a.action, a.position ORDER BY a.position",
        period,
    )
    schema = {"action": pl.String(), "transactions": _COUNT, "share": _RATE}
    return _frame(connection, query, period.params(actions=list(_ACTIONS)), schema)


def top_rules(connection: Connection, period: Scope, top: int, transactions: int) -> pl.DataFrame:
    """The rules that fired most; precision = labelled-fraud hits / labelled hits."""
    query = _query(
        "SELECT r.rule_id, count(*) AS hits, count(l.transaction_id),"
        " count(*) FILTER (WHERE l.is_fraud),"
        " (count(*) FILTER (WHERE l.is_fraud))::float8 / nullif(count(l.transaction_id), 0)"
        " FROM transactions t CROSS JOIN LATERAL unnest(t.rules_fired) AS r(rule_id)"
        " LEFT JOIN labels l ON l.transaction_id = t.transaction_id"
        " WHERE {t_period} GROUP BY r.rule_id"
        ' ORDER BY hits DESC, r.rule_id COLLATE "C" LIMIT %(top)s',
        period,
    )
    schema = {
        "rule_id": pl.String(), "hits": _COUNT, "labelled_hits": _COUNT,
        "labelled_fraud_hits": _COUNT, "precision": _RATE,
    }  # fmt: skip
    frame = _frame(connection, query, period.params(top=top), schema)
    hit_rate = pl.col("hits") / max(transactions, 1)  # no transactions: no rows either
    order = ["rule_id", "hits", "hit_rate", *list(schema)[2:]]
    return frame.with_columns(hit_rate=hit_rate).select(order)


def top_flagged(connection: Connection, period: Scope, column: str, top: int) -> pl.DataFrame:
    """The `column` values (merchant, country) with most flagged transactions, and their
    volume and flag rate; values never flagged are left out."""
    query = _query(
        "SELECT {name}, count(*), count(*) FILTER (WHERE is_flagged) AS flagged,"
        " (count(*) FILTER (WHERE is_flagged))::float8 / count(*)"
        " FROM transactions WHERE {period} GROUP BY {name}"
        " HAVING count(*) FILTER (WHERE is_flagged) > 0"
        ' ORDER BY flagged DESC, count(*) DESC, {name} COLLATE "C" NULLS LAST LIMIT %(top)s',
        period,
        name=sql.Identifier(column),
    )
    schema = {column: pl.String(), "transactions": _COUNT, "flagged": _COUNT, "flag_rate": _RATE}
    return _frame(connection, query, period.params(top=top), schema)


def alert_delivery(connection: Connection, period: Period) -> pl.DataFrame:
    """Per channel: alerts created and their status now, failed delivery attempts, and the
    delay from creation to delivery (percentiles of delivered alerts, in seconds)."""
    query = _query(
        "SELECT a.channel, count(*),"
        " count(*) FILTER (WHERE a.status = 'delivered'),"
        " count(*) FILTER (WHERE a.status = 'pending'),"
        " count(*) FILTER (WHERE a.status = 'suppressed'),"
        " coalesce(sum(f.failed), 0)::bigint,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY {delay})"
        "  FILTER (WHERE a.status = 'delivered'),"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY {delay})"
        "  FILTER (WHERE a.status = 'delivered')"
        " FROM alerts a LEFT JOIN LATERAL (SELECT count(*) AS failed FROM alert_attempts x"
        "  WHERE x.alert_id = a.id AND x.outcome = 'failed') f ON true"
        " WHERE a.event_time >= %(start)s AND a.event_time < %(end)s"
        " GROUP BY a.channel ORDER BY a.channel",
        period,
        delay=sql.SQL("extract(epoch FROM a.delivered_at - a.created_at)::float8"),
    )
    schema = {
        "channel": pl.String(), "created": _COUNT, "delivered": _COUNT, "pending": _COUNT,
        "suppressed": _COUNT, "failed_attempts": _COUNT, "delay_p50_s": _RATE,
        "delay_p95_s": _RATE,
    }  # fmt: skip
    return _frame(connection, query, period.params(), schema)


def score_distribution(connection: Connection, period: Scope, bins: int) -> pl.DataFrame:
    """Histogram of `score` and of `model_score` (where a model scored) over [0, 1] in `bins`
    equal bins; bin k holds [k/bins, (k+1)/bins), the last one also 1.0. NaN is left out."""
    query = _query(
        "WITH scored AS (SELECT {score_bin} AS score_bin,"
        " CASE WHEN model_score <> 'NaN' THEN {model_bin} END AS model_bin"
        " FROM transactions WHERE score <> 'NaN' AND {period})"
        " SELECT b.bin, b.bin::float8 / %(bins)s::int, (b.bin + 1)::float8 / %(bins)s::int,"
        " coalesce(s.n, 0), coalesce(m.n, 0)"
        " FROM generate_series(0, %(bins)s::int - 1) AS b(bin)"
        " LEFT JOIN (SELECT score_bin AS bin, count(*) AS n FROM scored GROUP BY 1) s USING (bin)"
        " LEFT JOIN (SELECT model_bin AS bin, count(*) AS n FROM scored"
        "  WHERE model_bin IS NOT NULL GROUP BY 1) m USING (bin)"
        " ORDER BY b.bin",
        period,
        score_bin=sql.SQL(_BIN).format(sql.Identifier("score")),
        model_bin=sql.SQL(_BIN).format(sql.Identifier("model_score")),
    )
    schema = {
        "bin": pl.Int32(), "lower": _RATE, "upper": _RATE, "score": _COUNT, "model_score": _COUNT,
    }  # fmt: skip
    return _frame(connection, query, period.params(bins=bins), schema)
