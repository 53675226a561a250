"""Every worker's `/metrics`, scraped directly and by a real Prometheus running the shipped
scrape configuration, against the rows the same run stored in PostgreSQL."""

from __future__ import annotations

import copy
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from pipeline_helpers import MALFORMED, TestPipeline, fresh_pipeline, wait_for
from prometheus_client.parser import text_string_to_metric_families

from fraudstream.adapters.kafka import TransactionProducer, ensure_topics
from fraudstream.adapters.kafka_lag import ConsumerLag
from fraudstream.adapters.metrics import HISTOGRAMS, METRIC_NAMES, SERIES_NAMES
from fraudstream.core.rules import load_default_ruleset_text
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.runners.serve import assignments, metrics_endpoints
from fraudstream.stack import Endpoints, free_port

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
INSTALL = (
    "is missing: install the Debian package `prometheus` (apt-get install prometheus; "
    "`python dev.py test` installs it when run as root)"
)
SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "prometheus.yml"
WORKERS_JOB = "fraudstream-workers"
TRANSACTIONS = 3_000
RATE = 3_000


@dataclass(frozen=True)
class Stored:
    """What the run left in PostgreSQL."""

    transactions: int
    dead_letters: int
    actions: dict[str, int]
    rule_hits: dict[str, int]
    shadow_rule_hits: dict[str, int]

    @property
    def messages(self) -> int:
        return self.transactions + self.dead_letters


@dataclass(frozen=True)
class Run:
    pipeline: TestPipeline
    ports: dict[str, int]
    """Worker name -> its metrics port, from the workers' status files."""

    def stored(self) -> Stored:
        query = self.pipeline.query
        actions = query("SELECT action, count(*) FROM transactions GROUP BY action")
        hits, shadow_hits = (
            query(
                f"SELECT rule, count(*) FROM transactions, unnest({column}) AS rule GROUP BY rule"
            )
            for column in ("rules_fired", "shadow_rules_fired")
        )
        return Stored(
            self.pipeline.count("transactions"),
            self.pipeline.count("dead_letters"),
            {str(action): int(str(n)) for action, n in actions},
            {str(rule): int(str(n)) for rule, n in hits},
            {str(rule): int(str(n)) for rule, n in shadow_hits},
        )


SHADOW_RULE = """
  - id: shadow_over_300
    description: Recorded beside the decisions, never deciding.
    expression: amount > 300
    score: 50
    shadow: true
"""


@pytest.fixture(scope="module")
def run(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Two worker processes that scored a generated stream and a few malformed messages;
    they keep running (serving metrics) until the module's tests are done."""
    stream = generate(GeneratorConfig(seed=13, n_transactions=TRANSACTIONS, days=1))
    folder = tmp_path_factory.mktemp("metrics")
    rules = folder / "rules.yaml"
    rules.write_text(load_default_ruleset_text() + SHADOW_RULE)
    with fresh_pipeline(endpoints, folder, rules_file=str(rules)) as pipeline:
        workers = pipeline.workers(2)
        workers.start()
        try:
            assert workers.wait_assigned(60), "both workers should hold partitions"
            topic = pipeline.settings.kafka.transactions_topic
            TransactionProducer(endpoints.kafka, topic).publish(stream.transactions, rate=RATE)
            pipeline.publish_raw(MALFORMED)
            wait_for(lambda: pipeline.holds(TRANSACTIONS, len(MALFORMED)), 120, "all stored")
            yield Run(pipeline, metrics_endpoints(pipeline.settings))
        finally:
            codes = workers.stop()
        assert codes == [0, 0], "workers must stop cleanly with their metrics server running"


Samples = list[tuple[str, dict[str, str], float]]


def scrape(port: int) -> Samples:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: Samples, name: str, by: str | None = None) -> Counter[str]:
    """Sum of the samples named `name`, split by the label `by` (or under "")."""
    sums: Counter[str] = Counter()
    for sample_name, labels, value in samples:
        if sample_name == name:
            sums[labels.get(by, "") if by else ""] += int(value)
    return sums


