"""The dashboard's SQL: each figure from one parameterised query, returned as a Polars frame.

The time range is in decision time (`decided_at`), not event time: the page watches what the
pipeline decides now, while the event times of a replayed or simulated stream can lie anywhere
(the generator's month). `decided_at` is indexed three ways (`transactions_decided_at_idx`, the
partial `transactions_flagged_decided_at_idx`, `transactions_action_decided_at_idx`), so a
bounded range reads only its rows; "all" reads the table. Feeds have a LIMIT.

Figures the period report has too (headline counts, decisions by action, rules with their
precision, the score histogram) are `reports.figures`' queries run with `Filters` as their
scope; the rest (the shadow rules' hits and precision among them) are here. `read_figures`
runs them in one read-only REPEATABLE READ snapshot, so the KPIs of one refresh add up while
workers keep writing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, LiteralString

import polars as pl
from psycopg import sql

from fraudstream.reports.figures import (
    SCORE_BINS,
    Connection,
    Headline,
    decisions_by_action,
    headline_counts,
    score_distribution,
    top_rules,
)

ACTIONS: Final = ("approve", "review", "decline")
RATE_WINDOW_S: Final = 10
"""tx/s is over the decisions of the last this many seconds up to the newest one."""
FEED_LIMIT: Final = 50
MAP_LIMIT: Final = 2000
CARD_LIMIT: Final = 500
RULES_SHOWN: Final = 50
_STEPS_S: Final = (1, 5, 10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86400)
_BUCKETS: Final = 120
_TIME: Final = pl.Datetime("us", "UTC")
_TEXTS: Final = pl.List(pl.String)


@dataclass(frozen=True, slots=True)
class Filters:
    """What the page counts: decisions of the last `span` (None: all) with one of `actions`,
    where `rule` fired (None: any) at `merchant` (None: any). A `reports.figures.Scope`."""

    span: timedelta | None = timedelta(hours=1)
    actions: tuple[str, ...] = ACTIONS
    rule: str | None = None
    merchant: str | None = None

    def condition(self, alias: str | None) -> sql.Composable:
        def column(name: str) -> sql.Identifier:
            return sql.Identifier(alias, name) if alias else sql.Identifier(name)

        parts: list[sql.Composable] = [sql.SQL("true")]
        if self.span is not None:
            parts.append(sql.SQL("{} >= now() - %(f_span)s").format(column("decided_at")))
        if set(self.actions) != set(ACTIONS):  # all three: no condition, the plainer plan
            parts.append(sql.SQL("{} = ANY(%(f_actions)s)").format(column("action")))
        if self.rule is not None:
            parts.append(sql.SQL("%(f_rule)s = ANY({})").format(column("rules_fired")))
        if self.merchant is not None:
            parts.append(sql.SQL("{} = %(f_merchant)s").format(column("merchant_id")))
        return sql.SQL(" AND ").join(parts)

    def params(self, **more: Any) -> dict[str, Any]:
        """The condition's parameters (`f_` names, clear of the report queries' own)."""
        return {
            "f_span": self.span, "f_actions": list(self.actions), "f_rule": self.rule,
            "f_merchant": self.merchant, **more,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Live:
    """Newest and oldest decision in scope, tx/s before the newest, event→decision latency;
    `now` is the database's clock (the snapshot's start), which the time range counts from."""

    now: datetime
    oldest: datetime | None
    newest: datetime | None
    rate: float
    latency_p50_s: float | None
    latency_p99_s: float | None


@dataclass(frozen=True, slots=True)
class Figures:
    """Everything one refresh of the page shows, from one snapshot."""

    headline: Headline
    live: Live
    dead_letters: int
    actions: pl.DataFrame
    series: pl.DataFrame
    step_s: int
    feed: pl.DataFrame
    rules: pl.DataFrame
    shadow_rules: pl.DataFrame
    scores: pl.DataFrame
    points: pl.DataFrame

    @property
    def flagged_share(self) -> float | None:
        return self.headline.flag_rate


@contextmanager
def snapshot(connection: Connection) -> Iterator[Connection]:
    """A read-only REPEATABLE READ transaction in UTC, with a statement timeout."""
    with connection.transaction():
        connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        connection.execute("SET LOCAL TimeZone = 'UTC'")
        # a refresh that takes longer (an "all" range on a huge table) fails visibly
        connection.execute("SET LOCAL statement_timeout = '15s'")
        yield connection


def _frame(
    connection: Connection,
    query: sql.SQL | sql.Composed,
    params: dict[str, Any],
    schema: dict[str, Any],
) -> pl.DataFrame:
    rows = connection.execute(query, params).fetchall()
    return pl.DataFrame(rows, schema=schema, orient="row")


def _scoped(template: LiteralString, filters: Filters, **parts: sql.Composable) -> sql.Composed:
    return sql.SQL(template).format(scope=filters.condition(None), **parts)


def has_data(connection: Connection) -> bool:
    """Whether anything at all is stored (an empty database gets help, not empty charts)."""
    query = "SELECT EXISTS (SELECT FROM transactions) OR EXISTS (SELECT FROM dead_letters)"
    row = connection.execute(query).fetchone()
    return bool(row and row[0])


def read_figures(connection: Connection, filters: Filters) -> Figures:
    """Every figure of the page for `filters`; `connection` must have no transaction open."""
    with snapshot(connection):
        headline = headline_counts(connection, filters)
        live = live_figures(connection, filters)
        step = bucket_step(filters.span, live)
        return Figures(
            headline=headline,
            live=live,
            dead_letters=dead_letter_count(connection, filters.span),
            actions=decisions_by_action(connection, filters),
            series=volume_series(connection, filters, step),
            step_s=step,
            feed=alert_feed(connection, filters),
            rules=top_rules(connection, filters, RULES_SHOWN, headline.transactions),
            shadow_rules=shadow_rules(connection, filters, RULES_SHOWN),
            scores=score_distribution(connection, filters, SCORE_BINS),
            points=flagged_points(connection, filters),
        )


def live_figures(connection: Connection, filters: Filters) -> Live:
    """First and newest decision, the rate before the newest (not before "now": a finished
    run keeps its last rate, and the page says how old the newest decision is), and latency
    percentiles over the scope (rows without `ingested_at` left out)."""
    query = _scoped(
        "WITH scoped AS (SELECT decided_at, decided_at - ingested_at AS latency"
        " FROM transactions WHERE {scope}), newest AS (SELECT max(decided_at) AS at FROM scoped)"
        " SELECT now(), (SELECT min(decided_at) FROM scoped), (SELECT at FROM newest),"
        " (SELECT count(*) FROM scoped, newest"
        "  WHERE decided_at > newest.at - make_interval(secs => %(window)s)),"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM latency)),"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM latency))"
        " FROM scoped",
        filters,
    )
    row = connection.execute(query, filters.params(window=RATE_WINDOW_S)).fetchone()
    assert row is not None  # an aggregate without GROUP BY always returns a row
    now, oldest, newest, recent, p50, p99 = row
    return Live(
        now=now,
        oldest=oldest,
        newest=newest,
        rate=int(recent) / RATE_WINDOW_S,
        latency_p50_s=None if p50 is None else float(p50),
        latency_p99_s=None if p99 is None else float(p99),
    )


def dead_letter_count(connection: Connection, span: timedelta | None) -> int:
    """Messages that could not be decoded, received in the range (by `received_at`)."""
    every = sql.SQL("SELECT count(*) FROM dead_letters")
    query = (
        every if span is None else sql.SQL("{} WHERE received_at >= now() - %(span)s").format(every)
    )
    row = connection.execute(query, {"span": span}).fetchone()
    return int(row[0]) if row else 0


def bucket_step(span: timedelta | None, live: Live) -> int:
    """Seconds per bucket of the series: about `_BUCKETS` buckets from the first decision in
    the range to now (for "all", to the newest decision), rounded up to a readable step. From
    the first decision, not the range's start: a run of a minute gets 1 s buckets in any range."""
    if live.oldest is None or live.newest is None:
        return _STEPS_S[0]
    seconds = ((live.now if span is not None else live.newest) - live.oldest).total_seconds()
    wanted = seconds / _BUCKETS
    return next((step for step in _STEPS_S if step >= wanted), _STEPS_S[-1])


