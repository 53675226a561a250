"""`fraudstream stack` keeps the servers up for other commands; `produce` finds and feeds them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from kafka_helpers import read_messages

from fraudstream.core.events import decode_transaction

CLI = str(Path(sys.executable).parent / "fraudstream")


def _environment(data_dir: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSTREAM_")}
    return {**clean, "FRAUDSTREAM_STACK__DATA_DIR": str(data_dir), "COLUMNS": "200"}


def _wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)
    return json.loads(path.read_text())


def test_stack_command_serves_produce_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = _environment(tmp_path)
    stack = subprocess.Popen(
        [CLI, "stack"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    running = _wait_for(tmp_path / "endpoints.json", stack)
    servers = list(psutil.Process(stack.pid).children(recursive=False))
    assert len(servers) == 3

    produced = subprocess.run(
        [CLI, "produce", "--transactions", "400", "--rate", "0"],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stdout + produced.stderr
    sent = int(produced.stdout.split("delivered ")[1].split(" ")[0].replace(",", ""))
    assert sent >= 400
    kafka = {"bootstrap.servers": running["kafka_bootstrap_servers"]}
    messages = read_messages(kafka, "transactions", sent)
    assert len({decode_transaction(m.value()).transaction_id for m in messages}) == sent

    stack.send_signal(signal.SIGTERM)
    output, _ = stack.communicate(timeout=60)
    assert stack.returncode == 0, output
    assert "stopped" in output
    assert not (tmp_path / "endpoints.json").exists()
    assert not any(server.is_running() and server.status() != "zombie" for server in servers)


def test_produce_without_any_kafka_says_how_to_get_one(tmp_path: Path) -> None:
    result = subprocess.run(
        [CLI, "produce", "--transactions", "10"],
        env=_environment(tmp_path), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "fraudstream stack" in result.stdout


def test_run_is_the_whole_pipeline_and_leaves_nothing_running(tmp_path: Path) -> None:
    """The README's main job, small: every produced transaction scored and stored, recall shown,
    then workers and servers gone."""
    log = tmp_path / "run.out"
    with log.open("w") as out:
        run = subprocess.Popen(
            [CLI, "run", "--transactions", "3000", "--rate", "3000", "--workers", "2"],
            env=_environment(tmp_path), stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        children: set[psutil.Process] = set()
        deadline = time.monotonic() + 240
        while run.poll() is None and time.monotonic() < deadline:
            children |= set(psutil.Process(run.pid).children(recursive=True))
            time.sleep(0.2)
    output = log.read_text()
    assert run.returncode == 0, output
    assert len(children) >= 5, "three servers and two workers"
    assert "workers exited with [0, 0]" in output
    assert "velocity_attack" in output and "recall" in output
    figures = output.rsplit("3,000 / ", 1)[1]
    assert figures.split("│")[1].strip() == "3,000", f"not every transaction scored: {figures}"
    assert not any(c.is_running() and c.status() != "zombie" for c in children)
