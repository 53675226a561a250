"""Prometheus metrics of one scoring worker, on a registry of its own, served over HTTP.

An adapter: it turns what the worker did (a scored batch as a Polars frame, a write, a lag
reading, the state's size) into Prometheus series, and serves them at `/metrics`. Every series
carries a `worker` label, the worker's name, so one dashboard sums or splits a whole group.

Metrics cost once per batch, never once per message: counters are incremented from aggregates
of the batch (`value_counts` of the action, the flattened `rules_fired`), the batch histograms
take one observation each, and the per-transaction latency histogram is filled with one
`searchsorted` over the batch (`_BulkHistogram`), not an `observe` per row (which costs twice
as much as all the rest). Counting waits for the sinks to confirm the batch and runs in the
writer's thread, so the scoring loop itself pays one histogram observation per batch
(`bench/worker_metrics.py` measures both).

The names below are a contract: the shipped Grafana dashboard queries them, and a test checks
each against a real Prometheus scraping real workers. `METRIC_NAMES` lists them as PromQL sees
them (counters with `_total`; histograms by their base name, queried as `_bucket`, `_sum` and
`_count`, all of which `SERIES_NAMES` holds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Protocol
from wsgiref.simple_server import WSGIServer

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from fraudstream import __version__
from fraudstream.core.decision import ACTIONS

if TYPE_CHECKING:
    from fraudstream.core.features import FeatureState

PREFIX = "fraudstream_"
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000)
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
STATE_REFRESH_S = 5.0
"""How often the state's size is measured (a pass over its key tables: cheap, not free)."""

LAG_HELP = (
    "Messages of this worker's partitions not yet committed: the partition's high watermark "
    "minus the group's committed offset (never below 0), asked of the broker every few "
    "seconds. On the embedded broker (Tansu) the reported high watermark is the base offset "
    "of the partition's last record batch plus one, so this may read low by up to one record "
    "batch; fraudstream_consumer_lag_exact is 0 there."
)

