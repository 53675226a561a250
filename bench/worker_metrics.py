"""What a worker's Prometheus metrics cost per batch, beside what scoring the batch costs.

    python bench/worker_metrics.py [--events 100000] [--batch 1000] [--seed 7]

Runs on one core. Scores a generated stream in batches as the worker does (features, every
default rule, the decision frame with `ingested_at` and `decided_at`), and times per batch:
the scoring; what the scoring loop pays for metrics (`WorkerMetrics.batch_scored` with the
write's future: one observation and a callback); what counting the batch once stored costs
the writer's thread (`batch_stored`: counters from aggregates, one searchsorted for the
latency histogram); and, for comparison, the latency histogram filled by one
`Histogram.observe` per row. Then the state's size measurement (`FeatureState.stats`, taken
every 5 s) on the state the whole stream built. Prints one JSON line; shares are of the median
scoring time, which leaves out decoding and the sinks, so the worker's shares are smaller.
"""

from __future__ import annotations

import os

os.environ.setdefault("POLARS_MAX_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import statistics
import time
from concurrent.futures import Future
from datetime import UTC, datetime

import numpy as np
import polars as pl
from prometheus_client import CollectorRegistry, Histogram

from fraudstream.adapters.metrics import LATENCY_BUCKETS, WorkerMetrics
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.generator import GeneratorConfig, generate


def scored_frame(engine: Engine, state: FeatureState, batch: pl.DataFrame) -> pl.DataFrame:
    """The worker's `ScoredBatch.frame` for `batch`: the outcome with its two timestamps."""
    decided_at = datetime.now(UTC)
    outcome = engine.process(batch, state).outcome
    arrived_ms = pl.Series(np.arange(batch.height) % 400)  # spread over 0.4 s before deciding
    ingested = pl.Series("ingested_at", [decided_at] * batch.height).dt.cast_time_unit("us")
    return outcome.with_columns(
        (ingested - pl.duration(milliseconds=pl.lit(arrived_ms))).alias("ingested_at"),
        pl.lit(decided_at).dt.cast_time_unit("us").alias("decided_at"),
    )


def observe_per_row(histogram: Histogram, frame: pl.DataFrame) -> float:
    """Seconds to fill `histogram` with the batch's latencies one `observe` at a time."""
    started = time.perf_counter()
    micros = (frame["decided_at"] - frame["ingested_at"]).dt.total_microseconds()
    for value in micros.to_list():
        histogram.observe(value / 1e6)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    config = FeatureConfig()
    engine = Engine(
        compile_ruleset(parse_ruleset(load_default_ruleset_text()), available_columns(config))
    )
    stream = generate(GeneratorConfig(seed=args.seed, n_transactions=args.events))
    ordered = stream.transactions.sort("timestamp", maintain_order=True)
    scored_frame(engine, FeatureState(config), ordered.head(2))  # kernels loaded
    state = FeatureState(config)
    metrics = WorkerMetrics("bench")
    per_row_s: list[float] = []
    per_row = Histogram("latency", "", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    score_s, loop_s, stored_s = [], [], []
    for start in range(0, ordered.height, args.batch):
        started = time.perf_counter()
        frame = scored_frame(engine, state, ordered.slice(start, args.batch))
        score_s.append(time.perf_counter() - started)
        written: Future[bool] = Future()
        started = time.perf_counter()
        metrics.batch_scored(frame, 0, score_s[-1], written)
        loop_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        written.set_result(True)  # counts the batch, as the writer's thread does
        stored_s.append(time.perf_counter() - started)
        per_row_s.append(observe_per_row(per_row, frame))
    started = time.perf_counter()
    stats = state.stats()
    stats_s = time.perf_counter() - started
    score, loop, stored, each = (
        statistics.median(s) for s in (score_s, loop_s, stored_s, per_row_s)
    )
    print(
        json.dumps(
            {
                "events": ordered.height,
                "batch": args.batch,
                "score_batch_ms_p50": round(score * 1e3, 3),
                "scoring_loop_metrics_ms_p50": round(loop * 1e3, 4),
                "scoring_loop_metrics_share": round(loop / score, 5),
                "count_stored_batch_ms_p50": round(stored * 1e3, 3),
                "count_stored_batch_share": round(stored / score, 4),
                "latency_observe_per_row_ms_p50": round(each * 1e3, 3),
                "latency_observe_per_row_share": round(each / score, 4),
                "state_stats_ms": round(stats_s * 1e3, 3),
                "state_entities": stats.entities,
                "state_bytes": stats.memory_bytes,
            }
        )
    )


if __name__ == "__main__":
    main()
