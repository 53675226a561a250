"""Assemble and run the scoring API from settings: the stream fold, the scoring service, keys,
metrics and the HTTP server (uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import uvicorn
from confluent_kafka import Producer
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from fraudstream.adapters.api_keys import KeyStore
from fraudstream.adapters.cases import CaseStore
from fraudstream.adapters.kafka import PRODUCER_DEFAULTS
from fraudstream.adapters.kafka_sinks import new_consumer
from fraudstream.adapters.lists import ListReader, ListStore
from fraudstream.adapters.rules_store import RuleStore
from fraudstream.adapters.stored_decisions import StoredDecisions
from fraudstream.config import Settings
from fraudstream.core.decision_record import DecisionRecord, decision_key
from fraudstream.core.engine import available_columns
from fraudstream.core.features import FeatureConfig
from fraudstream.core.rules import Rule, RulesetSpec
from fraudstream.ml.rule_backtest import RuleBacktest, run_rule_backtest
from fraudstream.runners.api_app import create_app
from fraudstream.runners.api_auth import Authenticator, RateLimiter
from fraudstream.runners.api_fold import StreamFollower
from fraudstream.runners.api_publish import DecisionPublisher
from fraudstream.runners.api_scoring import ReplayMemory, ScoringService, ScoringTotals
from fraudstream.runners.heap import freeze_startup_heap
from fraudstream.runners.serve import (
    checkpoint_store,
    engine_source,
    kafka_client,
    model_signing_key,
    postgres_url,
    prepare_pipeline,
    ruleset_watcher,
)
from fraudstream.runners.stream_state import StreamState

log = logging.getLogger("fraudstream.api")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ApiRuntime:
    """Everything behind the routes (see `api_app.Runtime`), wired to the settings' servers."""

    def __init__(self, settings: Settings) -> None:
        prepare_pipeline(settings)
        api = settings.api
        kafka = kafka_client(settings)
        url = postgres_url(settings)
        config = FeatureConfig()
        key = decision_key(model_signing_key(settings))
        self.origin = f"api-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._stop = threading.Event()
        memory = ReplayMemory(api.replay_memory)
        self.follower = StreamFollower(
            reader=new_consumer(
                kafka,
                f"{settings.worker.group_id}.api",
                settings.worker.session_timeout_ms,
                **{"fetch.wait.max.ms": api.fold_fetch_wait_ms, "fetch.min.bytes": 1 << 20},
            ),
            topic=settings.kafka.transactions_topic,
            state=StreamState(config, checkpoints=checkpoint_store(settings), worker="api"),
            origin=self.origin,
            decision_key=key,
            remember=memory.remember,
            end_grace_s=settings.worker.end_grace_ms / 1000,
        )
        self._stored = StoredDecisions(url)
        self.lists = ListStore(url)
        self.cases = CaseStore(url)
        rules = ruleset_watcher(settings, config)
        # The store sees the rules file as the engine last loaded it (read, never polled, here).
        self.rules = RuleStore(url, available_columns(config), lambda: rules.base)
        self._url = url
        self.registry = CollectorRegistry()
        batch_sizes = Histogram(
            "fraudstream_api_score_batch_size", "Requests scored as one batch",
            buckets=_BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._config = config
        self._engine = engine_source(settings, config, rules)
        self.service = ScoringService(
            follower=self.follower,
            engine=self._engine,
            publisher=DecisionPublisher(
                Producer({**PRODUCER_DEFAULTS, **kafka, "linger.ms": api.linger_ms}),
                settings.kafka.transactions_topic,
                key,
                self.origin,
            ),
            stored=self._stored,
            memory=memory,
            max_batch=api.max_batch,
            on_batch=batch_sizes.observe,
        )
        self._keys = KeyStore(url)
        self.auth = Authenticator(self._keys, api.key_cache_s)
        self.limiter = RateLimiter()
        self._requests = Counter(
            "fraudstream_api_requests", "HTTP requests by route and status",
            ["route", "status"], registry=self.registry,
        )  # fmt: skip
        self._latency = Histogram(
            "fraudstream_api_request_seconds", "Time to answer, by route",
            ["route"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        Gauge(
            "fraudstream_api_ready", "1 once the stream is folded to its end",
            registry=self.registry,
        ).set_function(lambda: float(self.ready()))  # fmt: skip
        Gauge(
            "fraudstream_api_folded_transactions", "Stream transactions folded since start",
            registry=self.registry,
        ).set_function(lambda: float(self.folded()))  # fmt: skip
        self.registry.register(_TotalsCollector(self.service.totals))

    def ready(self) -> bool:
        return self.follower.ready.is_set()

    def backtest_rule(
        self, candidate: Rule, live: RulesetSpec, days: float, until: datetime | None
    ) -> RuleBacktest:
        """Replay `days` of stored transactions up to `until` (default: now) with `candidate`
        beside `live`, with the lists in force now (blocking: run it on a worker thread)."""
        reader = ListReader(self._url)
        try:
            lists = reader.snapshot()
        finally:
            reader.close()
        return run_rule_backtest(
            self._url, live, candidate, days=days, now=until or datetime.now(UTC), lists=lists,
            config=self._config,
        )  # fmt: skip

    def folded(self) -> int:
        return self.follower.folded

    async def stored(self, transaction_id: str) -> DecisionRecord | None:
        return (await self._stored.find([transaction_id])).get(transaction_id)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self._requests.labels(route, str(status)).inc()
        self._latency.labels(route).observe(seconds)

    async def start(self) -> None:
        """Load the engine's kernels, start folding the stream, and start scoring."""
        await asyncio.to_thread(self._engine().warm_up, self._config)
        freeze_startup_heap()
        self.follower.start(self._stop)
        self.service.start()
        log.info("scoring API %s started", self.origin)

    async def stop(self) -> None:
        self._stop.set()
        await self.service.stop()
        await asyncio.to_thread(self.follower.join, 10.0)
        self._keys.close()


class _TotalsCollector(Collector):
    def __init__(self, totals: ScoringTotals) -> None:
        self._totals = totals

    def collect(self) -> Iterator[CounterMetricFamily]:
        totals = self._totals
        for name, value, text in (
            ("fraudstream_api_scored", totals.scored, "Transactions scored by the API"),
            ("fraudstream_api_replayed", totals.replayed, "Requests answered as replays"),
            ("fraudstream_api_replay_conflicts", totals.conflicts, "Keys reused for other bodies"),
        ):
            yield CounterMetricFamily(name, text, value=value)


def build_app(settings: Settings) -> FastAPI:
    return create_app(ApiRuntime(settings))


class _Server(uvicorn.Server):
    """Uvicorn's server, but a SIGTERM or SIGINT that stopped it cleanly is not raised again
    afterwards: the process exits 0, as every other fraudstream process does."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def serve_api(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then stop cleanly."""
    # The event loop does the scoring; threads that only wait (the broker's confirmations, the
    # stream fold) hand results back. A shorter switch interval than 5 ms bounds how long such
    # a result waits for the GIL while the loop is busy.
    sys.setswitchinterval(0.001)
    app = build_app(settings)
    config = uvicorn.Config(
        app,
        host=host or settings.api.host,
        port=settings.api.port if port is None else port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    _Server(config).run()