def volume_series(connection: Connection, filters: Filters, step_s: int) -> pl.DataFrame:
    """Decisions and flagged ones per `step_s` bucket of decision time, empty buckets as 0,
    from the first decision in the range to now (for "all", to the newest decision): a pause
    in the stream shows as one."""
    query = _scoped(
        "WITH counts AS (SELECT date_bin({step}, decided_at, {origin}) AS bucket,"
        " count(*) AS n, count(*) FILTER (WHERE is_flagged) AS flagged"
        " FROM transactions WHERE {scope} GROUP BY 1),"
        " bounds AS (SELECT min(bucket) AS first,"
        "  CASE WHEN %(f_span)s::interval IS NULL THEN max(bucket)"
        "  ELSE date_bin({step}, now(), {origin}) END AS last FROM counts)"
        " SELECT s.bucket, coalesce(c.n, 0), coalesce(c.flagged, 0)"
        " FROM bounds CROSS JOIN LATERAL generate_series(bounds.first, bounds.last, {step})"
        " AS s(bucket) LEFT JOIN counts c USING (bucket) ORDER BY s.bucket",
        filters,
        step=sql.SQL("make_interval(secs => %(step)s)"),
        origin=sql.SQL("'2000-01-01 00:00:00+00'::timestamptz"),
    )
    schema = {"bucket": _TIME, "transactions": pl.Int64(), "flagged": pl.Int64()}
    return _frame(connection, query, filters.params(step=step_s), schema)


