"""A worker's Prometheus metrics, fed synthetic batches and read back as Prometheus would."""

from __future__ import annotations

import socket
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import polars as pl
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fraudstream.adapters.metrics import (
    LATENCY_BUCKETS,
    METRIC_NAMES,
    SERIES_NAMES,
    WorkerMetrics,
)
from fraudstream.config import SettingsError, load_settings
from fraudstream.core.events import Transaction, to_frame
from fraudstream.core.features import FeatureState
from fraudstream.runners.local import metrics_port_text
from fraudstream.runners.serve import start_telemetry
from fraudstream.runners.worker import WorkerTotals

T0 = datetime(2026, 1, 5, 12, tzinfo=UTC)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: WorkerMetrics) -> Samples:
    """Every sample of the registry, parsed from the text Prometheus scrapes."""
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset({"worker": "w1", **labels}.items()))]


def scored(latencies_s: list[float | None], ruleset: str = "v1") -> pl.DataFrame:
    """A `ScoredBatch.frame` as far as metrics read it: five decided transactions."""
    decided_at = T0 + timedelta(minutes=1)
    ingested = [None if s is None else decided_at - timedelta(seconds=s) for s in latencies_s]
    return pl.DataFrame(
        {
            "action": ["approve", "approve", "review", "decline", "decline"],
            "rules_fired": [[], [], ["amount"], ["amount", "velocity"], ["velocity"]],
            "shadow_rules_fired": [["night"], [], [], ["night"], []],
            "ingested_at": ingested,
            "decided_at": [decided_at] * 5,
            "ruleset_version": [ruleset] * 5,
        },
        schema_overrides={
            "ingested_at": pl.Datetime("us", "UTC"),
            "decided_at": pl.Datetime("us", "UTC"),
            "rules_fired": pl.List(pl.String),
            "shadow_rules_fired": pl.List(pl.String),
        },
    )


def test_a_batch_is_counted_by_action_rule_and_dead_letter() -> None:
    metrics = WorkerMetrics("w1")
    metrics.batch_scored(scored([0.004, 0.02, 0.3, 4.0, None]), dead_letters=2, seconds=0.05)
    samples = scrape(metrics)
    assert value(samples, "fraudstream_messages_consumed_total") == 7
    assert value(samples, "fraudstream_dead_letters_total") == 2
    by_action = {
        a: value(samples, "fraudstream_decisions_total", action=a)
        for a in ("approve", "review", "decline")
    }
    assert by_action == {"approve": 2, "review": 1, "decline": 2}
    assert value(samples, "fraudstream_rule_hits_total", rule="amount") == 2
    assert value(samples, "fraudstream_rule_hits_total", rule="velocity") == 2
    assert value(samples, "fraudstream_shadow_rule_hits_total", rule="night") == 2
    assert (
        "fraudstream_rule_hits_total",
        frozenset({("worker", "w1"), ("rule", "night")}),
    ) not in samples, "a shadow hit is not a live hit"
    assert value(samples, "fraudstream_batch_size_sum") == 7
    assert value(samples, "fraudstream_batch_size_count") == 1
    assert value(samples, "fraudstream_batch_seconds_sum") == pytest.approx(0.05)
    # the row without a Kafka timestamp has no latency
    assert value(samples, "fraudstream_event_to_decision_seconds_count") == 4
    assert value(samples, "fraudstream_event_to_decision_seconds_sum") == pytest.approx(4.324)
    assert value(samples, "fraudstream_worker_info", version="0.1.0", ruleset_version="v1") == 1
    assert all(dict(labels)["worker"] == "w1" for _, labels in samples)