COUNTERS = {
    f"{PREFIX}messages_consumed_total": "Messages this worker scored and every sink stored: "
    "decided transactions plus dead letters of its own partitions.",
    f"{PREFIX}messages_folded_total": "Messages only folded into the feature state (other "
    "workers' partitions, or before the committed offset).",
    f"{PREFIX}decisions_total": "Decided transactions by action.",
    f"{PREFIX}rule_hits_total": "Decided transactions on which a rule fired, by rule.",
    f"{PREFIX}shadow_rule_hits_total": "Decided transactions on which a shadow rule fired"
    " (recorded, never deciding), by rule.",
    f"{PREFIX}dead_letters_total": "Undecodable or invalid messages stored as dead letters.",
    f"{PREFIX}sink_retries_total": "Rounds of retrying the sinks that had not confirmed a batch.",
    f"{PREFIX}commit_failures_total": "Offset commits that failed (the batch is read again).",
}
HISTOGRAMS = {
    f"{PREFIX}batch_size": "Messages per stored batch (decided transactions and dead letters).",
    f"{PREFIX}batch_seconds": "Time to fold and score one batch.",
    f"{PREFIX}batch_write_seconds": "Time for every sink to confirm one batch, retries included.",
    f"{PREFIX}sink_write_seconds": "Time for one sink to store one batch, by sink (a try that "
    "succeeded; the sinks write side by side, so a batch waits for the slowest).",
    f"{PREFIX}event_to_decision_seconds": "Per transaction: decided_at minus the Kafka message "
    "timestamp (ingested_at).",
}
GAUGES = {
    f"{PREFIX}state_entities": "Entities held in the feature state, by kind.",
    f"{PREFIX}state_bytes": "Bytes of feature state in use (entity rows, keys and event records).",
    f"{PREFIX}consumer_lag_messages": LAG_HELP,
    f"{PREFIX}consumer_lag_exact": "1 if consumer_lag_messages is exact, 0 on a broker whose high "
    "watermark is known to read low (the embedded one).",
    f"{PREFIX}worker_info": "Always 1; the labels say which fraudstream and ruleset run.",
}
METRIC_NAMES: tuple[str, ...] = (*COUNTERS, *HISTOGRAMS, *GAUGES)
SERIES_NAMES: frozenset[str] = frozenset(
    [*COUNTERS, *GAUGES]
    + [f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")]
)


class WorkerCounts(Protocol):
    """Running counts the worker keeps anyway (its `WorkerTotals`), read at scrape time."""

    folded: int
    sink_retries: int
    commit_failures: int


class WorkerMetrics:
    """The metrics of one worker. Thread-safe: the worker, its writer thread, the lag poller
    and the HTTP server touch it at once."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.registry = CollectorRegistry()
        self._server: tuple[WSGIServer, threading.Thread] | None = None
        one = ["worker"]
        self._consumed = self._counter("messages_consumed_total", one).labels(worker)
        self._dead_letters = self._counter("dead_letters_total", one).labels(worker)
        decisions = self._counter("decisions_total", [*one, "action"])
        self._decisions = {action: decisions.labels(worker, action) for action in ACTIONS}
        self._rule_hits = self._counter("rule_hits_total", [*one, "rule"])
        self._shadow_hits = self._counter("shadow_rule_hits_total", [*one, "rule"])
        self._batch_size = self._histogram("batch_size", BATCH_SIZE_BUCKETS)
        self._batch_seconds = self._histogram("batch_seconds", BATCH_SECONDS_BUCKETS)
        self._write_seconds = self._histogram("batch_write_seconds", BATCH_SECONDS_BUCKETS)
        self._sink_seconds = self._labelled_histogram(
            "sink_write_seconds", BATCH_SECONDS_BUCKETS, [*one, "sink"]
        )
        self.event_to_decision = _BulkHistogram(
            f"{PREFIX}event_to_decision_seconds", LATENCY_BUCKETS, {"worker": worker}
        )
        self.registry.register(self.event_to_decision)
        self._counts = _CountsCollector(worker)
        self.registry.register(self._counts)
        self._entities = self._gauge("state_entities", [*one, "entity"])
        self._state_bytes = self._gauge("state_bytes", one).labels(worker)
        self._lag = self._gauge("consumer_lag_messages", [*one, "partition"])
        self._lag_partitions: set[str] = set()
        self._lag_exact = self._gauge("consumer_lag_exact", one).labels(worker)
        self._info = self._gauge("worker_info", [*one, "version", "ruleset_version"])
        self._ruleset: str | None = None
        self._state_measured = -float("inf")

    def _counter(self, name: str, labels: list[str]) -> Counter:
        full = f"{PREFIX}{name}"
        return Counter(full, COUNTERS[full], labels, registry=self.registry)

    def _histogram(self, name: str, buckets: Sequence[float]) -> Histogram:
        return self._labelled_histogram(name, buckets, ["worker"]).labels(self.worker)

    def _labelled_histogram(
        self, name: str, buckets: Sequence[float], labels: list[str]
    ) -> Histogram:
        full = f"{PREFIX}{name}"
        return Histogram(full, HISTOGRAMS[full], labels, registry=self.registry, buckets=buckets)

    def _gauge(self, name: str, labels: list[str]) -> Gauge:
        full = f"{PREFIX}{name}"
        return Gauge(full, GAUGES[full], labels, registry=self.registry)

    # -- fed by the worker -------------------------------------------------------------------

    def follow(self, counts: WorkerCounts) -> None:
        """Report these running counts (read when scraped, so they cost the worker nothing)."""
        self._counts.counts = counts

    def batch_scored(
        self,
        frame: pl.DataFrame,
        dead_letters: int,
        seconds: float,
        written: Future[bool] | None = None,
    ) -> None:
        """One scored batch: `frame` its decided transactions (`ScoredBatch.frame`), plus
        `dead_letters` rejected messages; `seconds` the time it took to fold and score.

        With `written`, the sinks' write of the batch, the batch is counted once that confirms,
        in the thread that confirms it: off the scoring loop, and only when stored (a batch
        given up during an outage is read, and counted, again). Without it, at once."""
        self._batch_seconds.observe(seconds)
        if written is None:
            self.batch_stored(frame, dead_letters)
            return
        started = time.perf_counter()

        def done(future: Future[bool]) -> None:
            if future.cancelled() or future.exception() is not None or not future.result():
                return
            self._write_seconds.observe(time.perf_counter() - started)
            self.batch_stored(frame, dead_letters)

        written.add_done_callback(done)

    def sink_wrote(self, sink: str, seconds: float) -> None:
        """One sink's try at storing one batch took `seconds` (when a batch waits long, this
        says which server it waited for)."""
        self._sink_seconds.labels(self.worker, sink).observe(seconds)

    def batch_stored(self, frame: pl.DataFrame, dead_letters: int) -> None:
        """Count a batch every sink confirmed: `frame` with `action`, `rules_fired`,
        `shadow_rules_fired`, `ingested_at`, `decided_at` and `ruleset_version`, as
        `ScoredBatch.frame` has them."""
        messages = frame.height + dead_letters
        self._consumed.inc(messages)
        self._dead_letters.inc(dead_letters)
        self._batch_size.observe(messages)
        if frame.is_empty():
            return
        for action, count in frame.get_column("action").value_counts().iter_rows():
            self._decisions[action].inc(count)
        for rule, count in _rule_hits(frame.get_column("rules_fired")):
            self._rule_hits.labels(self.worker, rule).inc(count)
        for rule, count in _rule_hits(frame.get_column("shadow_rules_fired")):
            self._shadow_hits.labels(self.worker, rule).inc(count)
        self.event_to_decision.observe_many(_latencies_s(frame))
        self._set_ruleset(frame.get_column("ruleset_version")[0])

    def state(self, features: FeatureState, now_s: float | None = None) -> None:
        """Measure the state's size, at most every `STATE_REFRESH_S` (call it freely)."""
        now_s = time.monotonic() if now_s is None else now_s
        if now_s - self._state_measured < STATE_REFRESH_S:
            return
        self._state_measured = now_s
        stats = features.stats()
        for kind, count in stats.entities.items():
            self._entities.labels(self.worker, kind).set(count)
        self._state_bytes.set(stats.memory_bytes)

    def lag(self, partitions: Mapping[int, int], exact: bool) -> None:
        """Lag per partition this worker holds; partitions it no longer holds are dropped."""
        current = {str(p) for p in partitions}
        for gone in self._lag_partitions - current:
            self._lag.remove(self.worker, gone)
        for partition, messages in partitions.items():
            self._lag.labels(self.worker, str(partition)).set(max(messages, 0))
        self._lag_partitions = current
        self._lag_exact.set(1 if exact else 0)

    def _set_ruleset(self, version: str) -> None:
        if version == self._ruleset:
            return
        if self._ruleset is not None:
            self._info.remove(self.worker, __version__, self._ruleset)
        self._info.labels(self.worker, __version__, version).set(1)
        self._ruleset = version

    # -- served ------------------------------------------------------------------------------

    def serve(self, port: int, address: str = "0.0.0.0") -> int:  # noqa: S104 - scraped from other hosts
        """Serve `/metrics` on `port` (0: any free one) in a daemon thread; the port."""
        server, thread = start_http_server(port, address, registry=self.registry)
        self._server = (server, thread)
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join()
            self._server = None


