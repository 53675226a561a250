"""Backtest speed: `fraudstream backtest` on a few million labelled rows, as a user runs it.

    python bench/backtest.py [--rows 2000000] [--days 120] [--seed 11] [--tmp var/bench]

Generates a labelled history, writes it as Parquet twice — the full transaction schema, and a
foreign dataset with nothing but a customer, a terminal, an amount, a timestamp and a label
under other column names — and times the real command line on each (process start, reading,
replay through the engine in event-time order, metrics, report), then once more on the full
file with both models trained on the first 60 % and compared on the rest. Beside them runs the
baseline: the plain-Python per-event loop computing the same default features, timed on the
first 50 000 rows (its rate does not fall with more rows, so it flatters the baseline).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

import python_loop
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.generator.output import write_parquet

FOREIGN = {
    "customer_id": "CUSTOMER_ID",
    "terminal_id": "TERMINAL_ID",
    "amount": "TX_AMOUNT",
    "timestamp": "TX_DATETIME",
}


def timed_backtest(path: Path, *extra: str) -> dict[str, float]:
    """Run `fraudstream backtest` in its own process; its wall time and rows per second."""
    report = path.with_suffix(".report.json")
    command = [sys.executable, "-m", "fraudstream", "backtest", str(path), "--json", str(report)]
    start = time.perf_counter()
    subprocess.run([*command, *extra], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    figures = json.loads(report.read_text())
    return {
        "seconds": round(seconds, 1),
        "rows_per_s": round(figures["transactions"] / seconds),
        "replay_rows_per_s": round(figures["rate_tx_per_s"]),
        "roc_auc": figures["roc_auc"],
        **_model_figures(figures.get("models")),
    }


def _model_figures(models: dict[str, Any] | None) -> dict[str, object]:
    """Each variant's ROC AUC and average precision on the later window, when compared."""
    if not models:
        return {}
    variants = {
        row["variant"]: {
            "roc_auc": round(row["roc_auc"], 4),
            "ap": round(row["average_precision"], 4),
        }
        for row in models["variants"]
    }
    return {"train_rows": models["train_rows"], "test_rows": models["test_rows"], **variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--tmp", type=Path, default=Path("var/bench"))
    args = parser.parse_args()
    args.tmp.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    customers = max(10_000, args.rows // 50)
    stream = generate(
        GeneratorConfig(
            seed=args.seed, n_transactions=args.rows, days=args.days, n_customers=customers
        )
    )
    generated_s = time.perf_counter() - start
    full = write_parquet(stream, args.tmp / "backtest-full.parquet")
    foreign = args.tmp / "backtest-foreign.parquet"
    pl.read_parquet(full).select(
        *(pl.col(ours).alias(theirs) for ours, theirs in FOREIGN.items()),
        pl.col("is_fraud").cast(pl.Int8).alias("TX_FRAUD"),
    ).write_parquet(foreign)
    mapping = [arg for ours, theirs in FOREIGN.items() for arg in ("--map", f"{ours}={theirs}")]

    result = {
        "bench": "backtest",
        "rows": stream.transactions.height,
        "fraud": int(stream.labels.get_column("is_fraud").sum()),
        "days": args.days,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "generate_s": round(generated_s, 1),
        "rules_full_schema": timed_backtest(full),
        "rules_foreign_5_columns": timed_backtest(
            foreign, *mapping, "--label", "TX_FRAUD", "--scenario", "none"
        ),
        "rules_and_both_models": timed_backtest(
            full, "--model", "isolation_forest", "--model", "gradient_boosting"
        ),
        "baseline": {
            "what": "plain-Python per-event loop, same default features, no rules, first 50 000",
            "rows_per_s": round(python_loop.rate(stream.transactions.head(50_000))),
        },
        "target": "a few million rows in minutes",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