def test_the_bulk_latency_histogram_matches_one_observation_per_row() -> None:
    """Bucket edges included: a value equal to a bound belongs to that bound's bucket."""
    rng = np.random.default_rng(3)
    values = [*rng.exponential(0.5, 995).tolist(), 0.005, 1.0, 30.0, 31.0, 0.0]
    reference = Histogram("ref", "", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    for v in values:
        reference.observe(v)
    metrics = WorkerMetrics("w1")
    metrics.event_to_decision.observe_many(np.array(values))
    ours = scrape(metrics)
    for le, count in _reference_buckets(reference).items():
        assert value(ours, "fraudstream_event_to_decision_seconds_bucket", le=le) == count, le
    assert value(ours, "fraudstream_event_to_decision_seconds_sum") == pytest.approx(sum(values))


def _reference_buckets(histogram: Histogram) -> dict[str, float]:
    return {
        s.labels["le"]: s.value
        for metric in histogram.collect()
        for s in metric.samples
        if s.name.endswith("_bucket")
    }


def test_a_batch_is_counted_once_every_sink_confirmed_it_and_never_if_given_up() -> None:
    metrics = WorkerMetrics("w1")
    written: Future[bool] = Future()
    metrics.batch_scored(scored([0.1] * 5), dead_letters=1, seconds=0.01, written=written)
    pending = scrape(metrics)
    assert value(pending, "fraudstream_messages_consumed_total") == 0
    assert value(pending, "fraudstream_batch_seconds_count") == 1  # scoring is done
    written.set_result(True)
    stored = scrape(metrics)
    assert value(stored, "fraudstream_messages_consumed_total") == 6
    assert value(stored, "fraudstream_batch_write_seconds_count") == 1
    abandoned: Future[bool] = Future()
    metrics.batch_scored(scored([0.1] * 5), dead_letters=0, seconds=0.01, written=abandoned)
    abandoned.set_result(False)  # stopped during an outage: it will be read again
    assert value(scrape(metrics), "fraudstream_messages_consumed_total") == 6


def test_each_sink_s_write_time_is_its_own_series() -> None:
    metrics = WorkerMetrics("w1")
    for seconds in (0.02, 0.03, 0.7):
        metrics.sink_wrote("PostgresSink", seconds)
    metrics.sink_wrote("DecisionsTopicSink", 0.004)
    samples = scrape(metrics)
    postgres = {"sink": "PostgresSink"}
    assert value(samples, "fraudstream_sink_write_seconds_count", **postgres) == 3
    assert value(samples, "fraudstream_sink_write_seconds_sum", **postgres) == pytest.approx(0.75)
    assert value(samples, "fraudstream_sink_write_seconds_bucket", le="0.5", **postgres) == 2
    topic = {"sink": "DecisionsTopicSink"}
    assert value(samples, "fraudstream_sink_write_seconds_count", **topic) == 1


def test_lag_follows_the_partitions_held_and_says_whether_it_is_exact() -> None:
    metrics = WorkerMetrics("w1")
    metrics.lag({0: 5, 3: -2}, exact=False)
    samples = scrape(metrics)
    assert value(samples, "fraudstream_consumer_lag_messages", partition="0") == 5
    assert value(samples, "fraudstream_consumer_lag_messages", partition="3") == 0
    assert value(samples, "fraudstream_consumer_lag_exact") == 0
    metrics.lag({3: 7}, exact=True)
    samples = scrape(metrics)
    lagging = {dict(labels)["partition"] for name, labels in samples if "lag_messages" in name}
    assert lagging == {"3"}, "a partition no longer held must not keep showing its old lag"
    assert value(samples, "fraudstream_consumer_lag_exact") == 1
    help_text = generate_latest(metrics.registry).decode()
    assert "base offset of the partition's last record batch plus one" in help_text


def _transactions(cards: int, start: int) -> pl.DataFrame:
    return to_frame(
        [
            Transaction(
                transaction_id=f"t{start + i}",
                timestamp=T0 + timedelta(seconds=start + i),
                amount=20.0,
                card_ref=f"card{i % cards}",
                customer_id=f"cust{i % cards}",
                merchant_id="m1",
            )
            for i in range(cards * 2)
        ]
    )


def test_state_size_is_measured_at_most_every_few_seconds() -> None:
    metrics, state = WorkerMetrics("w1"), FeatureState()
    state.update(_transactions(cards=3, start=0))
    metrics.state(state, now_s=100.0)
    assert value(scrape(metrics), "fraudstream_state_entities", entity="card") == 3
    first_bytes = value(scrape(metrics), "fraudstream_state_bytes")
    assert first_bytes == state.stats().memory_bytes > 0
    state.update(_transactions(cards=8, start=100))
    metrics.state(state, now_s=101.0)
    assert value(scrape(metrics), "fraudstream_state_entities", entity="card") == 3
    metrics.state(state, now_s=106.0)
    samples = scrape(metrics)
    assert value(samples, "fraudstream_state_entities", entity="card") == 8
    assert value(samples, "fraudstream_state_bytes") > first_bytes


def test_the_worker_s_own_counts_are_read_when_scraped() -> None:
    metrics, totals = WorkerMetrics("w1"), WorkerTotals()
    metrics.follow(totals)
    totals.folded, totals.sink_retries, totals.commit_failures = 40, 2, 1
    samples = scrape(metrics)
    assert value(samples, "fraudstream_messages_folded_total") == 40
    assert value(samples, "fraudstream_sink_retries_total") == 2
    assert value(samples, "fraudstream_commit_failures_total") == 1


def test_metric_names_are_exactly_the_series_exposed() -> None:
    """`METRIC_NAMES` is what dashboards may query: every name in it is exposed once fed,
    and nothing exposed is missing from it (`_created` aside, prometheus-client's extra)."""
    metrics = WorkerMetrics("w1")
    metrics.follow(WorkerTotals())
    written: Future[bool] = Future()
    metrics.batch_scored(scored([0.1] * 5), dead_letters=0, seconds=0.01, written=written)
    written.set_result(True)
    metrics.sink_wrote("PostgresSink", 0.02)
    metrics.lag({0: 1}, exact=True)
    metrics.state(FeatureState(), now_s=0.0)
    exposed = {name for name, _ in scrape(metrics) if not name.endswith("_created")}
    assert exposed == SERIES_NAMES
    assert len(METRIC_NAMES) == len(set(METRIC_NAMES)) == 18
    assert all(name.startswith("fraudstream_") for name in METRIC_NAMES)


def test_metrics_are_served_over_http_on_a_free_port_until_closed() -> None:
    metrics = WorkerMetrics("w1")
    port = metrics.serve(0)
    try:
        assert port > 0
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200
        assert 'fraudstream_dead_letters_total{worker="w1"} 0.0' in response.text
    finally:
        metrics.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_each_local_worker_gets_its_own_fixed_port_or_none() -> None:
    assert [metrics_port_text(9108, n) for n in range(3)] == ["9108", "9109", "9110"]
    assert metrics_port_text(0, 2) == "0", "0 means a free port for every worker"
    off = metrics_port_text(None, 1)
    assert load_settings(worker={"metrics_port": off}).worker.metrics_port is None
    assert load_settings(worker={"metrics_port": "9109"}).worker.metrics_port == 9109


def test_a_fixed_port_already_taken_is_a_settings_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = load_settings(
            kafka={"bootstrap_servers": "127.0.0.1:1"}, worker={"metrics_port": port}
        )
        with pytest.raises(SettingsError, match=f"worker.metrics_port {port}"):
            start_telemetry(settings, "w1")
