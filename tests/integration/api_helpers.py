"""The scoring API as tests meet it: uvicorn in a subprocess on loopback, one worker process,
the embedded stack, keys of every role, and a ruleset that reads velocity and the lists."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from confluent_kafka import Producer
from pipeline_helpers import TestPipeline, fresh_pipeline, wait_for

from fraudstream.adapters.api_keys import KeyStore
from fraudstream.runners.local import WorkerProcesses, worker_environment
from fraudstream.stack import Endpoints

RULES = """
version: api-test-1
rules:
  - id: card_seen_twice
    description: A second payment on the card within the hour.
    expression: tx_count_by_card_1h >= 2
    score: 20
    action: review
  - id: card_seen_thrice
    description: A third payment on the card within the hour.
    expression: tx_count_by_card_1h >= 3
    score: 30
    action: decline
  - id: deny_listed
    description: The card, the customer or the IP is on the deny list.
    expression: card_on_deny_list OR customer_on_deny_list OR ip_on_deny_list
    score: 100
    action: decline
"""
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Api:
    url: str
    pipeline: TestPipeline
    keys: dict[str, str]
    key_ids: dict[str, str]
    process: subprocess.Popen[bytes]

    def score(self, body: dict[str, object], key: str = "scorer", **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/transactions/score",
            json=body,
            headers={"X-API-Key": self.keys[key], **headers},
            timeout=30,
        )

    def stored_row(self, transaction_id: str) -> tuple[object, ...] | None:
        rows = self.pipeline.query(
            "SELECT action, score, rules_fired, reasons, decided_at, kafka_offset"
            f" FROM transactions WHERE transaction_id = '{transaction_id}'"
        )
        return rows[0] if rows else None

    def publish(self, body: dict[str, object]) -> None:
        producer = Producer(self.pipeline.endpoints.kafka)
        producer.produce(
            self.pipeline.settings.kafka.transactions_topic,
            value=json.dumps(body).encode(),
            key=str(body["card_ref"]).encode(),
        )
        assert producer.flush(30) == 0

    def get(self, path: str, key: str = "analyst", **params: object) -> httpx.Response:
        headers = {"X-API-Key": self.keys[key]}
        return httpx.get(f"{self.url}{path}", params=params, headers=headers, timeout=30)  # type: ignore[arg-type]

    def send(
        self,
        method: str,
        path: str,
        key: str = "analyst",
        headers: dict[str, str] | None = None,
        **kwargs: object,
    ) -> httpx.Response:
        headers = {"X-API-Key": self.keys[key], **(headers or {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def folded(self) -> int:
        return int(httpx.get(f"{self.url}/health/ready", timeout=5).json().get("folded") or 0)


def transaction(number: int, card: str, **extra: object) -> dict[str, object]:
    return {
        "transaction_id": f"{card}-tx{number}",
        "timestamp": (START + timedelta(seconds=number)).isoformat(),
        "amount": 25.0 + number,
        "card_ref": card,
        "merchant_id": "m-1",
        "country": "GB",
        **extra,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_api(endpoints: Endpoints, tmp_path: Path) -> Iterator[Api]:
    """The API and one worker on a pipeline of their own, stopped (exit 0 checked) after."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with fresh_pipeline(endpoints, tmp_path, rules_file=str(rules), state="memory") as pipeline:
        settings = pipeline.settings.model_copy(
            update={
                "api": pipeline.settings.api.model_copy(update={"key_cache_s": 0.5}),
                "lists": pipeline.settings.lists.model_copy(update={"poll_interval_s": 0.3}),
                "rules": pipeline.settings.rules.model_copy(update={"poll_interval_s": 0.3}),
            }
        )
        store = KeyStore(pipeline.postgres_url)
        keys, key_ids = {}, {}
        for name, role, rate in (
            ("scorer", "scorer", 1000.0),
            ("analyst", "analyst", 1000.0),
            ("admin", "rule_admin", 1000.0),
            ("slow", "scorer", 2.0),
            ("revoked", "analyst", 1000.0),
        ):
            key, text = store.create(name, role, rate, "test")
            keys[name], key_ids[name] = text, key.id
        workers = WorkerProcesses(settings, 1, tmp_path / "logs")
        workers.start()
        port = free_port()
        log = (tmp_path / "api.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "fraudstream", "api", "--port", str(port)],
            env=worker_environment(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            assert workers.wait_assigned(60), "the worker should hold the partitions"
            wait_for(lambda: _ready(url), 90, "the API to be ready")
            yield Api(url, pipeline, keys, key_ids, process)
        finally:
            process.terminate()
            code = process.wait(30)
            workers.stop()
            log.close()
            assert code == 0, (tmp_path / "api.log").read_text()[-3000:]


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