def test_every_worker_serves_metrics_and_its_port_is_in_its_status_file(run: Run) -> None:
    assert set(run.ports) == {"worker-0", "worker-1"}
    assert len(set(run.ports.values())) == 2, "port 0 gives each worker a port of its own"
    for name, port in run.ports.items():
        workers = {labels["worker"] for _, labels, _ in scrape(port)}
        assert workers == {name}, "every series names the worker that serves it"


def test_counters_scraped_from_the_workers_add_up_to_the_rows_in_postgres(run: Run) -> None:
    stored = run.stored()
    assert stored.messages == TRANSACTIONS + len(MALFORMED)
    samples: Samples = []

    def consumed_as_stored() -> bool:
        nonlocal samples
        samples = [s for port in run.ports.values() for s in scrape(port)]
        return total(samples, "fraudstream_messages_consumed_total")[""] == stored.messages

    # counted once every sink confirmed a batch, a moment after its rows are visible
    wait_for(consumed_as_stored, 30, "messages_consumed_total to reach the stored rows")
    assert total(samples, "fraudstream_dead_letters_total")[""] == stored.dead_letters
    assert dict(total(samples, "fraudstream_decisions_total", "action")) == {
        action: stored.actions.get(action, 0) for action in ("approve", "review", "decline")
    }
    assert stored.rule_hits, "the generated stream should make rules fire"
    assert dict(total(samples, "fraudstream_rule_hits_total", "rule")) == stored.rule_hits
    assert set(stored.shadow_rule_hits) == {"shadow_over_300"}
    shadow_hits = total(samples, "fraudstream_shadow_rule_hits_total", "rule")
    assert dict(shadow_hits) == stored.shadow_rule_hits
    assert total(samples, "fraudstream_batch_size_sum")[""] == stored.messages
    assert total(samples, "fraudstream_event_to_decision_seconds_count")[""] == stored.transactions
    per_worker = total(samples, "fraudstream_messages_consumed_total", "worker")
    folded = total(samples, "fraudstream_messages_folded_total", "worker")
    for name in run.ports:
        assert per_worker[name] > 0, f"{name} scored nothing"
        assert per_worker[name] + folded[name] == stored.messages, (
            f"{name}: every message is either scored or only folded, by every worker"
        )


def test_lag_is_shown_per_partition_held_and_flagged_inexact_on_the_embedded_broker(
    run: Run,
) -> None:
    held = assignments(run.pipeline.settings)
    for name, port in run.ports.items():
        samples: Samples = []

        def lag_of_held_partitions(port: int = port, name: str = name) -> bool:
            nonlocal samples
            samples = scrape(port)
            shown = set(total(samples, "fraudstream_consumer_lag_messages", "partition"))
            return shown == {str(p) for p in held[name]}

        wait_for(lag_of_held_partitions, 15, f"{name}'s lag gauges for {held[name]}")
        assert total(samples, "fraudstream_consumer_lag_exact") == Counter({"": 0})
        assert all(v >= 0 for n, _, v in samples if n == "fraudstream_consumer_lag_messages")


