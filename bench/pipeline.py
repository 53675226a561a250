"""The pipeline end to end on the embedded stack, beside the seed-style consumer and the broker.

    python bench/pipeline.py [--backlog 200000] [--workers 1] [--rate 2000] [--duration 60]
                             [--parts throughput,spark,seed,floor,latency] [--rounds 1]

Four figures, one embedded stack, one JSON line:

* throughput: `--backlog` transactions already in the topic, then `--workers` worker processes
  score and store all of them; tx/s = rows stored / time from the first to the last decision.
  Beside it, the CPU the machine spent meanwhile per stored transaction (`cpu_us_per_tx`) and
  in cores over the decisions' span (`cpu_cores`), by program and for the whole machine: the
  per-transaction CPU moves far less between runs than tx/s does, and says where it goes.
* spark: the same backlog scored by the Spark runner (`bench/spark_runner.py`): its query run
  to the end of the topic on local[*], tx/s over the query's run, the session's start-up apart.
* the seed-style baseline on the same broker and database: one message, one `amount > 9000`
  check, one INSERT and one commit per message, over `--seed-messages` messages.
* latency at a steady `--rate` for `--duration` seconds: event published → decided (the
  worker's `decided_at` minus the Kafka message timestamp), p50/p99 overall and per window
  (10 s, or 60 s for runs over ten minutes: the embedded broker slows as a partition's log
  grows, so one figure could hide a drift), and per window what the worker's own metrics say
  (`worker_over_time`: batches, mean ms to fold and score one and for the sinks to confirm
  one, each sink's mean, the batches that stalled, state size, the CPU and memory of the
  broker, Postgres, Redis and Python processes, and the whole machine's CPU), so a drift can
  be placed; beside it the broker's floor: the same rate through the same producer settings
  to a plain consumer, published → consumed, no scoring. `flagged_share` says how much of
  the stream was flagged (each flag also writes a case, an alert and a `fraud_transactions`
  row).

`--rounds` runs the throughput and the seed-style baseline that many times, alternating, and
reports each one's median (and every round's figure): this machine's speed drifts, and six
rounds of the same worker within one hour scored 16 k to 23 k tx/s.

`--parts` runs only some of them. The steady runs spread the generated stream's event times
over `--duration`, so event time keeps pace with the wall clock and the feature windows hold
what they would in production at that rate (the populations `steady_stream` sizes from the
rate). The one-hour run, on the settings that keep the embedded broker steady longest:

    python bench/pipeline.py --parts floor,latency --duration 3600 --floor-duration 300 \
        --partitions 1 --linger-ms 250 --state memory

Over that hour: p50/p99 195/343 ms against the floor's 164/304 ms (`p99_over_floor_ms`
38.7), each minute's p99 between 320 and 360 ms but two (720 and 408 ms), the broker at 4-13 %
of a core. The embedded broker lists every record batch of a partition on each fetch, empty ones
included, so the consumers' `fetch_wait_ms` (50 ms) is what keeps it steady: at 10 ms the same
hour climbed to p99 3.3 s, the broker to 64 % of a core. The floor is measured over the first
`--floor-duration` seconds only.

(`--state memory`: the state of an hour at 2 k tx/s, day-long windows and a few million
cards, grows to several GB (2.1 GB after six minutes), and the embedded Redis keeping the
two newest checkpoints of it, beside the memory-only broker holding the hour's messages, is
more than a 24 GB machine holds.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import psycopg
from confluent_kafka import Consumer
from prometheus_client.parser import text_string_to_metric_families

from fraudstream.adapters.kafka import TransactionProducer, ensure_topics
from fraudstream.adapters.kafka_sinks import CONSUMER_DEFAULTS
from fraudstream.config import Settings, load_settings
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.runners.local import WorkerProcesses
from fraudstream.runners.serve import metrics_endpoints, prepare_pipeline
from fraudstream.stack import Endpoints, Stack

PARTS = ("throughput", "spark", "seed", "floor", "latency")
PER_BATCH = {
    "fraudstream_batch_seconds": "batch_ms",
    "fraudstream_batch_write_seconds": "batch_write_ms",
}
"""Worker histograms whose mean per batch each latency window reports, under these names."""


@dataclass(frozen=True)
class Tuning:
    """The knobs a long run on the embedded broker turns (see `KafkaSettings.linger_ms`)."""

    partitions: int = 4
    linger_ms: int = 50
    state: str = "redis"


VELOCITY_WINDOW_S = 600
"""The default rules' velocity windows: ten minutes."""


