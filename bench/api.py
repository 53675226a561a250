"""The scoring API on loopback: requests/s and p50/p99 latency of `POST /v1/transactions/score`
at concurrency 1 and 32, beside the same server's trivial endpoint (`GET /health/live`, no key,
no I/O) as the ceiling, in the same run.

    python bench/api.py [--seconds 8] [--rounds 2] [--cards 20000]

Starts the embedded stack in a temporary directory and `fraudstream api` as a subprocess (one
uvicorn process, as shipped), creates a scorer key, and waits until the API is ready. No worker
runs: the API does not wait for workers (they record its decisions afterwards), and on two
cores a worker would take the CPU the client needs.

The client is this process: one asyncio (uvloop) task per concurrent request, each on its own
keep-alive connection, writing raw HTTP/1.1 and timing each request from write to the last
byte read. Every scored request is a new transaction (unique id) of one of `--cards` cards.
Each (endpoint, concurrency) pair runs `--seconds` per round after a one-second warm-up,
alternating endpoints; the figures are the median over rounds. Prints one JSON line.

Beside each score phase's figures: `mean_batch`, the requests the API scored per batch (from
its batch-size histogram), and `api_cpu_us_per_request`, the API process's CPU time (all its
threads, from /proc; Linux only) per request answered. On a two-core machine whose speed
drifts from run to run, the CPU per request moves less than requests/s do.

Concurrency 1 is measured first, all its rounds, then 32. The embedded broker (memory only,
no retention) lists every record batch a partition holds on each fetch, so its latency grows
with everything ever produced to it: measured after the concurrency-32 rounds (some 60 k
transactions in small batches), the single client's p99 rose by about half on this machine,
which a Kafka cluster would not show. The figures per phase go to stderr in run order, and
`transactions_published` says how much the broker held at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime

import httpx
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from fraudstream.adapters.api_keys import KeyStore
from fraudstream.config import load_settings
from fraudstream.runners.serve import prepare_pipeline
from fraudstream.stack import Stack

HOST = "127.0.0.1"
SCORED = "fraudstream_api_scored"


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection(HOST, port))

    async def send(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lowered = head.lower()
        start = lowered.index(b"content-length:") + 15
        length = int(lowered[start : lowered.index(b"\r\n", start)])
        await self.reader.readexactly(length)
        return int(head[9:12])

    def close(self) -> None:
        self.writer.close()


def live_request() -> bytes:
    return f"GET /health/live HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


class ScoreRequests:
    """A new transaction per call, as raw HTTP."""

    def __init__(self, key: str, cards: int, tag: str) -> None:
        self.key = key
        self.cards = cards
        self.tag = tag
        self.count = 0
        self.random = random.Random(7)

    def __call__(self) -> bytes:
        self.count += 1
        r = self.random
        body = json.dumps(
            {
                "transaction_id": f"{self.tag}-{self.count}",
                "timestamp": datetime.now(UTC).isoformat(),
                "amount": round(r.lognormvariate(3.5, 1.0), 2),
                "card_ref": f"card-{r.randrange(self.cards)}",
                "merchant_id": f"m-{r.randrange(500)}",
                "country": r.choice(("US", "US", "US", "GB", "DE", "FR")),
                "channel": r.choice(("online", "card_present")),
            }
        ).encode()
        return (
            f"POST /v1/transactions/score HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {self.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body


async def load(port: int, make: object, concurrency: int, seconds: float) -> dict[str, float]:
    """Requests/s and latency percentiles (ms) over `seconds`, after a one-second warm-up."""
    clients = [await Client.open(port) for _ in range(concurrency)]
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    measure_from = started + 1.0
    until = measure_from + seconds

    async def run(client: Client) -> None:
        nonlocal errors
        while True:
            request = make()  # type: ignore[operator]
            sent = time.perf_counter()
            if sent >= until:
                return
            status = await client.send(request)
            done = time.perf_counter()
            if sent >= measure_from:
                latencies.append(done - sent)
                errors += status != 200

    await asyncio.gather(*(run(c) for c in clients))
    for client in clients:
        client.close()
    latencies.sort()
    n = len(latencies)
    return {
        "rps": n / seconds,
        "p50_ms": 1000 * latencies[n // 2],
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))],
        "errors": errors,
    }


READY_TIMEOUT_S = 600
"""A checkout's first start compiles the feature kernels (numba, two minutes or more on two
cores) before the API is ready; later starts load them from the cache in seconds."""


def start_api(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "fraudstream", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"http://{HOST}:{port}/health/ready", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the API did not become ready")


def metric_samples(port: int, family_name: str) -> dict[str, float]:
    """One metric family of the API's `/metrics`, sample name -> value."""
    metrics = httpx.get(f"http://{HOST}:{port}/metrics", timeout=5).text
    family = next(f for f in text_string_to_metric_families(metrics) if f.name == family_name)
    return {sample.name: sample.value for sample in family.samples}


