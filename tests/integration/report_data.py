"""What the `fraudstream report` tests share: a database holding a week of scored transactions
written by the real sink, labels for some of them, an alert outbox with its delivery log in
every state; SQL helpers for the independent counts; the command run as a process; a mailbox.

The alerts are inserted with SQL rather than by the dispatcher: the report reads what is
stored, and a hand-made mix (delivered after failures, pending, suppressed, two channels)
covers every figure without waiting on real deliveries.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import polars as pl
import psycopg

from fraudstream.adapters.labels import store_labels
from fraudstream.adapters.postgres import PostgresSink, migrate
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.ports import ScoredBatch

START: Final = datetime(2026, 1, 1, tzinfo=UTC)
DAYS: Final = 7
EVIL_MERCHANT: Final = '<script>alert("merchant")</script>'
"""A merchant id with markup: the HTML report must show it as text."""
CUT_FROM: Final = START + timedelta(days=1)
CUT_TO: Final = START + timedelta(days=5)
"""The period most tests report on: it leaves out the first day and the last two."""
IN_PERIOD: Final = "event_time >= %(start)s AND event_time < %(end)s"
CLI: Final = str(Path(sys.executable).parent / "fraudstream")


def database_url(url: str, database: str) -> str:
    """`url` naming another database on the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def sql_rows(url: str, query: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows of `query`; `%(start)s` and `%(end)s` are the cut period unless given."""
    with psycopg.connect(url) as connection:
        cursor = connection.execute(query, {"start": CUT_FROM, "end": CUT_TO, **params})  # type: ignore[arg-type]
        return cursor.fetchall()


def sql_value(url: str, query: str, **params: Any) -> Any:
    return sql_rows(url, query, **params)[0][0]


def run_report(url: str | None, cwd: Path, *args: str, **env: str) -> CompletedProcess[str]:
    """`fraudstream report ARGS` as its own process, with no settings but these."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")}
    clean |= {"FRAUDSTREAM_STACK__DATA_DIR": str(cwd / "stack"), "COLUMNS": "200", **env}
    if url is not None:
        clean["FRAUDSTREAM_POSTGRES__URL"] = url
    return subprocess.run(
        [CLI, "report", *args], env=clean, cwd=cwd, capture_output=True, text=True, timeout=180,
        check=False,
    )  # fmt: skip