def steady_stream(rate: float, duration: float) -> pl.DataFrame:
    """`rate * duration` transactions whose event times span `duration` seconds.

    The generated month is squeezed into `duration`, so its populations are sized for the
    rate: about two customers per transaction of a velocity window, and one merchant per two,
    keep a card's and a merchant's ten-minute counts near what they are in production, and
    the share of flagged transactions down to about a tenth (the generator's fraud scenarios
    squeezed into minutes, and first-seen devices and countries of a young state). A smaller
    population makes every card look like a velocity attack and floods the sinks with cases
    and alerts (86 % flagged, with one customer per 50 transactions)."""
    count = int(rate * duration)
    in_window = int(rate * min(duration, VELOCITY_WINDOW_S))
    config = GeneratorConfig(
        seed=6,
        n_transactions=count,
        n_customers=max(10_000, min(count, 2 * in_window)),
        n_merchants=max(2_000, in_window // 2),
    )
    frame = generate(config).transactions
    micros = frame.get_column("timestamp").dt.epoch("us")
    first, span = micros.min(), max(1, micros.max() - micros.min())
    scaled = first + (micros - first) * (duration * 1e6 / span)
    return frame.with_columns(
        pl.from_epoch(scaled.cast(pl.Int64), time_unit="us")
        .dt.replace_time_zone("UTC")
        .alias("timestamp")
    )


def pipeline_settings(
    endpoints: Endpoints, data_dir: Path, name: str, tuning: Tuning = Tuning()
) -> Settings:
    """Settings for a pipeline with its own topics, database and group."""
    with psycopg.connect(endpoints.postgres_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return load_settings(
        kafka={
            "bootstrap_servers": endpoints.kafka["bootstrap.servers"],
            "transactions_topic": f"{name}-transactions",
            "decisions_topic": f"{name}-decisions",
            "dead_letters_topic": f"{name}-dead-letters",
            "partitions": tuning.partitions,
            "linger_ms": tuning.linger_ms,
        },
        postgres={"url": endpoints.postgres_url.rsplit("/", 1)[0] + f"/{name}"},
        redis={"url": endpoints.redis_url},
        stack={"data_dir": data_dir},
        worker={"group_id": f"{name}-workers", "session_timeout_ms": 6000, "state": tuning.state},
    )


def stored(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute("SELECT count(*) FROM transactions").fetchone()
    return int(row[0]) if row else 0


_INSERTED = "SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables WHERE relname = %s"


def wait_until_stored(url: str, expected: int, limit_s: float) -> None:
    """Wait until `transactions` holds `expected` rows, or `limit_s` passed.

    Progress is read from Postgres' cumulative statistics (rows inserted into `transactions`)
    over one connection: a `count(*)` on a new connection five times a second, as this once
    did, took 8 % of the machine's CPU (a new backend each time, and a scan of the growing
    table) from the workers it was timing. The statistics lag up to a second; they only say
    when to count exactly."""
    deadline = time.monotonic() + limit_s
    with psycopg.connect(url, autocommit=True) as connection:
        while time.monotonic() < deadline:
            row = connection.execute(_INSERTED, ("transactions",)).fetchone()
            if row and int(row[0]) >= expected and stored(url) >= expected:
                return
            time.sleep(0.5)


def run_workers(
    settings: Settings, workers: int, log_dir: Path, expected: int, limit_s: float
) -> tuple[str, dict[str, float]]:
    """Start workers, wait until `expected` rows are stored, stop them. Returns the database
    URL and the CPU seconds the machine spent meanwhile, by program and in all (`machine`), as
    `ProcessSampler` reads them."""
    processes = WorkerProcesses(settings, workers, log_dir)
    processes.start()
    url = settings.postgres.url.get_secret_value()
    sampler = ProcessSampler()
    try:
        if not processes.wait_assigned(60):
            raise SystemExit("workers did not get partitions")
        sampler.sample()
        started = time.monotonic()
        wait_until_stored(url, expected, limit_s)
        cpu = sampler.sample()
        waited = time.monotonic() - started
    finally:
        processes.stop()
    return url, {name: figures["cpu_pct"] / 100 * waited for name, figures in cpu.items()}


def throughput(
    endpoints: Endpoints, data_dir: Path, backlog: int, workers: int, tuning: Tuning
) -> dict:
    settings = pipeline_settings(endpoints, data_dir, f"bench_{uuid.uuid4().hex[:8]}", tuning)
    prepare_pipeline(settings)
    stream = generate(GeneratorConfig(seed=5, n_transactions=backlog))
    TransactionProducer(endpoints.kafka, settings.kafka.transactions_topic).publish(
        stream.transactions
    )
    url, cpu_s = run_workers(settings, workers, data_dir / "logs", stream.transactions.height, 600)
    with psycopg.connect(url, autocommit=True) as connection:
        count, first, last = connection.execute(
            "SELECT count(*), min(decided_at), max(decided_at) FROM transactions"
        ).fetchone()
    span = (last - first).total_seconds()
    return {
        "rows": count,
        "workers": workers,
        "tx_per_s": round(count / span) if span else None,
        "cpu_us_per_tx": {
            name: round(seconds / count * 1e6, 1) for name, seconds in cpu_s.items() if count
        },
        "cpu_cores": {name: round(seconds / span, 2) for name, seconds in cpu_s.items() if span},
    }


def median_round(rounds: list[dict]) -> dict:
    """The round with the median tx/s (the lower middle one of an even count), with every
    round's tx/s beside it."""
    ordered = sorted(rounds, key=lambda r: r["tx_per_s"] or 0)
    return {**ordered[(len(ordered) - 1) // 2], "rounds": [r["tx_per_s"] for r in rounds]}


def seed_style(endpoints: Endpoints, messages: int) -> dict:
    """The tutorial consumer: json.loads, `amount > 9000`, INSERT, commit — per message."""
    topic = f"seed-{uuid.uuid4().hex[:8]}"
    ensure_topics(endpoints.kafka, [topic], 1)
    stream = generate(GeneratorConfig(seed=9, n_transactions=messages))
    TransactionProducer(endpoints.kafka, topic).publish(stream.transactions)
    with psycopg.connect(endpoints.postgres_url) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS seed_transactions (transaction_id text PRIMARY KEY,"
            " card_ref text, amount double precision, is_fraud boolean, event_time text)"
        )
        connection.commit()
        consumer = Consumer(
            {**endpoints.kafka, "group.id": topic, "auto.offset.reset": "earliest",
             "session.timeout.ms": 6000}
        )  # fmt: skip
        consumer.subscribe([topic])
        done, started = 0, None
        while done < stream.transactions.height:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            started = started or time.perf_counter()
            tx = json.loads(message.value())
            connection.execute(
                "INSERT INTO seed_transactions VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (tx["transaction_id"], tx.get("card_ref"), tx["amount"], tx["amount"] > 9000,
                 tx["timestamp"]),
            )  # fmt: skip
            connection.commit()
            done += 1
        elapsed = time.perf_counter() - (started or time.perf_counter())
        consumer.close()
    return {"rows": done, "tx_per_s": round(done / elapsed) if elapsed else None}


def latency(
    endpoints: Endpoints, data_dir: Path, rate: float, duration: float, tuning: Tuning
) -> dict:
    settings = pipeline_settings(endpoints, data_dir, f"lat_{uuid.uuid4().hex[:8]}", tuning)
    prepare_pipeline(settings)
    transactions = steady_stream(rate, duration)
    processes = WorkerProcesses(settings, 1, data_dir / "logs-latency")
    processes.start()
    try:
        if not processes.wait_assigned(60):
            raise SystemExit("the worker did not get partitions")
        topic = settings.kafka.transactions_topic
        sampler = WorkerSampler(settings, _window_s(duration))
        sampler.start()
        TransactionProducer(endpoints.kafka, topic, tuning.linger_ms).publish(
            transactions, rate=rate
        )
        url = settings.postgres.url.get_secret_value()
        wait_until_stored(url, transactions.height, 120)
        sampler.stop()
    finally:
        processes.stop()
    return {
        "rate": rate,
        "duration_s": duration,
        **_stored_percentiles(url, duration),
        "worker_over_time": sampler.windows,
        "sampler_errors": {"count": sampler.errors, "last": sampler.last_error},
    }


class WorkerSampler(threading.Thread):
    """Every `window_s`, what the worker's own metrics say about that window: batches, mean
    time to fold and score one, mean time for the sinks to confirm one (and each sink's own),
    batches whose scoring took over 250 ms and writes that took over 500 ms (stalls a mean
    hides), the feature state's size, and the CPU and memory of
    the servers (`ProcessSampler`). When latency drifts over a long run, these say which side
    moved. A failed scrape is counted and its error kept, never silently dropped."""

    def __init__(self, settings: Settings, window_s: int) -> None:
        super().__init__(daemon=True)
        self._settings = settings
        self._window_s = window_s
        self._halt = threading.Event()
        self._processes = ProcessSampler()
        self.windows: list[dict] = []
        self.errors = 0
        self.last_error: str | None = None

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def run(self) -> None:
        started, before = time.monotonic(), self._read()
        self._processes.sample()
        while not self._halt.wait(self._window_s):
            now = self._read()
            processes = self._processes.sample()
            if now and before:
                figures = self._window(time.monotonic() - started, before, now)
                self.windows.append({**figures, "processes": processes})
            before = now or before

    def _window(self, at_s: float, before: dict, now: dict) -> dict:
        batches = now["fraudstream_batch_seconds_count"] - before["fraudstream_batch_seconds_count"]
        figures: dict = {"t_s": round(at_s), "batches": int(batches)}
        if batches:
            for metric, name in PER_BATCH.items():
                figures[name] = _mean_ms(before, now, metric)
            figures["scores_over_250ms"] = _over(before, now, "fraudstream_batch_seconds", "0.25")
            figures["writes_over_500ms"] = _over(
                before, now, "fraudstream_batch_write_seconds", "0.5"
            )
        sinks = sorted({k.split('"')[1] for k in now if k.startswith(f"{SINK_SECONDS}_sum")})
        figures["sink_ms"] = {sink: _mean_ms(before, now, SINK_SECONDS, sink) for sink in sinks}
        figures["state_mb"] = round(now.get("fraudstream_state_bytes", 0.0) / 1e6, 1)
        return figures

    def _read(self) -> dict | None:
        """Every sample of the (one) worker's metrics, keyed by name plus the `le` or `sink`
        label where it has one; None while it serves none, or when the scrape failed."""
        ports = list(metrics_endpoints(self._settings).values())
        if not ports:
            return None
        try:
            text = httpx.get(f"http://127.0.0.1:{ports[0]}/metrics", timeout=15).text
        except httpx.HTTPError as error:
            self.errors += 1
            self.last_error = f"{type(error).__name__}: {error}"
            return None
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                label = next((f'{k}="{v}"' for k, v in sample.labels.items() if k in KEYED), "")
                samples[f"{sample.name}{{{label}}}" if label else sample.name] = sample.value
        return samples if "fraudstream_batch_seconds_count" in samples else None


SINK_SECONDS = "fraudstream_sink_write_seconds"
KEYED = ("le", "sink")


def _delta(before: dict, now: dict, key: str) -> float:
    return now.get(key, 0.0) - before.get(key, 0.0)


def _over(before: dict, now: dict, histogram: str, le: str) -> int:
    """Observations of `histogram` in the window above its bucket `le`."""
    over = _delta(before, now, f"{histogram}_count")
    return int(over - _delta(before, now, f'{histogram}_bucket{{le="{le}"}}'))


def _mean_ms(before: dict, now: dict, metric: str, sink: str | None = None) -> float | None:
    label = f'{{sink="{sink}"}}' if sink else ""
    count = _delta(before, now, f"{metric}_count{label}")
    spent = _delta(before, now, f"{metric}_sum{label}")
    return round(1000 * spent / count, 1) if count else None


class ProcessSampler:
    """CPU (% of one core) and resident memory of this machine's processes, summed by program
    name (the broker `tansu`, `postgres` with its backends, `redis-server`, `python`: the
    worker and this bench), between two calls of `sample`; and as `machine`, the CPU of all its
    cores (what exited meanwhile too, and the kernel). Read from /proc (Linux only; an empty
    answer elsewhere)."""

    def __init__(self) -> None:
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._last: tuple[float, dict[int, tuple[str, int]], int] | None = None

    def sample(self) -> dict[str, dict[str, float]]:
        now, current, busy = time.monotonic(), self._read(), self._machine_busy_ticks()
        last, self._last = self._last, (now, current, busy)
        if last is None:
            return {}
        elapsed = now - last[0]
        groups: dict[str, dict[str, float]] = {
            "machine": {"cpu_pct": 100 * (busy - last[2]) / self._ticks / elapsed}
        }
        for pid, (name, cpu) in current.items():
            group = groups.setdefault(name, {"cpu_pct": 0.0, "rss_mb": 0.0})
            before = last[1].get(pid)
            spent = cpu - before[1] if before and before[0] == name else cpu
            group["cpu_pct"] += 100 * spent / self._ticks / elapsed
            group["rss_mb"] += self._rss_mb(pid)
        return {
            name: {k: round(v, 1) for k, v in figures.items()} for name, figures in groups.items()
        }

    def _read(self) -> dict[int, tuple[str, int]]:
        """CPU ticks so far of every process of a `WATCHED` program, by pid."""
        found = {}
        for entry in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = entry.read_text()
            except OSError:  # gone meanwhile
                continue
            name = text[text.index("(") + 1 : text.rindex(")")]
            if name not in WATCHED:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            found[int(entry.parent.name)] = (name, int(fields[11]) + int(fields[12]))
        return found

    @staticmethod
    def _machine_busy_ticks() -> int:
        """Ticks all the machine's cores spent on anything but idling, so far."""
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return 0
        ticks = [int(value) for value in fields[:8]]
        return sum(ticks) - ticks[3] - ticks[4]  # less idle and iowait

    def _rss_mb(self, pid: int) -> float:
        try:
            pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return 0.0
        return pages * self._page / 1e6


WATCHED = ("tansu", "postgres", "redis-server", "python", "fraudstream")


def _stored_percentiles(url: str, duration: float) -> dict:
    """Latency percentiles of the stored decisions, overall and per window, computed by
    Postgres (an hour at 2 k tx/s is 7.2 M rows)."""
    window = _window_s(duration)
    lag = "extract(epoch FROM decided_at - ingested_at) * 1000"
    quantiles = (
        f"count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY {lag}),"
        f" percentile_cont(0.99) WITHIN GROUP (ORDER BY {lag})"
    )
    with psycopg.connect(url, autocommit=True) as connection:
        rows, p50, p99 = connection.execute(f"SELECT {quantiles} FROM transactions").fetchone()
        flagged = connection.execute("SELECT count(*) FROM fraud_transactions").fetchone()[0]
        windows = connection.execute(
            f"SELECT floor(extract(epoch FROM ingested_at - (SELECT min(ingested_at)"
            f" FROM transactions)) / %s)::int AS w, {quantiles} FROM transactions"
            " GROUP BY w ORDER BY w",
            (window,),
        ).fetchall()
    if not rows:
        return {"rows": 0}
    return {
        "rows": rows,
        "flagged_share": round(flagged / rows, 4),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "window_s": window,
        "over_time": [
            {"t_s": w * window, "p50_ms": round(a, 1), "p99_ms": round(b, 1)}
            for w, _, a, b in windows
        ],
    }


def _window_s(duration: float) -> int:
    return 10 if duration <= 600 else 60


def broker_floor(endpoints: Endpoints, rate: float, duration: float, tuning: Tuning) -> dict:
    """Published → consumed, the same stream through the same producer and consumer settings
    to a plain consumer: the latency of the broker and clients alone, no scoring."""
    topic = f"floor-{uuid.uuid4().hex[:8]}"
    ensure_topics(endpoints.kafka, [topic], tuning.partitions)
    consumer = Consumer(
        {**endpoints.kafka, **CONSUMER_DEFAULTS, "group.id": topic, "session.timeout.ms": 6000}
    )
    consumer.subscribe([topic])
    while not consumer.assignment():
        consumer.poll(0.2)
    transactions = steady_stream(rate, duration)
    total = transactions.height
    received: list[tuple[float, float]] = []

    def consume() -> None:
        deadline = time.monotonic() + duration + 120
        while len(received) < total and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.05):
                if message.error() is None:
                    received.append((message.timestamp()[1] / 1000, time.time()))

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    TransactionProducer(endpoints.kafka, topic, tuning.linger_ms).publish(transactions, rate=rate)
    reader.join()
    consumer.close()
    sent = np.array([s for s, _ in received])
    lag = np.array([r - s for s, r in received])
    return {"rate": rate, "rows": len(received), **_percentiles(sent, lag, _window_s(duration))}


def _percentiles(sent: np.ndarray, lag: np.ndarray, window: int) -> dict:
    if not lag.size:
        return {}
    windows = ((sent - sent.min()) // window).astype(int)
    over_time = [
        {
            "t_s": int(w * window),
            "p50_ms": round(float(np.percentile(lag[windows == w], 50)) * 1000, 1),
            "p99_ms": round(float(np.percentile(lag[windows == w], 99)) * 1000, 1),
        }
        for w in np.unique(windows)
    ]
    return {
        "p50_ms": round(float(np.percentile(lag, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(lag, 99)) * 1000, 1),
        "window_s": window,
        "over_time": over_time,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed-messages", type=int, default=3_000)
    parser.add_argument("--rate", type=float, default=2_000)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument(
        "--floor-duration", type=float, help="the broker floor's run (default: --duration)"
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"some of {','.join(PARTS)}")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--linger-ms", type=int, default=50)
    parser.add_argument("--state", choices=("redis", "memory"), default="redis")
    parser.add_argument(
        "--rounds", type=int, default=1, help="throughput and seed runs, alternating (medians)"
    )
    args = parser.parse_args()
    tuning = Tuning(args.partitions, args.linger_ms, args.state)
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        parser.error(f"--parts: unknown {sorted(parts - set(PARTS))}; choose from {PARTS}")
    data_dir = Path(tempfile.mkdtemp(prefix="fraudstream-bench-"))
    try:
        with Stack(load_settings(stack={"data_dir": data_dir / "stack"})) as endpoints:
            result: dict = {
                "bench": "pipeline",
                "cpus": platform.os.cpu_count(),
                "python": sys.version.split()[0],
                "tuning": asdict(tuning),
            }
            throughput_runs: list[dict] = []
            seed_runs: list[dict] = []
            for _ in range(args.rounds):
                if "throughput" in parts:
                    throughput_runs.append(
                        throughput(endpoints, data_dir, args.backlog, args.workers, tuning)
                    )
                if "seed" in parts:
                    seed_runs.append(seed_style(endpoints, args.seed_messages))
            if throughput_runs:
                result["throughput"] = median_round(throughput_runs)
            if "spark" in parts:
                from spark_runner import spark_throughput

                result["spark"] = spark_throughput(
                    endpoints, data_dir, args.backlog, tuning, pipeline_settings
                )
            if seed_runs:
                result["baseline_seed_style"] = median_round(seed_runs)
            if "floor" in parts:
                result["baseline_broker_floor"] = broker_floor(
                    endpoints, args.rate, args.floor_duration or args.duration, tuning
                )
            if "latency" in parts:
                result["latency"] = latency(endpoints, data_dir, args.rate, args.duration, tuning)
        seed = result.get("baseline_seed_style", {}).get("tx_per_s")
        ours = result.get("throughput", {}).get("tx_per_s")
        if seed and ours:
            result["speedup_vs_seed"] = round(ours / seed, 1)
        spark = result.get("spark", {}).get("tx_per_s")
        if seed and spark:
            result["spark_speedup_vs_seed"] = round(spark / seed, 1)
        floor = result.get("baseline_broker_floor", {}).get("p99_ms")
        ours_p99 = result.get("latency", {}).get("p99_ms")
        if floor is not None and ours_p99 is not None:
            result["p99_over_floor_ms"] = round(ours_p99 - floor, 1)
        print(json.dumps(result))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
