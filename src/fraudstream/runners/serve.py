"""Assemble a scoring worker from settings: consumer, engine with hot-reloaded rules, feature
state, and the sinks (PostgreSQL, the `decisions` and `dead_letters` topics, and the Delta
history when `history.delta_path` is set)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from fraudstream.adapters.delta import DeltaHistorySink
from fraudstream.adapters.kafka import ensure_topics
from fraudstream.adapters.kafka_sinks import (
    DeadLetterTopicSink,
    DecisionsTopicSink,
    new_consumer,
    reader_config,
)
from fraudstream.adapters.lists import ListReader
from fraudstream.adapters.model_registry import ModelRegistry
from fraudstream.adapters.postgres import PostgresSink
from fraudstream.adapters.postgres_schema import migrate
from fraudstream.adapters.redis_state import CheckpointStore
from fraudstream.adapters.rules_file import RulesFile
from fraudstream.adapters.rules_store import RuleReader
from fraudstream.config import KafkaChannelSettings, Settings, SettingsError
from fraudstream.core.alerting import AlertRoute, AlertRouting, Severity
from fraudstream.core.decision_record import decision_key
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.features import FeatureConfig
from fraudstream.core.rules import load_default_ruleset_text, parse_ruleset
from fraudstream.ml.inputs import model_inputs
from fraudstream.ml.signing import signing_key
from fraudstream.ports import Sink
from fraudstream.runners.list_watcher import ListWatcher
from fraudstream.runners.models import ModelWatcher
from fraudstream.runners.rule_watcher import RulesetWatcher
from fraudstream.runners.stream_state import StreamState
from fraudstream.runners.worker import Worker, WorkerTotals
from fraudstream.runners.worker_metrics import WorkerTelemetry

log = logging.getLogger("fraudstream.worker")
WORKERS_DIR = "workers"


def prepare_pipeline(settings: Settings) -> None:
    """Topics and database schema, created or upgraded; safe to run from many processes."""
    kafka = settings.kafka
    client = kafka.client_config(_bootstrap(settings))
    topics = [kafka.transactions_topic, kafka.decisions_topic, kafka.dead_letters_topic]
    topics += [
        channel.topic
        for channel in settings.alerts.channels.values()
        if isinstance(channel, KafkaChannelSettings)
    ]
    ensure_topics(client, topics, kafka.partitions)
    migrate(_postgres_url(settings))


def engine_source(
    settings: Settings, config: FeatureConfig, rules: RulesetWatcher | None = None
) -> Callable[[], Engine]:
    """The current engine: its ruleset the rules file (`worker.rules_file`, else the shipped
    rules) merged with the database's managed rules, reloaded when either changes (by `rules`,
    made from the settings when not given); its live and shadow models from the `models`
    table, and its allow and deny lists from `list_entries`, when those change."""
    rules = rules or ruleset_watcher(settings, config)
    engine = Engine(rules.current)
    models = model_watcher(settings, config)
    lists = ListWatcher(ListReader(_postgres_url(settings)), settings.lists.poll_interval_s)

    def current() -> Engine:
        rules.poll(engine)
        models.poll(engine)
        lists.poll(engine)
        return engine

    return current


def ruleset_watcher(settings: Settings, config: FeatureConfig) -> RulesetWatcher:
    """The rules file (or the shipped rules) and the pipeline database's managed rules."""
    columns = available_columns(config)
    path = settings.worker.rules_file
    return RulesetWatcher(
        columns,
        parse_ruleset(load_default_ruleset_text()),
        None if path is None else RulesFile(path, columns),
        RuleReader(_postgres_url(settings)),
        settings.rules.poll_interval_s,
    )


def model_watcher(settings: Settings, config: FeatureConfig) -> ModelWatcher:
    """A watcher of the pipeline database's `models` table, verifying with the signing key."""
    inputs = [*model_inputs(config), "latitude", "longitude"]
    return ModelWatcher(
        ModelRegistry(_postgres_url(settings)),
        model_signing_key(settings),
        inputs,
        settings.models.poll_interval_s,
    )


def model_signing_key(settings: Settings) -> bytes:
    configured = settings.models.signing_key
    return signing_key(
        None if configured is None else configured.get_secret_value(), settings.stack.data_dir
    )


def build_worker(
    settings: Settings, name: str = "worker", telemetry: WorkerTelemetry | None = None
) -> Worker:
    """A worker wired to the servers the settings name (see `running_stack_settings`); it
    reports its partitions, and the port of its metrics if it has `telemetry`, in
    `stack.data_dir/workers/<name>.json` (see `assignments` and `metrics_endpoints`)."""
    config = FeatureConfig()
    kafka = settings.kafka
    client = kafka.client_config(_bootstrap(settings))
    worker = settings.worker
    return Worker(
        group=new_consumer(client, worker.group_id, worker.session_timeout_ms),
        reader=new_consumer(
            client,
            f"{worker.group_id}.reader",
            worker.session_timeout_ms,
            **reader_config(kafka.fetch_wait_ms, kafka.reader_prefetch_kb),
        ),
        topic=kafka.transactions_topic,
        engine=engine_source(settings, config),
        state=StreamState(
            config,
            checkpoints=checkpoint_store(settings),
            checkpoint_interval_s=worker.checkpoint_interval_s,
            worker=name,
        ),
        sinks=build_sinks(settings),
        max_batch=worker.max_batch,
        max_wait_s=worker.max_wait_ms / 1000,
        in_flight=worker.batches_in_flight,
        backoff_max_s=worker.retry_backoff_max_s,
        end_grace_s=worker.end_grace_ms / 1000,
        handover_wait_s=worker.handover_wait_s,
        on_assignment=_assignment_writer(
            settings.stack.data_dir / WORKERS_DIR / f"{name}.json", telemetry
        ),
        metrics=None if telemetry is None else telemetry.metrics,
        decision_key=decision_key(model_signing_key(settings)),
    )


