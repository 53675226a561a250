"""The whole pipeline on one machine: worker processes, the producer, and their shutdown.

`fraudstream run` uses this: the embedded stack (or the servers the settings name), topics and
schema, N worker processes in one consumer group, and the generator publishing a labelled stream
at a target rate. Workers are separate processes (`python -m fraudstream worker`), started with
the same settings and stopped with SIGTERM, so they finish and commit their batch before leaving.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from pydantic import SecretStr

from fraudstream.adapters.kafka import PublishReport, TransactionProducer
from fraudstream.config import Settings
from fraudstream.runners.serve import assignments, clear_assignments, forget_assignment

WORKER_STOP_TIMEOUT_S = 30.0
METRICS_PORT_ENV = "FRAUDSTREAM_WORKER__METRICS_PORT"


def worker_environment(settings: Settings) -> dict[str, str]:
    """This process's environment plus every setting as a `FRAUDSTREAM_*` variable, so a
    worker process started with it has exactly these settings (secrets included: the
    environment of our own child, never a log line). Dicts and lists become JSON, which is
    how pydantic-settings reads a complex value from the environment."""
    env = dict(os.environ)
    for section, values in settings.model_dump().items():
        for name, value in values.items():
            if value is not None:
                env[f"FRAUDSTREAM_{section.upper()}__{name.upper()}"] = _env_text(value)
    return env


def metrics_port_text(port: int | None, number: int) -> str:
    """Worker `number`'s `worker.metrics_port` as an environment value: a fixed port N is
    N + number, so several workers on one host do not collide; 0 (any free port) stays 0;
    None is `off`, since a variable left out would mean the default."""
    if port is None:
        return "off"
    return str(port + number if port else 0)


def _env_text(value: object) -> str:
    plain = _plain(value)
    if isinstance(plain, dict | list):
        return json.dumps(plain)
    return str(plain)


def _plain(value: object) -> object:
    """`value` with its secrets revealed and its paths made absolute, at any depth."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    return value


@dataclass
class WorkerProcesses:
    """N `fraudstream worker` processes, logging to files under `log_dir`."""

    settings: Settings
    count: int
    log_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        clear_assignments(self.settings)
        self.processes = [self._spawn(number) for number in range(self.count)]

    def _spawn(self, number: int) -> subprocess.Popen[bytes]:
        name = f"worker-{number}"
        env = worker_environment(self.settings)
        env[METRICS_PORT_ENV] = metrics_port_text(self.settings.worker.metrics_port, number)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            return subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "fraudstream", "worker", "--name", name],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self, number: int) -> None:
        """SIGKILL one worker (a crash: no batch finished, nothing committed on the way out)."""
        process = self.processes[number]
        process.kill()
        process.wait()

    def restart(self, number: int) -> None:
        """Start worker `number` again (after `kill`), under the same name and log."""
        if self.processes[number].poll() is None:
            raise RuntimeError(f"worker-{number} is still running")
        forget_assignment(self.settings, f"worker-{number}")
        self.processes[number] = self._spawn(number)

    def wait_assigned(self, timeout_s: float) -> bool:
        """Wait until every worker holds partitions and together they hold all of them."""
        every = set(range(self.settings.kafka.partitions))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.alive() == self.count:
            held = assignments(self.settings)
            names = [f"worker-{number}" for number in range(self.count)]
            holding = [set(held.get(name, ())) for name in names]
            if all(holding) and set().union(*holding) == every:
                return True
            time.sleep(0.1)
        return False

    def alive(self) -> int:
        return sum(process.poll() is None for process in self.processes)

    def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> list[int | None]:
        """SIGTERM every worker (they finish their batch and commit), wait, then kill any
        that did not leave in time. Returns the exit codes."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for process in self.processes:
            try:
                codes.append(process.wait(timeout_s))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                codes.append(None)
        return codes


class ProducerThread(threading.Thread):
    """Publishes a frame at a target rate in the background; `report` says how far it got."""

    def __init__(
        self,
        kafka: dict[str, str],
        topic: str,
        frame: pl.DataFrame,
        rate: float,
        linger_ms: int | None = None,
    ) -> None:
        super().__init__(name="producer", daemon=True)
        self._producer = TransactionProducer(kafka, topic, linger_ms)
        self._frame = frame
        self._rate = rate
        self.error: Exception | None = None

    @property
    def report(self) -> PublishReport:
        return self._producer.report

    def run(self) -> None:
        try:
            self._producer.publish(self._frame, rate=self._rate or None)
        except Exception as error:  # reported to the main thread, not lost
            self.error = error
        finally:
            self._producer.close()

    def stop(self) -> None:
        self._producer.cancel()
