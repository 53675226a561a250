"""What the pipeline has stored so far, read back from PostgreSQL for the live view."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

LATENCY_WINDOW_S = 10
"""Latency percentiles are over the transactions decided in the last this many seconds."""

_COUNTS = """
SELECT (SELECT count(*) FROM transactions),
       (SELECT count(*) FROM fraud_transactions),
       (SELECT count(*) FROM dead_letters),
       (SELECT count(*) FROM alerts WHERE status = 'delivered')
"""
_LATENCY = """
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY latency),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency),
       count(*)
FROM (SELECT extract(epoch FROM decided_at - ingested_at) AS latency
      FROM transactions
      WHERE decided_at > now() - make_interval(secs => %s) AND ingested_at IS NOT NULL) recent
"""


@dataclass(frozen=True, slots=True)
class StoredFigures:
    scored: int
    flagged: int
    dead_letters: int
    alerts_delivered: int
    latency_p50_s: float | None
    latency_p99_s: float | None


class PipelineStats:
    """Counts and recent event→decision latency, from one reused connection."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: psycopg.Connection | None = None

    def _cursor(self) -> psycopg.Cursor:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
        return self._connection.cursor()

    def figures(self) -> StoredFigures:
        with self._cursor() as cursor:
            scored, flagged, dead, alerted = cursor.execute(_COUNTS).fetchone() or (0, 0, 0, 0)
            p50, p99, _ = cursor.execute(_LATENCY, (LATENCY_WINDOW_S,)).fetchone() or (
                None, None, 0,
            )  # fmt: skip
        return StoredFigures(
            scored=int(scored),
            flagged=int(flagged),
            dead_letters=int(dead),
            alerts_delivered=int(alerted),
            latency_p50_s=None if p50 is None else float(p50),
            latency_p99_s=None if p99 is None else float(p99),
        )

    def flagged_ids(self) -> list[str]:
        with self._cursor() as cursor:
            return [
                row[0] for row in cursor.execute("SELECT transaction_id FROM fraud_transactions")
            ]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def clear_pipeline_tables(url: str) -> None:
    """Empty the pipeline's tables: only for a scratch database (the main job's embedded one),
    since a run replays a seeded stream whose transaction ids an earlier run already stored.
    Cases and their labels go with the transactions they are about; lists and the audit log
    stay."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
        connection.execute(
            "TRUNCATE alert_attempts, alerts, case_comments, case_transactions, labels, cases,"
            " fraud_transactions, transactions, dead_letters"
        )
