"""Alerts end to end on real servers: the outbox written with the decision, the dispatcher, and
real receivers (an HTTP server for Slack and webhooks, aiosmtpd for email, the Kafka broker)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest
from alert_receivers import http_receiver, self_signed_certificate, smtp_server
from kafka_helpers import read_messages
from pipeline_helpers import fresh_pipeline, wait_for

from fraudstream.adapters.kafka import TransactionProducer
from fraudstream.adapters.postgres import PostgresSink, migrate
from fraudstream.config import Settings, load_settings
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.ports import ScoredBatch
from fraudstream.runners.alerts import AlertDispatcher, ChannelTotals
from fraudstream.runners.local import worker_environment
from fraudstream.runners.serve import alert_routing
from fraudstream.stack import Endpoints

SECRET = "s3cret-for-hmac"


@pytest.fixture(scope="module")
def scored() -> pl.DataFrame:
    """1 500 transactions scored with the shipped rules, with source positions."""
    config = FeatureConfig()
    engine = Engine(
        compile_ruleset(parse_ruleset(load_default_ruleset_text()), available_columns(config))
    )
    stream = generate(GeneratorConfig(seed=3, n_transactions=1500))
    decisions = engine.process(stream.transactions, FeatureState(config))
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    return decisions.frame.with_columns(
        kafka_partition=pl.lit(0, pl.Int32),
        kafka_offset=index,
        ingested_at=pl.col("timestamp"),
        decided_at=pl.lit(datetime.now(UTC), pl.Datetime("us", "UTC")),
    )


@pytest.fixture
def database(database: str) -> str:
    """Here every test starts from the pipeline schema (conftest's database, migrated)."""
    migrate(database)
    return database


def _settings(url: str, endpoints: Endpoints, tmp_path: Path, **alerts: Any) -> Settings:
    alerts = {"retry_base_s": 0.2, "retry_max_s": 1.0, "poll_interval_s": 0.1, **alerts}
    return load_settings(
        postgres={"url": url},
        kafka={"bootstrap_servers": endpoints.kafka["bootstrap.servers"]},
        stack={"data_dir": tmp_path / "stack"},
        alerts=alerts,
    )


def _write(settings: Settings, frame: pl.DataFrame) -> None:
    with PostgresSink(
        settings.postgres.url.get_secret_value(), alert_routing=alert_routing(settings)
    ) as sink:  # type: ignore[union-attr]
        sink.write(ScoredBatch(frame, ()))


def _query(url: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as connection:
        return connection.execute(query, params).fetchall()  # type: ignore[arg-type]


def _scalar(url: str, query: str, *params: object) -> Any:
    return _query(url, query, *params)[0][0]


@contextmanager
def dispatching(settings: Settings) -> Iterator[dict[str, ChannelTotals]]:
    """The dispatcher in a thread; its totals are filled in when the block ends."""
    stop = threading.Event()
    totals: dict[str, ChannelTotals] = {}
    dispatcher = AlertDispatcher(settings)
    thread = threading.Thread(target=lambda: totals.update(dispatcher.run(stop)), daemon=True)
    thread.start()
    try:
        yield totals
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the dispatcher must stop when asked"


def _webhook_channels(port: int) -> dict[str, Any]:
    return {
        "hook": {
            "kind": "webhook",
            "url": f"http://127.0.0.1:{port}/hook",
            "secret": SECRET,
            "rate_per_minute": 60_000,
        },
        "slack": {
            "kind": "slack",
            "webhook_url": f"http://127.0.0.1:{port}/slack",
            "rate_per_minute": 60_000,
        },
    }


# --- the outbox -----------------------------------------------------------------------------


def test_the_sink_writes_one_alert_per_flagged_transaction_and_matching_route(
    database: str, endpoints: Endpoints, tmp_path: Path, scored: pl.DataFrame
) -> None:
    settings = _settings(
        database, endpoints, tmp_path, critical_score=0.6, medium_score=0.5,
        channels={"topic": {"kind": "kafka", "topic": "unused"}},
        routes=[
            {"name": "everything", "channel": "topic"},
            {"name": "severe-declines", "channel": "topic", "actions": ["decline"],
             "min_severity": "critical"},
            {"name": "medium-and-up", "channel": "topic", "min_severity": "medium"},
            {"name": "velocity", "channel": "topic", "rules": ["card_velocity_10m"]},
        ],
    )  # fmt: skip
    _write(settings, scored)
    _write(settings, scored.slice(200, 700))  # replayed and overlapping: nothing new

    per_route = dict(_query(database, "SELECT route, count(*) FROM alerts GROUP BY route"))
    assert per_route["everything"] == _scalar(
        database, "SELECT count(*) FROM transactions WHERE is_flagged"
    )
    assert per_route["severe-declines"] == _scalar(
        database, "SELECT count(*) FROM transactions WHERE action = 'decline' AND score >= 0.6"
    )
    assert per_route["medium-and-up"] == _scalar(
        database,
        "SELECT count(*) FROM transactions WHERE is_flagged"
        " AND (action = 'decline' OR score >= 0.5)",
    )
    assert 0 < per_route["severe-declines"] < per_route["medium-and-up"] < per_route["everything"]
    assert per_route["velocity"] == _scalar(
        database,
        "SELECT count(*) FROM transactions WHERE is_flagged"
        " AND 'card_velocity_10m' = ANY(rules_fired)",
    )
    assert per_route["everything"] > per_route["velocity"] > 0
    mismatched = _scalar(
        database,
        "SELECT count(*) FROM alerts a JOIN transactions t USING (transaction_id)"
        " WHERE a.action <> t.action OR a.score <> t.score OR a.event_time <> t.event_time"
        " OR a.card_ref IS DISTINCT FROM t.card_ref OR a.status <> 'pending'",
    )
    assert mismatched == 0


# --- HTTP channels --------------------------------------------------------------------------


def test_webhook_and_slack_get_every_alert_once_signed(
    database: str, endpoints: Endpoints, tmp_path: Path, scored: pl.DataFrame
) -> None:
    with http_receiver(secret=SECRET.encode()) as receiver:
        settings = _settings(
            database, endpoints, tmp_path, dedupe_window_s=0,
            channels=_webhook_channels(receiver.port),
            routes=[{"name": "to-hook", "channel": "hook"},
                    {"name": "declines-to-slack", "channel": "slack", "actions": ["decline"]}],
        )  # fmt: skip
        frame = scored.head(600)
        _write(settings, frame)
        flagged = frame.filter("is_flagged")
        declines = flagged.filter(pl.col("action") == "decline")
        expected = flagged.height + declines.height
        with dispatching(settings) as totals:
            wait_for(lambda: len(receiver.requests) >= expected, 60, "every alert delivered")
            time.sleep(0.3)  # nothing more may arrive
    assert sum(t.delivered for t in totals.values()) == expected
    hook = [r for r in receiver.requests if r.path == "/hook"]
    slack = [r for r in receiver.requests if r.path == "/slack"]
    assert all(r.signed for r in hook), "every webhook call carries a valid HMAC signature"
    hooked = [a["transaction_id"] for r in hook for a in r.json()["alerts"]]
    assert sorted(hooked) == sorted(flagged.get_column("transaction_id").to_list())
    assert len(slack) == declines.height
    assert all(r.json()["text"].startswith("DECLINE") and r.json()["blocks"] for r in slack)
    ids = receiver.ids()
    assert len(ids) == len(set(ids)) == expected, "each alert delivered exactly once"
    assert _query(
        database,
        "SELECT status, count(*), min(attempts), max(attempts) FROM alerts GROUP BY status",
    ) == [("delivered", expected, 1, 1)]
    assert _scalar(database, "SELECT count(*) FROM alert_attempts WHERE outcome = 'delivered'") == (
        expected
    )


def test_a_channel_that_is_down_delays_only_its_alerts_then_delivers_each_once(
    database: str, endpoints: Endpoints, tmp_path: Path, scored: pl.DataFrame
) -> None:
    topic = f"alerts-{uuid.uuid4().hex[:8]}"
    with http_receiver(secret=SECRET.encode(), up=False) as receiver:
        settings = _settings(
            database, endpoints, tmp_path, dedupe_window_s=0,
            channels={**_webhook_channels(receiver.port),
                      "topic": {"kind": "kafka", "topic": topic}},
            routes=[{"name": "to-hook", "channel": "hook"},
                    {"name": "to-topic", "channel": "topic"}],
        )  # fmt: skip
        frame = scored.head(400)
        _write(settings, frame)
        flagged = frame.filter("is_flagged").height
        with dispatching(settings) as totals:
            wait_for(
                lambda: _scalar(database, "SELECT count(*) FROM alerts WHERE route = 'to-topic'"
                                " AND status = 'delivered'") == flagged,
                60, "the Kafka channel delivered while the webhook is down",
            )  # fmt: skip
            wait_for(lambda: receiver.refused >= 3, 30, "several tries at the webhook")
            assert receiver.requests == []
            pending = _scalar(
                database,
                "SELECT count(*) FROM alerts WHERE route = 'to-hook' AND status = 'pending'",
            )
            assert pending == flagged
            receiver.up = True
            wait_for(lambda: len(receiver.ids()) >= flagged, 60, "the webhook back and served")
            time.sleep(0.5)
    ids = receiver.ids()
    assert len(ids) == len(set(ids)) == flagged, "every alert delivered once after the outage"
    assert totals["hook"].failed_attempts >= 3
    failed = _scalar(
        database,
        "SELECT count(*) FROM alert_attempts WHERE channel = 'hook' AND outcome = 'failed'",
    )
    assert failed == totals["hook"].failed_attempts
    assert _scalar(database, "SELECT count(*) FROM alerts WHERE status <> 'delivered'") == 0
    messages = read_messages(endpoints.kafka, topic, flagged, timeout=30)
    assert len(messages) == flagged


def test_alerts_for_one_card_inside_the_window_are_suppressed_as_duplicates(
    database: str, endpoints: Endpoints, tmp_path: Path, scored: pl.DataFrame
) -> None:
    base = scored.filter("is_flagged").head(5)
    start = datetime(2026, 11, 20, 12, tzinfo=UTC)
    offsets_min = [0, 10, 50, 70, 200]  # window 60 min: kept, dup, dup, kept (70 > 60), kept
    frame = base.with_columns(
        card_ref=pl.lit("tok_same_card"),
        timestamp=pl.Series([start + timedelta(minutes=m) for m in offsets_min]).dt.cast_time_unit(
            "us"
        ),
    )
    with http_receiver(secret=SECRET.encode()) as receiver:
        settings = _settings(
            database, endpoints, tmp_path, dedupe_window_s=3600,
            channels=_webhook_channels(receiver.port),
            routes=[{"name": "to-hook", "channel": "hook"}],
        )  # fmt: skip
        _write(settings, frame)
        with dispatching(settings):
            wait_for(
                lambda: (
                    _scalar(database, "SELECT count(*) FROM alerts WHERE status = 'pending'") == 0
                ),
                30,
                "every alert handled",
            )
    rows = _query(
        database,
        "SELECT a.status, d.event_time FROM alerts a LEFT JOIN alerts d ON d.id = a.duplicate_of"
        " ORDER BY a.event_time",
    )
    assert [status for status, _ in rows] == [
        "delivered", "suppressed", "suppressed", "delivered", "delivered",
    ]  # fmt: skip
    assert rows[1][1] == rows[2][1] == start, "both repeat the first alert"
    assert len(receiver.ids()) == 3


def test_a_channel_rate_limit_spaces_messages_without_dropping_any(
    database: str, endpoints: Endpoints, tmp_path: Path, scored: pl.DataFrame
) -> None:
    frame = scored.filter("is_flagged").head(8)
    with http_receiver() as receiver:
        channels = _webhook_channels(receiver.port)
        channels["hook"].update(rate_per_minute=600, burst=1)  # one message per 0.1 s
        settings = _settings(
            database, endpoints, tmp_path, dedupe_window_s=0, channels=channels,
            routes=[{"name": "to-hook", "channel": "hook"}],
        )  # fmt: skip
        _write(settings, frame)
        with dispatching(settings):
            wait_for(lambda: len(receiver.requests) >= 8, 30, "every alert delivered")
    times = [r.received_at for r in receiver.requests]
    assert len(times) == 8
    assert times[-1] - times[0] >= 0.6, "8 messages at 10/s with a burst of 1 take 0.7 s"


# --- email ----------------------------------------------------------------------------------


def test_email_alerts_one_by_one_and_as_a_digest_over_starttls_with_login(
    database: str, endpoints: Endpoints, tmp_path: Path, scored: pl.DataFrame
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    frame = scored.head(500)
    flagged = frame.filter("is_flagged")
    declines = flagged.filter(pl.col("action") == "decline").height
    reviews = flagged.height - declines
    assert declines and reviews
    with smtp_server(tls=(cert, key), login=("alerts", "pw")) as (mailbox, port):
        email = {"kind": "email", "host": "127.0.0.1", "port": port, "security": "starttls",
                 "username": "alerts", "password": "pw", "ca_file": str(cert),
                 "sender": "fraud@example.com"}  # fmt: skip
        settings = _settings(
            database, endpoints, tmp_path, dedupe_window_s=0,
            channels={"mail": email, "digest": {**email, "digest_s": 0.5}},
            routes=[
                {"name": "declines", "channel": "mail", "actions": ["decline"],
                 "recipients": ["ops@example.com"]},
                {"name": "reviews", "channel": "digest", "actions": ["review"],
                 "recipients": ["analysts@example.com", "lead@example.com"]},
            ],
        )  # fmt: skip
        _write(settings, frame)
        with dispatching(settings):
            wait_for(
                lambda: (
                    _scalar(database, "SELECT count(*) FROM alerts WHERE status = 'pending'") == 0
                ),
                60,
                "every alert mailed",
            )
    ops = mailbox.to("ops@example.com")
    assert len(ops) == declines
    one = ops[0]
    assert one["Subject"].startswith("[fraudstream] DECLINE")
    assert one["From"] == "fraud@example.com"
    assert one.get_body(("plain",)) is not None and one.get_body(("html",)) is not None
    digests = mailbox.to("analysts@example.com")
    assert digests == mailbox.to("lead@example.com")
    assert 1 <= len(digests) < reviews
    in_digests = [int(i) for m in digests for i in m["X-Fraudstream-Alert-Ids"].split(",")]
    assert len(in_digests) == len(set(in_digests)) == reviews
    assert set(mailbox.logins) == {"alerts"}, "every connection logged in"
    assert _scalar(database, "SELECT count(DISTINCT delivery_id) FROM alerts"
                   " WHERE route = 'reviews'") == len(digests)  # fmt: skip


def test_email_over_implicit_tls_with_login(
    database: str, endpoints: Endpoints, tmp_path: Path, scored: pl.DataFrame
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    frame = scored.filter("is_flagged").head(3)
    with smtp_server(tls=(cert, key), login=("alerts", "pw"), implicit_tls=True) as (box, port):
        settings = _settings(
            database, endpoints, tmp_path, dedupe_window_s=0,
            channels={"mail": {"kind": "email", "host": "127.0.0.1", "port": port,
                               "security": "ssl", "username": "alerts", "password": "pw",
                               "ca_file": str(cert)}},
            routes=[{"name": "all", "channel": "mail", "recipients": ["ops@example.com"]}],
        )  # fmt: skip
        _write(settings, frame)
        with dispatching(settings):
            wait_for(lambda: len(box.messages) >= 3, 30, "three alerts mailed over TLS")
    assert len(box.to("ops@example.com")) == 3 and box.logins == ["alerts"] * 3


# --- crashes and standby --------------------------------------------------------------------


def test_a_dispatcher_killed_mid_delivery_resends_nothing_delivered_and_loses_nothing(
    database: str, endpoints: Endpoints, tmp_path: Path, scored: pl.DataFrame
) -> None:
    frame = scored.head(600)
    flagged = frame.filter("is_flagged").height
    with http_receiver(secret=SECRET.encode(), hold_after=5) as receiver:
        settings = _settings(
            database, endpoints, tmp_path, dedupe_window_s=0,
            channels=_webhook_channels(receiver.port),
            routes=[{"name": "to-hook", "channel": "hook"}],
        )  # fmt: skip
        _write(settings, frame)
        env = worker_environment(settings)
        command = [sys.executable, "-m", "fraudstream", "alerts", "dispatch"]
        log = (tmp_path / "dispatcher.log").open("wb")
        first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            assert receiver.holding.wait(60), "the sixth delivery reached the receiver"
            delivered_before = _query(
                database, "SELECT id FROM alerts WHERE status = 'delivered' ORDER BY id"
            )
            first.kill()  # mid-delivery: the sixth request is in flight
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        receiver.release.set()  # the receiver completes it, to a client that is gone
        assert len(delivered_before) == 5
        second = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(
                lambda: (
                    _scalar(database, "SELECT count(*) FROM alerts WHERE status = 'pending'") == 0
                ),
                60,
                "the restarted dispatcher delivered the rest",
            )
        finally:
            second.terminate()
            assert second.wait(30) == 0, "SIGTERM stops the dispatcher cleanly"
    received = Counter(receiver.ids())
    stored = {row[0] for row in _query(database, "SELECT id FROM alerts")}
    assert set(received) == stored and len(stored) == flagged, "nothing lost"
    assert all(received[row[0]] == 1 for row in delivered_before), "nothing delivered resent"
    repeated = [alert for alert, times in received.items() if times > 1]
    assert len(repeated) <= 1, "only the message in flight at the kill may come twice"


def test_a_second_dispatcher_stands_by_while_the_first_serves_the_channel(
    database: str, endpoints: Endpoints, tmp_path: Path, scored: pl.DataFrame
) -> None:
    frame = scored.head(600)
    flagged = frame.filter("is_flagged").height
    with http_receiver() as receiver:
        settings = _settings(
            database, endpoints, tmp_path, dedupe_window_s=0,
            channels=_webhook_channels(receiver.port),
            routes=[{"name": "to-hook", "channel": "hook"}],
        )  # fmt: skip
        _write(settings, frame)
        with dispatching(settings) as first, dispatching(settings) as second:
            wait_for(lambda: len(receiver.ids()) >= flagged, 60, "every alert delivered")
            time.sleep(0.5)
    ids = receiver.ids()
    assert len(ids) == len(set(ids)) == flagged
    assert sorted(t["hook"].delivered for t in (first, second)) == [0, flagged]


def test_settings_reach_a_dispatcher_process_intact(tmp_path: Path) -> None:
    """Nested alert settings travel to child processes as JSON environment variables."""
    settings = load_settings(
        alerts={
            "channels": _webhook_channels(9),
            "routes": [{"name": "r", "channel": "hook", "actions": ["decline"]}],
        }
    )
    env = worker_environment(settings)
    child = subprocess.run(
        [sys.executable, "-c",
         "from fraudstream.config import load_settings; s = load_settings().alerts;"
         "print(s.channels['hook'].secret.get_secret_value(), s.routes[0].actions)"],
        env={**env, "PATH": os.environ.get("PATH", "")}, capture_output=True, text=True,
        check=True, cwd=tmp_path,
    )  # fmt: skip
    assert child.stdout.strip() == f"{SECRET} ['decline']"


# --- the pipeline ---------------------------------------------------------------------------


def test_workers_keep_scoring_while_a_channel_is_down_and_its_alerts_follow(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    stream = generate(GeneratorConfig(seed=5, n_transactions=4000, days=2))
    total = stream.transactions.height
    with http_receiver(secret=SECRET.encode(), up=False) as receiver:
        alerts = {
            "channels": _webhook_channels(receiver.port),
            "routes": [{"name": "to-hook", "channel": "hook"}],
            "dedupe_window_s": 0, "retry_base_s": 0.2, "retry_max_s": 1.0,
            "poll_interval_s": 0.1,
        }  # fmt: skip
        with fresh_pipeline(endpoints, tmp_path, alerts=alerts) as pipeline:
            workers = pipeline.workers(1)
            workers.start()
            try:
                with dispatching(pipeline.settings):
                    assert workers.wait_assigned(60)
                    producer = TransactionProducer(
                        endpoints.kafka, pipeline.settings.kafka.transactions_topic
                    )
                    producer.publish(stream.transactions, rate=4000)
                    wait_for(lambda: pipeline.holds(total, 0), 120, "every transaction scored")
                    flagged = pipeline.count("fraud_transactions")
                    assert flagged > 0
                    wait_for(lambda: pipeline.count("alerts") == flagged, 30, "the outbox")
                    assert receiver.refused >= 1 and receiver.requests == []
                    receiver.up = True
                    wait_for(lambda: len(receiver.ids()) >= flagged, 60, "alerts after the outage")
                    time.sleep(0.5)
            finally:
                assert workers.stop() == [0]
            stored = {row[0] for row in pipeline.query("SELECT id FROM alerts")}
    ids = receiver.ids()
    assert len(ids) == len(set(ids)) == flagged and set(ids) == stored