def scored(port: int) -> int:
    """Transactions the API scored, so published, during the run (warm-ups included)."""
    return int(next(iter(metric_samples(port, SCORED).values())))


class ApiProbe:
    """The API's batch-size histogram and CPU time, read before and after a phase."""

    BATCHES = "fraudstream_api_score_batch_size"

    def __init__(self, port: int, pid: int) -> None:
        self.port = port
        self.stat = f"/proc/{pid}/stat"

    def read(self) -> tuple[float, float, float | None]:
        """(requests in batches, batches, CPU seconds or None where /proc is missing)."""
        values = metric_samples(self.port, self.BATCHES)
        return values[f"{self.BATCHES}_sum"], values[f"{self.BATCHES}_count"], self._cpu_s()

    def _cpu_s(self) -> float | None:
        try:
            with open(self.stat) as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    @staticmethod
    def figures(
        before: tuple[float, float, float | None], after: tuple[float, float, float | None]
    ) -> dict[str, float]:
        requests, batches = after[0] - before[0], after[1] - before[1]
        out = {"mean_batch": requests / batches if batches else 0.0}
        if before[2] is not None and after[2] is not None and requests:
            out["api_cpu_us_per_request"] = 1e6 * (after[2] - before[2]) / requests
        return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rounds), 2) for k in rounds[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cards", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        stack = Stack(load_settings(stack={"data_dir": data_dir}))
        with stack as endpoints:
            env = {
                **os.environ,
                "FRAUDSTREAM_STACK__DATA_DIR": data_dir,
                "FRAUDSTREAM_KAFKA__BOOTSTRAP_SERVERS": endpoints.kafka["bootstrap.servers"],
                "FRAUDSTREAM_POSTGRES__URL": endpoints.postgres_url,
                "FRAUDSTREAM_REDIS__URL": endpoints.redis_url,
            }
            settings = load_settings(
                kafka={"bootstrap_servers": endpoints.kafka["bootstrap.servers"]},
                postgres={"url": endpoints.postgres_url},
                stack={"data_dir": data_dir},
            )
            prepare_pipeline(settings)
            _, key = KeyStore(endpoints.postgres_url).create("bench", "scorer", 1e9, "bench")
            port = free_port()
            api = start_api(env, port)
            try:
                results = uvloop.run(measure(port, key, args, ApiProbe(port, api.pid)))
                published = scored(port)
            finally:
                api.terminate()
                api.wait(30)
    summary = {name: median_of(rounds) for name, rounds in results.items()}
    print(
        json.dumps(
            {
                "bench": "api",
                **summary,
                "score_share_of_trivial_c1": round(
                    summary["score_c1"]["rps"] / summary["live_c1"]["rps"], 3
                ),
                "score_share_of_trivial_c32": round(
                    summary["score_c32"]["rps"] / summary["live_c32"]["rps"], 3
                ),
                "seconds": args.seconds,
                "rounds": args.rounds,
                "cards": args.cards,
                "workers_running": 0,
                "transactions_published": published,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            }
        )
    )


async def measure(
    port: int, key: str, args: argparse.Namespace, probe: ApiProbe
) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    for concurrency in (1, 32):
        for round_no in range(args.rounds):
            for name, make in (
                ("live", live_request),
                ("score", ScoreRequests(key, args.cards, f"r{round_no}c{concurrency}")),
            ):
                before = await asyncio.to_thread(probe.read)
                figures = await load(port, make, concurrency, args.seconds)
                if name == "score":
                    figures |= probe.figures(before, await asyncio.to_thread(probe.read))
                results.setdefault(f"{name}_c{concurrency}", []).append(figures)
                print(f"{name} c{concurrency}: {figures}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