def _rule_hits(rules_fired: pl.Series) -> list[tuple[str, int]]:
    """(rule, rows it fired on) over a `rules_fired` column, through Arrow: flattening the list
    column there and counting cost less than Polars' `explode` and `value_counts` (measured at
    batch 1 000)."""
    lists = rules_fired.to_arrow()
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    fired = lists.flatten()
    if len(fired) == 0:
        return []
    return [(row["values"], row["counts"]) for row in pc.value_counts(fired).to_pylist()]


def _latencies_s(frame: pl.DataFrame) -> npt.NDArray[np.float64]:
    """decided_at - ingested_at of each row that has both, in seconds, at least 0 (the broker's
    clock may run a little ahead of the worker's). On NumPy's datetime64 views of the columns:
    Polars hands them over without a copy when they hold no nulls."""
    decided = frame.get_column("decided_at").to_numpy()
    ingested = frame.get_column("ingested_at").to_numpy()
    seconds = (decided - ingested) / np.timedelta64(1, "s")
    known: npt.NDArray[np.float64] = np.maximum(seconds[~np.isnan(seconds)], 0.0)
    return known


class _BulkHistogram(Collector):
    """A histogram filled a whole array at a time: bucket counts from one `searchsorted`
    (prometheus-client has no public way to add many observations to its `Histogram`)."""

    def __init__(self, name: str, bounds: Sequence[float], labels: Mapping[str, str]) -> None:
        self.name = name
        self._bounds = np.asarray(bounds, dtype=np.float64)
        self._labels = dict(labels)
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # the last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: npt.NDArray[np.float64]) -> None:
        # Bucket `le` holds values <= its bound: the first bound >= the value ("left").
        slots = np.searchsorted(self._bounds, values, side="left")
        counts = np.bincount(slots, minlength=self._counts.shape[0])
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        edges = [str(float(bound)) for bound in self._bounds] + ["+Inf"]
        family = self.describe_family()
        family.add_metric(
            list(self._labels.values()), list(zip(edges, cumulative, strict=True)), total
        )
        yield family

    def describe_family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, HISTOGRAMS[self.name], labels=list(self._labels))

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield self.describe_family()


_FOLLOWED = {
    f"{PREFIX}messages_folded_total": "folded",
    f"{PREFIX}sink_retries_total": "sink_retries",
    f"{PREFIX}commit_failures_total": "commit_failures",
}
"""Counter -> the `WorkerCounts` attribute it reports."""


class _CountsCollector(Collector):
    """The counters the worker keeps in its `WorkerTotals`, read when scraped."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.counts: WorkerCounts | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self.counts
        for name, attribute in _FOLLOWED.items():
            family = CounterMetricFamily(name, COUNTERS[name], labels=["worker"])
            family.add_metric([self.worker], 0 if counts is None else getattr(counts, attribute))
            yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        for name in _FOLLOWED:
            yield CounterMetricFamily(name, COUNTERS[name], labels=["worker"])