def alert_feed(connection: Connection, filters: Filters, limit: int = FEED_LIMIT) -> pl.DataFrame:
    """The newest flagged transactions (`fraud_transactions`, the alert queue), newest first,
    ties by id; the card only as its token and last four digits."""
    query = _scoped(
        "SELECT decided_at, transaction_id, card_ref, card_last4, merchant_id, amount, currency,"
        " country, action, score, rules_fired, reasons FROM fraud_transactions WHERE {scope}"
        ' ORDER BY decided_at DESC, transaction_id COLLATE "C" DESC LIMIT %(limit)s',
        filters,
    )
    schema = {
        "decided_at": _TIME, "transaction_id": pl.String(), "card_ref": pl.String(),
        "card_last4": pl.String(), "merchant_id": pl.String(), "amount": pl.Float64(),
        "currency": pl.String(), "country": pl.String(), "action": pl.String(),
        "score": pl.Float64(), "rules_fired": _TEXTS, "reasons": _TEXTS,
    }  # fmt: skip
    return _frame(connection, query, filters.params(limit=limit), schema)


def flagged_points(
    connection: Connection, filters: Filters, limit: int = MAP_LIMIT
) -> pl.DataFrame:
    """Where the newest flagged transactions with a location happened, for the map."""
    query = _scoped(
        "SELECT latitude, longitude, action, amount, currency FROM transactions"
        " WHERE is_flagged AND latitude IS NOT NULL AND longitude IS NOT NULL AND {scope}"
        " ORDER BY decided_at DESC LIMIT %(limit)s",
        filters,
    )
    schema = {
        "latitude": pl.Float64(), "longitude": pl.Float64(), "action": pl.String(),
        "amount": pl.Float64(), "currency": pl.String(),
    }  # fmt: skip
    return _frame(connection, query, filters.params(limit=limit), schema)


def shadow_rules(connection: Connection, filters: Filters, top: int) -> pl.DataFrame:
    """The shadow rules that fired most on the decisions in scope (`shadow_rules_fired`: they
    never moved a score or an action), as `reports.figures.top_rules` shows the live ones:
    hit_rate = hits / the scope's decisions, precision = labelled-fraud hits / labelled hits
    (null when none is labelled). The rule filter stays on the live `rules_fired`."""
    query = _scoped(
        "SELECT r.rule_id, count(*) AS hits,"
        " count(*)::float8 / nullif((SELECT count(*) FROM transactions WHERE {scope}), 0),"
        " count(l.transaction_id), count(*) FILTER (WHERE l.is_fraud),"
        " (count(*) FILTER (WHERE l.is_fraud))::float8 / nullif(count(l.transaction_id), 0)"
        " FROM (SELECT transaction_id, shadow_rules_fired FROM transactions"
        "  WHERE {scope} AND cardinality(shadow_rules_fired) > 0) AS t"
        " CROSS JOIN LATERAL unnest(t.shadow_rules_fired) AS r(rule_id)"
        " LEFT JOIN labels l ON l.transaction_id = t.transaction_id"
        ' GROUP BY r.rule_id ORDER BY hits DESC, r.rule_id COLLATE "C" LIMIT %(top)s',
        filters,
    )
    schema = {
        "rule_id": pl.String(), "hits": pl.Int64(), "hit_rate": pl.Float64(),
        "labelled_hits": pl.Int64(), "labelled_fraud_hits": pl.Int64(), "precision": pl.Float64(),
    }  # fmt: skip
    return _frame(connection, query, filters.params(top=top), schema)


def rule_ids(connection: Connection, span: timedelta | None) -> list[str]:
    """The rules that fired on a decision in the range: the rule filter's choices."""
    in_range = Filters(span=span)
    query = _scoped(
        "SELECT r.rule_id FROM transactions"
        " CROSS JOIN LATERAL unnest(rules_fired) AS r(rule_id) WHERE {scope}"
        ' GROUP BY r.rule_id ORDER BY r.rule_id COLLATE "C"',
        in_range,
    )
    return [row[0] for row in connection.execute(query, in_range.params()).fetchall()]


def card_timeline(connection: Connection, card_ref: str, limit: int = CARD_LIMIT) -> pl.DataFrame:
    """One card's newest transactions (whatever the filters: its whole story), oldest first,
    with score, action and the rules that fired; read by (card_ref, event_time)."""
    query = sql.SQL(
        "SELECT event_time, decided_at, transaction_id, card_last4, merchant_id, amount,"
        " currency, country, score, model_score, action, is_flagged, rules_fired, reasons"
        " FROM transactions WHERE card_ref = %(card)s"
        ' ORDER BY event_time DESC, transaction_id COLLATE "C" DESC LIMIT %(limit)s'
    )
    schema = {
        "event_time": _TIME, "decided_at": _TIME, "transaction_id": pl.String(),
        "card_last4": pl.String(), "merchant_id": pl.String(), "amount": pl.Float64(),
        "currency": pl.String(), "country": pl.String(), "score": pl.Float64(),
        "model_score": pl.Float64(), "action": pl.String(), "is_flagged": pl.Boolean(),
        "rules_fired": _TEXTS, "reasons": _TEXTS,
    }  # fmt: skip
    with snapshot(connection):
        frame = _frame(connection, query, {"card": card_ref, "limit": limit}, schema)
    return frame.reverse()