def build_sinks(settings: Settings) -> list[Sink]:
    """Where every runner writes scored batches: PostgreSQL (with the alert outbox), the
    `decisions` and `dead_letters` topics, and the Delta history when it is configured."""
    kafka = settings.kafka
    client = kafka.client_config(_bootstrap(settings))
    sinks: list[Sink] = [
        PostgresSink(_postgres_url(settings), alert_routing=alert_routing(settings)),
        DecisionsTopicSink(client, kafka.decisions_topic),
        DeadLetterTopicSink(client, kafka.dead_letters_topic),
    ]
    history = settings.history
    if history.delta_path is not None:
        sinks.append(
            DeltaHistorySink(
                history.delta_path,
                kafka.transactions_topic,
                storage_options=history.storage_options,
            )
        )
    return sinks


def checkpoint_store(settings: Settings) -> CheckpointStore | None:
    """The group's checkpoints in Redis, or None with state `memory`."""
    if settings.worker.state == "memory":
        return None
    if settings.redis.url is None:
        raise SettingsError(
            "redis.url: unset, and no embedded stack is running in this project "
            "(or set worker.state to memory)"
        )
    namespace = f"fraudstream:state:{settings.worker.group_id}:{settings.kafka.transactions_topic}"
    return CheckpointStore(
        settings.redis.url.get_secret_value(),
        namespace,
        budget_bytes=settings.worker.checkpoint_budget_bytes,
    )


def _assignment_writer(
    path: Path, telemetry: WorkerTelemetry | None
) -> Callable[[list[int]], None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    port = None if telemetry is None else telemetry.port

    def write(partitions: list[int]) -> None:
        if telemetry is not None:
            telemetry.assigned(partitions)
        status = {"pid": os.getpid(), "partitions": partitions, "metrics_port": port}
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(status))
        temporary.replace(path)

    return write


def assignments(settings: Settings) -> dict[str, list[int]]:
    """The partitions each worker of this project reported last, by worker name."""
    found = {}
    for path in sorted((settings.stack.data_dir / WORKERS_DIR).glob("*.json")):
        try:
            found[path.stem] = list(json.loads(path.read_text())["partitions"])
        except (OSError, ValueError, KeyError):
            continue  # being replaced right now
    return found


def metrics_endpoints(settings: Settings) -> dict[str, int]:
    """The port of each worker's `/metrics` (on the worker's host), by worker name: those of
    this project that reported partitions and serve metrics (`worker.metrics_port` set)."""
    found = {}
    for path in sorted((settings.stack.data_dir / WORKERS_DIR).glob("*.json")):
        try:
            port = json.loads(path.read_text()).get("metrics_port")
        except (OSError, ValueError):
            continue  # being replaced right now
        if isinstance(port, int):
            found[path.stem] = port
    return found


def forget_assignment(settings: Settings, name: str) -> None:
    (settings.stack.data_dir / WORKERS_DIR / f"{name}.json").unlink(missing_ok=True)


def clear_assignments(settings: Settings) -> None:
    for path in (settings.stack.data_dir / WORKERS_DIR).glob("*.json"):
        path.unlink(missing_ok=True)


def serve(settings: Settings, stop: threading.Event, name: str = "worker") -> WorkerTotals:
    """Prepare topics and schema, then score until `stop` is set; metrics are served on
    `worker.metrics_port` meanwhile (unless it is None)."""
    prepare_pipeline(settings)
    telemetry = start_telemetry(settings, name)
    try:
        worker = build_worker(settings, name, telemetry)
        log.info("worker joined group %s", settings.worker.group_id)
        return worker.run(stop)
    finally:
        if telemetry is not None:
            telemetry.close()


def start_telemetry(settings: Settings, name: str) -> WorkerTelemetry | None:
    """The metrics server and lag poller of worker `name`, or None (`worker.metrics_port`
    None)."""
    port = settings.worker.metrics_port
    if port is None:
        return None
    kafka = settings.kafka
    try:
        return WorkerTelemetry.start(
            name, port, kafka_client(settings), settings.worker.group_id, kafka.transactions_topic
        )
    except OSError as error:  # a fixed port already taken, most likely
        raise SettingsError(f"worker.metrics_port {port}: cannot listen there ({error})") from None


def kafka_client(settings: Settings) -> dict[str, str]:
    """librdkafka settings for the pipeline's cluster (secrets included: never log them)."""
    return settings.kafka.client_config(_bootstrap(settings))


def postgres_url(settings: Settings) -> str:
    """The pipeline database's URL (with its password: never log it)."""
    return _postgres_url(settings)


def alert_routing(settings: Settings) -> AlertRouting:
    """The configured alert routes, as the PostgreSQL sink applies them."""
    alerts = settings.alerts
    return AlertRouting(
        tuple(
            AlertRoute(
                name=route.name,
                channel=route.channel,
                actions=frozenset(route.actions),
                min_severity=route.min_severity,
                rules=frozenset(route.rules),
            )
            for route in alerts.routes
        ),
        Severity(critical_score=alerts.critical_score, medium_score=alerts.medium_score),
    )


def _bootstrap(settings: Settings) -> str:
    servers = settings.kafka.bootstrap_servers
    if servers is None:
        raise SettingsError(
            "kafka.bootstrap_servers: unset, and no embedded stack is running in this project"
        )
    return servers


def _postgres_url(settings: Settings) -> str:
    if settings.postgres.url is None:
        raise SettingsError("postgres.url: unset, and no embedded stack is running in this project")
    return settings.postgres.url.get_secret_value()