def test_lag_is_the_high_watermark_minus_the_committed_offset(endpoints: Endpoints) -> None:
    """Against the embedded broker, one message per record batch, where its high watermark
    is right: 5 in partition 0, 2 committed -> 3; partition 1 empty, nothing committed -> 0."""
    topic, group = f"lag-{uuid.uuid4().hex[:8]}", f"lag-{uuid.uuid4().hex[:8]}"
    ensure_topics(endpoints.kafka, [topic], 2)
    producer = Producer(endpoints.kafka)
    for number in range(5):
        producer.produce(topic, value=b"%d" % number, partition=0)
        assert producer.flush(10) == 0  # each message its own record batch
    committer = Consumer({**endpoints.kafka, "group.id": group, "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    committer.close()
    reading = ConsumerLag(endpoints.kafka, group, topic).read([0, 1])
    assert reading.partitions == {0: 3, 1: 0}
    assert reading.exact is False, "the embedded broker's high watermark is not to be trusted"


def test_the_shipped_scrape_configuration_is_valid_as_shipped() -> None:
    assert PROMTOOL.exists(), f"{PROMTOOL} {INSTALL}"
    checked = subprocess.run(
        [PROMTOOL, "check", "config", SHIPPED_CONFIG], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    jobs = {
        job["job_name"]: job for job in yaml.safe_load(SHIPPED_CONFIG.read_text())["scrape_configs"]
    }
    assert jobs[WORKERS_JOB]["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": 9108, "refresh_interval": "10s"}
    ]


def local_scrape_config(workers: list[int], prometheus: str) -> dict[str, object]:
    """The shipped configuration, pointed at local workers: the workers job keeps all its
    settings but finds its targets in a static list instead of Compose's DNS; scrapes every
    second."""
    config = copy.deepcopy(yaml.safe_load(SHIPPED_CONFIG.read_text()))
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs[WORKERS_JOB]
    assert "dns_sd_configs" in job, "the shipped workers job discovers workers through DNS"
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}" for port in workers]}]
    jobs["prometheus"]["static_configs"] = [{"targets": [prometheus]}]
    return config  # type: ignore[no-any-return]


class PrometheusAPI:
    def __init__(self, address: str) -> None:
        self.base = f"http://{address}"

    def get(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.base}{path}", params=params, timeout=5)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str, by: str | None = None) -> dict[str, float]:
        """An instant query's result, by the value of label `by` ("" without)."""
        result = self.get("/api/v1/query", query=promql)["result"]
        assert isinstance(result, list)
        return {r["metric"].get(by, "") if by else "": float(r["value"][1]) for r in result}

    def targets_up(self) -> dict[str, int]:
        """Job -> how many of its targets were scraped successfully last time."""
        up: Counter[str] = Counter()
        for target in self.get("/api/v1/targets")["activeTargets"]:
            up[target["labels"]["job"]] += target["health"] == "up"
        return dict(up)


@contextmanager
def prometheus(config: dict[str, object], address: str, workdir: Path) -> Iterator[PrometheusAPI]:
    """`/usr/bin/prometheus` with `config`, listening on `address`; stopped on the way out."""
    assert PROMETHEUS.exists(), f"{PROMETHEUS} {INSTALL}"
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = workdir / "prometheus.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address={address}",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    api = PrometheusAPI(address)
    try:
        wait_for(lambda: _ready(api, process, log), 30, "Prometheus to be ready")
        yield api
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(api: PrometheusAPI, process: subprocess.Popen[bytes], log: Path) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"prometheus exited {process.returncode}:\n{log.read_text()[-3000:]}")
    try:
        return httpx.get(f"{api.base}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_prometheus_with_the_shipped_configuration_sees_what_postgres_stored(
    run: Run, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = local_scrape_config(sorted(run.ports.values()), address)
    with prometheus(config, address, tmp_path) as api:
        wait_for(lambda: api.targets_up() == {WORKERS_JOB: 2, "prometheus": 1}, 30, "targets up")
        stored = run.stored()
        consumed = "sum(fraudstream_messages_consumed_total)"
        wait_for(lambda: api.query(consumed) == {"": stored.messages}, 30, "a full scrape")
        by_action = api.query("sum by (action) (fraudstream_decisions_total)", by="action")
        assert by_action == {a: stored.actions.get(a, 0) for a in ("approve", "review", "decline")}
        by_rule = api.query("sum by (rule) (fraudstream_rule_hits_total)", by="rule")
        assert by_rule == stored.rule_hits
        assert api.query("sum(fraudstream_dead_letters_total)") == {"": stored.dead_letters}
        latencies = api.query("sum(fraudstream_event_to_decision_seconds_count)")
        assert latencies == {"": stored.transactions}
        assert api.query("max(fraudstream_consumer_lag_exact)") == {"": 0}
        batches = api.query("sum(fraudstream_batch_size_count)")[""]
        per_sink = api.query("sum by (sink) (fraudstream_sink_write_seconds_count)", by="sink")
        assert {"PostgresSink", "DecisionsTopicSink"} <= set(per_sink)
        assert set(per_sink.values()) == {batches}, "every sink stored every batch once"
        assert set(api.query("count by (worker) (fraudstream_worker_info)", by="worker")) == set(
            run.ports
        )
        present = api.query('count by (__name__) ({__name__=~"fraudstream_.+"})', by="__name__")
        missing = sorted(SERIES_NAMES - set(present))
        assert not missing, f"metrics the dashboards may query but Prometheus never saw: {missing}"
        for name in METRIC_NAMES:
            series = f"{name}_count" if name in HISTOGRAMS else name
            assert present[series] >= 1, name
