"""Core throughput: the engine at batch sizes 1/100/1k/10k beside a plain-Python loop.

    python bench/engine.py [--events 200000] [--seed 7] [--repeat 3]

Runs on one core (Polars and numba threads pinned to 1 before import). Prints one JSON line:
engine tx/s per batch size (features + all default rules + decisions with reasons, as arrays;
median and best of `--repeat` runs, each on a fresh state, since a shared machine varies by
about 20 % from run to run), the same at batch 1 000 when each batch's output frame is also
built (what a sink pays for), the same with each trained model scoring every batch (Isolation
Forest, LightGBM: trained first on another generated history, reasons for the rows they
flag), the feature state alone at batch 1 000, the p50/p99 latency of
a batch of one, JSON decode rate, the state's memory per active card, and the baseline
per-event Python loop computing the same features on the same events. Compile time is
excluded by a warm-up on a separate state.
"""

from __future__ import annotations

import os

os.environ.setdefault("POLARS_MAX_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

import python_loop
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.events import decode_many, to_frame
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.core.scoring import ModelScorer
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.generator.output import write_jsonl
from fraudstream.ml.backtest import History, backtest
from fraudstream.ml.train import fraction_split


def _engine(config: FeatureConfig) -> Engine:
    spec = parse_ruleset(load_default_ruleset_text())
    return Engine(compile_ruleset(spec, available_columns(config)))


def engine_rate(
    frame: pl.DataFrame,
    batch_size: int,
    limit: int,
    *,
    with_frame: bool = False,
    model: ModelScorer | None = None,
) -> float:
    """Decisions per second; `with_frame` also builds each batch's output frame (for sinks);
    `model` scores every batch and explains the rows it flags."""
    config = FeatureConfig()
    engine, state = _engine(config), FeatureState(config)
    engine.model = model
    frame = frame.head(limit)
    batches = [frame.slice(i, batch_size) for i in range(0, frame.height, batch_size)]
    start = time.perf_counter()
    for batch in batches:
        decided = engine.process(batch, state)
        if with_frame:
            decided.frame  # noqa: B018 - built on first access; that cost is what we measure
    return frame.height / (time.perf_counter() - start)


def trained_models(seed: int) -> dict[str, ModelScorer]:
    """Both model kinds, trained on another generated history's first 60 % (7-day gap)."""
    stream = generate(GeneratorConfig(seed=seed, n_transactions=40_000, days=40))
    timestamps = stream.transactions.get_column("timestamp")
    split = fraction_split(timestamps, 0.6, timedelta(days=7))
    config = FeatureConfig()
    report = backtest(
        History(stream.transactions, stream.labels), _engine(config), config, split=split,
        kinds=("isolation_forest", "gradient_boosting"),
    )  # fmt: skip
    assert report.comparison is not None
    return dict(report.comparison.models)


def state_only_rate(frame: pl.DataFrame, batch_size: int) -> tuple[float, FeatureState]:
    state = FeatureState(FeatureConfig())
    batches = [frame.slice(i, batch_size) for i in range(0, frame.height, batch_size)]
    start = time.perf_counter()
    for batch in batches:
        state.advance(batch)
    return frame.height / (time.perf_counter() - start), state


def single_event_latency_ms(frame: pl.DataFrame, warm: int, measured: int) -> dict[str, float]:
    config = FeatureConfig()
    engine, state = _engine(config), FeatureState(config)
    rows = [frame.slice(i, 1) for i in range(warm + measured)]
    for row in rows[:warm]:
        engine.process(row, state)
    timings = []
    for row in rows[warm:]:
        start = time.perf_counter()
        engine.process(row, state)
        timings.append(time.perf_counter() - start)
    ms = np.array(timings) * 1e3
    return {
        "p50": round(float(np.percentile(ms, 50)), 4),
        "p99": round(float(np.percentile(ms, 99)), 4),
    }


def decode_rate(stream: object, tmp: Path) -> float:
    path = tmp / "bench-decode.jsonl"
    write_jsonl(stream, path)  # type: ignore[arg-type]
    lines = path.read_bytes().splitlines()
    start = time.perf_counter()
    good, bad = decode_many(lines)
    to_frame(good)
    elapsed = time.perf_counter() - start
    assert not bad, bad[:1]
    return len(lines) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tmp", type=Path, default=Path("var/bench"))
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per batch size (median and best reported)"
    )
    args = parser.parse_args()
    args.tmp.mkdir(parents=True, exist_ok=True)

    stream = generate(GeneratorConfig(seed=args.seed, n_transactions=args.events))
    frame = stream.transactions
    engine_rate(frame, 1000, 5000)  # compile and warm every kernel and expression once

    limits = {1: 3000, 100: 50_000, 1000: frame.height, 10_000: frame.height}
    runs = {
        str(size): sorted(engine_rate(frame, size, limit) for _ in range(args.repeat))
        for size, limit in limits.items()
    }
    rates = {size: rates[len(rates) // 2] for size, rates in runs.items()}
    models = trained_models(args.seed + 1)
    engine_rate(frame, 1000, 5000, model=models["gradient_boosting"])  # warm LightGBM/sklearn
    with_models = {
        kind: sorted(
            engine_rate(frame, 1000, frame.height, model=model) for _ in range(args.repeat)
        )
        for kind, model in models.items()
    }
    features_rate, state = state_only_rate(frame, 1000)
    stats = state.stats()
    baseline_events = min(frame.height, 50_000)
    result = {
        "bench": "engine",
        "events": frame.height,
        "cores": 1,
        "python": platform.python_version(),
        "repeats": args.repeat,
        "engine_tx_per_s": {size: round(rate) for size, rate in rates.items()},
        "engine_tx_per_s_best": {size: round(r[-1]) for size, r in runs.items()},
        "engine_with_output_frame_tx_per_s_at_1000": round(
            engine_rate(frame, 1000, frame.height, with_frame=True)
        ),
        "engine_with_model_tx_per_s_at_1000": {
            kind: round(r[len(r) // 2]) for kind, r in with_models.items()
        },
        "features_only_tx_per_s_at_1000": round(features_rate),
        "batch_of_one_ms": single_event_latency_ms(frame, 500, 3000),
        "decode_json_tx_per_s": round(decode_rate(stream, args.tmp)),
        "state_bytes_per_active_card": round(stats.memory_bytes / max(1, stats.entities["card"])),
        "state": {
            "entities": stats.entities,
            "retained_events": stats.retained_events,
            "memory_bytes": stats.memory_bytes,
            "allocated_bytes": stats.allocated_bytes,
        },
        "baseline": {
            "what": "plain-Python per-event loop, same default features, no rules",
            "events": baseline_events,
            "tx_per_s": round(python_loop.rate(frame.head(baseline_events))),
        },
        "targets": {
            "engine_tx_per_s_at_1000": 200_000,
            "engine_with_model_tx_per_s_at_1000": 50_000,
            "batch_of_one_p99_ms": 1.0,
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
