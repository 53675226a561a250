"""What the dashboard tests share: a database of scored transactions decided in the last hours,
written by the real sink, with labels, alerts and dead letters; the KPIs and the alert feed as
independent SQL says they should read.

Decision times come in three clusters, in micro-batches of 40 sharing a `decided_at`, so every
time range the page offers holds a different set, with minutes of margin on each bound:

* the newest 1 200: 9 to 2 minutes ago, a batch every 15 s (inside "last 15 minutes");
* the middle 1 400: 50 to 38 minutes ago (inside "last hour" only);
* the oldest 1 400: 5 to 4.4 hours ago (inside "last 24 hours" only).

Event times are the generator's (January 2026): the page's range is in decision time.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import polars as pl
import psycopg
from psycopg import sql
from report_data import database_url, populate, scored_frame, sql_rows

from fraudstream.adapters.postgres import PostgresSink
from fraudstream.ports import DeadLetter, ScoredBatch
from fraudstream.stack import Endpoints

BATCH: Final = 40
RECENT_DEAD: Final = 5
OLD_DEAD: Final = 3
HOUR: Final = timedelta(hours=1)
IN_RANGE: Final = "decided_at >= now() - %(span)s"


def near_now(frame: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """`frame` decided in the three clusters before `now`; event→decision latency 30 to
    430 ms, unknown (no `ingested_at`) for every tenth."""
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    newest, middle = index >= 2800, index >= 1400
    start = (
        pl.when(newest).then(pl.lit(now - timedelta(minutes=9)))
        .when(middle).then(pl.lit(now - timedelta(minutes=50)))
        .otherwise(pl.lit(now - timedelta(hours=5)))
    )  # fmt: skip
    first = pl.when(newest).then(2800).when(middle).then(1400).otherwise(0)
    step_s = pl.when(newest).then(15).when(middle).then(20).otherwise(60)
    decided = start + pl.duration(seconds=(index - first) // BATCH * step_s)
    latency = pl.duration(milliseconds=30 + index * 37 % 400)
    return frame.with_columns(
        decided_at=decided,
        ingested_at=pl.when(index % 10 == 0).then(None).otherwise(decided - latency),
    )


def dead_letters(now: datetime) -> tuple[DeadLetter, ...]:
    """Five received two minutes ago, three three hours ago."""
    return tuple(
        DeadLetter(
            topic="transactions", partition=0, offset=number, raw=b'{"amount": "lots"',
            error="invalid JSON", field="$",
            received_at=now - (timedelta(minutes=2) if number < RECENT_DEAD else 3 * HOUR),
        )
        for number in range(RECENT_DEAD + OLD_DEAD)
    )  # fmt: skip


def populated_database(endpoints: Endpoints) -> Iterator[str]:
    """A new database, filled (for a module-scoped fixture: the tests only read it)."""
    now = datetime.now(UTC)
    with new_database(endpoints) as url:
        frame = near_now(scored_frame(), now)
        populate(url, frame)
        with PostgresSink(url) as sink:
            sink.write(ScoredBatch(frame.clear().drop("is_fraud"), dead_letters(now)))
        yield url


class new_database:  # noqa: N801 - used as a context manager, like a function
    """A new empty database on the embedded server, dropped on the way out."""

    def __init__(self, endpoints: Endpoints) -> None:
        self._name = f"dash_{uuid.uuid4().hex[:12]}"
        self._admin = database_url(endpoints.postgres_url, "postgres")
        self.url = database_url(endpoints.postgres_url, self._name)

    def __enter__(self) -> str:
        self._run("CREATE DATABASE {}")
        return self.url

    def __exit__(self, *_: object) -> None:
        self._run("DROP DATABASE {} WITH (FORCE)")

    def _run(self, template: Any) -> None:
        with psycopg.connect(self._admin, autocommit=True) as connection:
            connection.execute(sql.SQL(template).format(sql.Identifier(self._name)))


def scope(where: str = "true") -> str:
    return f"{IN_RANGE} AND ({where})"


def expected_kpis(
    url: str, span: timedelta = HOUR, where: str = "true", **params: Any
) -> dict[str, str]:
    """The KPI texts as the page should show them, from plain SQL over the same rows."""
    params = {"span": span, **params}
    total, flagged, approve, review, decline = sql_rows(
        url,
        "SELECT count(*), count(*) FILTER (WHERE is_flagged),"
        " count(*) FILTER (WHERE action = 'approve'), count(*) FILTER (WHERE action = 'review'),"
        f" count(*) FILTER (WHERE action = 'decline') FROM transactions WHERE {scope(where)}",
        **params,
    )[0]
    recent = sql_rows(
        url,
        f"SELECT count(*) FROM transactions WHERE {scope(where)} AND decided_at >"
        f" (SELECT max(decided_at) FROM transactions WHERE {scope(where)}) - interval '10 s'",
        **params,
    )[0][0]
    p50, p99 = sql_rows(
        url,
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.99)"
        " WITHIN GROUP (ORDER BY s) FROM (SELECT extract(epoch FROM decided_at - ingested_at)"
        f" AS s FROM transactions WHERE {scope(where)} AND ingested_at IS NOT NULL) x",
        **params,
    )[0]
    dead = sql_rows(
        url, "SELECT count(*) FROM dead_letters WHERE received_at >= now() - %(span)s", span=span
    )[0][0]
    return {
        "Transactions": f"{total:,}", "tx/s": f"{recent / 10:,.1f}",
        "Flagged share": f"{flagged / total:.2%}", "Latency p50": f"{float(p50) * 1000:,.0f} ms",
        "Latency p99": f"{float(p99) * 1000:,.0f} ms", "Dead letters": f"{dead:,}",
        "Approve": f"{approve:,}", "Review": f"{review:,}", "Decline": f"{decline:,}",
    }  # fmt: skip


def newest_alerts(
    url: str, limit: int, span: timedelta = HOUR, where: str = "true", **params: Any
) -> list[tuple[Any, ...]]:
    """(transaction id, last four, action, reasons, card ref) of the newest flagged ones."""
    return sql_rows(
        url,
        "SELECT transaction_id, card_last4, action, reasons, card_ref FROM transactions"
        f" WHERE is_flagged AND {scope(where)}"
        ' ORDER BY decided_at DESC, transaction_id COLLATE "C" DESC LIMIT %(limit)s',
        span=span,
        limit=limit,
        **params,
    )