class Inbox:
    """An aiosmtpd handler keeping what it receives: recipients and raw message."""

    def __init__(self) -> None:
        self.received: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.received.append((list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


def scored_frame() -> pl.DataFrame:
    """4 000 transactions over a week, scored with the shipped rules; half carry a model
    score (0 and 1 exactly among them), some flagged ones the merchant with markup, and one
    transaction each is moved to exactly CUT_FROM (counted) and CUT_TO (not counted)."""
    config = FeatureConfig()
    engine = Engine(
        compile_ruleset(parse_ruleset(load_default_ruleset_text()), available_columns(config))
    )
    stream = generate(
        GeneratorConfig(seed=5, n_transactions=4000, n_customers=500, n_merchants=150, days=DAYS)
    )
    frame = engine.process(stream.transactions, FeatureState(config)).frame
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    first_from, first_to = (
        (frame["timestamp"] >= CUT_FROM).arg_max(),
        (frame["timestamp"] >= CUT_TO).arg_max(),
    )
    frame = frame.with_columns(
        timestamp=pl.when(index == first_from).then(pl.lit(CUT_FROM))
        .when(index == first_to).then(pl.lit(CUT_TO)).otherwise("timestamp")
    )  # fmt: skip
    in_cut = (pl.col("timestamp") >= CUT_FROM) & (pl.col("timestamp") < CUT_TO)
    model = np.random.default_rng(5).random(frame.height)
    edges = np.flatnonzero(frame.select(in_cut).to_series().to_numpy())
    model[edges[edges % 2 == 0][:4]] = [0.0, 1.0, 0.05, 0.5]  # bin edges, in the period
    evil = pl.col("is_flagged") & in_cut & (index % 3 == 0)
    return frame.with_columns(
        model_score=pl.when(index % 2 == 0).then(pl.Series(model)).otherwise(None),
        model_version=pl.when(index % 2 == 0).then(pl.lit("m-test")).otherwise(None),
        merchant_id=pl.when(evil).then(pl.lit(EVIL_MERCHANT)).otherwise("merchant_id"),
        kafka_partition=pl.lit(0, pl.Int32),
        kafka_offset=index,
        ingested_at=pl.col("timestamp"),
        decided_at=pl.col("timestamp") + timedelta(milliseconds=40),
    ).join(
        stream.labels.select("transaction_id", "is_fraud"),
        on="transaction_id",
        maintain_order="left",
    )


def populate(url: str, frame: pl.DataFrame) -> None:
    """Schema, transactions, labels for about 40 % of them (half the fraud), alerts, attempts."""
    migrate(url)
    with PostgresSink(url) as sink:
        sink.write(ScoredBatch(frame.drop("is_fraud"), ()))
    index = pl.int_range(pl.len())
    labelled = frame.filter((index % 3 == 0) | (pl.col("is_fraud") & (index % 2 == 0)))
    store_labels(url, labelled, "analyst")
    with psycopg.connect(url) as connection:
        _insert_alerts(connection, frame.filter("is_flagged"))
        _insert_attempts(connection)


def _insert_alerts(connection: psycopg.Connection, flagged: pl.DataFrame) -> None:
    """Every flagged transaction to the email route, every other one to Slack as well; each
    channel's statuses cycle delivered (3 in 5), pending, suppressed; delays 0.5 s to a minute."""
    pick = random.Random(5)
    cycle = ("delivered", "delivered", "delivered", "pending", "suppressed")
    made: Counter[str] = Counter()
    rows = []
    for number, tx in enumerate(flagged.iter_rows(named=True)):
        routes = [("ops-email", "email")] + ([("ops-slack", "slack")] if number % 2 else [])
        for route, channel in routes:
            status = cycle[made[channel] % len(cycle)]
            made[channel] += 1
            created = tx["timestamp"] + timedelta(seconds=pick.uniform(0.05, 2))
            delivered = created + timedelta(seconds=pick.uniform(0.5, 60))
            rows.append((
                tx["transaction_id"], route, channel, tx["card_ref"], tx["action"], "high",
                tx["score"], tx["timestamp"], created, status,
                delivered if status == "delivered" else None,
            ))  # fmt: skip
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO alerts (transaction_id, route, channel, card_ref, action, severity,"
            " score, event_time, created_at, status, delivered_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


def _insert_attempts(connection: psycopg.Connection) -> None:
    """One failed try for every pending alert and every fourth delivered one, a second failed
    try for half the pending ones, and the successful try of each delivered alert."""
    connection.execute(
        "INSERT INTO alert_attempts (alert_id, channel, attempt, started_at, finished_at, outcome,"
        " error) SELECT id, channel, 1, created_at, created_at + interval '1 second', 'failed',"
        " 'timeout' FROM alerts WHERE status = 'pending' OR (status = 'delivered' AND id % 4 = 0)"
    )
    connection.execute(
        "INSERT INTO alert_attempts (alert_id, channel, attempt, started_at, finished_at, outcome,"
        " error) SELECT id, channel, 2, created_at + interval '2 seconds',"
        " created_at + interval '3 seconds', 'failed', 'refused'"
        " FROM alerts WHERE status = 'pending' AND id % 2 = 0"
    )
    connection.execute(
        "INSERT INTO alert_attempts (alert_id, channel, attempt, started_at, finished_at, outcome,"
        " delivery_id) SELECT id, channel, 1 + (id % 4 = 0)::int, delivered_at, delivered_at,"
        " 'delivered', 'msg-' || id FROM alerts WHERE status = 'delivered'"
    )
    connection.execute(
        "UPDATE alerts SET attempts = (SELECT count(*) FROM alert_attempts x"
        " WHERE x.alert_id = alerts.id)"
    )
