"""A pipeline of its own per test: fresh topics, a fresh database, worker processes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from confluent_kafka import Producer

from fraudstream.config import Settings, load_settings
from fraudstream.runners.local import WorkerProcesses
from fraudstream.runners.serve import prepare_pipeline
from fraudstream.stack import Endpoints

MALFORMED = (
    b"not json at all",
    b"\xff\xfe binary garbage",
    b'{"transaction_id": "bad-1", "timestamp": "2026-01-02T00:00:00Z"}',  # no amount, no card
    b'{"transaction_id": "bad-2", "timestamp": "2026-01-02T00:00:00Z", "amount": -5,'
    b' "card_ref": "c1"}',
    b'{"transaction_id": "bad-3", "timestamp": "2026-01-02T00:00:00", "amount": 5,'
    b' "card_ref": "c1"}',  # naive timestamp
    b'{"transaction_id": "bad-4", "timestamp": "2026-01-02T00:00:00Z", "amount": 5,'
    b' "card_ref": "c1", "currency": "XXQ"}',
    b"",
)


@dataclass(frozen=True)
class TestPipeline:
    __test__ = False  # a helper, not a test class
    settings: Settings
    endpoints: Endpoints
    postgres_url: str
    log_dir: Path

    def workers(self, count: int) -> WorkerProcesses:
        return WorkerProcesses(self.settings, count, self.log_dir)

    def count(self, table: str) -> int:
        with psycopg.connect(self.postgres_url, autocommit=True) as connection:
            row = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])

    def holds(self, transactions: int, dead_letters: int) -> bool:
        """At least this many rows in `transactions` and in `dead_letters`."""
        return self.count("transactions") >= transactions and (
            self.count("dead_letters") >= dead_letters
        )

    def query(self, sql: str) -> list[tuple[object, ...]]:
        with psycopg.connect(self.postgres_url, autocommit=True) as connection:
            return connection.execute(sql).fetchall()  # type: ignore[arg-type]

    def publish_raw(self, values: tuple[bytes, ...]) -> None:
        producer = Producer(self.endpoints.kafka)
        for number, value in enumerate(values):
            producer.produce(
                self.settings.kafka.transactions_topic, value=value, key=b"bad-%d" % number
            )
        assert producer.flush(30) == 0


@contextmanager
def fresh_pipeline(
    endpoints: Endpoints,
    tmp_path: Path,
    models: dict[str, object] | None = None,
    alerts: dict[str, object] | None = None,
    **worker: object,
) -> Iterator[TestPipeline]:
    """Topics, a database and a worker group nobody else uses; the database is dropped after."""
    name = f"t{uuid.uuid4().hex[:10]}"
    admin_url = endpoints.postgres_url
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    settings = load_settings(
        kafka={
            "bootstrap_servers": endpoints.kafka["bootstrap.servers"],
            "transactions_topic": f"{name}-transactions",
            "decisions_topic": f"{name}-decisions",
            "dead_letters_topic": f"{name}-dead-letters",
            "partitions": 4,
        },
        postgres={"url": url},
        redis={"url": endpoints.redis_url},
        stack={"data_dir": tmp_path / "stack"},
        worker={"group_id": f"{name}-workers", "session_timeout_ms": 6000, **worker},
        models=models or {},
        alerts=alerts or {},
    )
    prepare_pipeline(settings)
    try:
        yield TestPipeline(settings, endpoints, url, tmp_path / "logs")
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.25)
