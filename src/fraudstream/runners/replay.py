"""Replay a labelled stream through the engine in event-time order and measure it.

Used by the demo (the README's main job) and by backtests: batches go through the one engine
call every runner uses; the ground truth is joined only afterwards, to score the decisions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import polars as pl

from fraudstream.core.engine import Decisions, Engine
from fraudstream.core.features import FeatureState


@dataclass
class ReplayProgress:
    """Running figures, updated after every batch."""

    processed: int = 0
    flagged: int = 0
    elapsed_s: float = 0.0
    actions: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("approve", "review", "decline"), 0)
    )

    @property
    def rate(self) -> float:
        return self.processed / self.elapsed_s if self.elapsed_s else 0.0


def batches(frame: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    for start in range(0, frame.height, size):
        yield frame.slice(start, size)


def replay(
    transactions: pl.DataFrame,
    engine: Engine,
    state: FeatureState,
    batch_size: int = 1000,
    on_batch: Callable[[ReplayProgress, Decisions], None] | None = None,
    expire_every: int = 50,
) -> tuple[pl.DataFrame, ReplayProgress]:
    """Score every transaction; returns the decisions (with features) and the final figures."""
    progress = ReplayProgress()
    outputs: list[pl.DataFrame] = []
    ordered = transactions.sort("timestamp", maintain_order=True)
    for number, batch in enumerate(batches(ordered, batch_size), start=1):
        started = time.perf_counter()
        decided = engine.process(batch, state)
        if number % expire_every == 0:
            state.expire()
        progress.elapsed_s += time.perf_counter() - started
        progress.processed += len(decided)
        counts = decided.frame.get_column("action").value_counts()
        for action, count in counts.iter_rows():
            progress.actions[action] = progress.actions.get(action, 0) + count
        progress.flagged = progress.actions["review"] + progress.actions["decline"]
        outputs.append(decided.frame)
        if on_batch is not None:
            on_batch(progress, decided)
    frame = pl.concat(outputs, how="vertical_relaxed") if outputs else pl.DataFrame()
    return frame, progress


def scenario_report(decisions: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """Precision and recall of the flag (review or decline) per fraud scenario.

    Recall per scenario = flagged fraud of that scenario / fraud of that scenario. Precision is
    only meaningful overall (a flag on a legitimate transaction belongs to no scenario), so the
    `all` row carries it; scenario rows show the share of all flags they account for.
    """
    joined = decisions.select("transaction_id", "is_flagged").join(
        labels, on="transaction_id", how="inner"
    )
    fraud = joined.filter(pl.col("is_fraud"))
    per_scenario = (
        fraud.group_by("scenario")
        .agg(
            pl.len().alias("fraud"),
            pl.col("is_flagged").sum().alias("caught"),
        )
        .with_columns((pl.col("caught") / pl.col("fraud")).alias("recall"))
        .sort("scenario")
    )
    flagged = int(joined.get_column("is_flagged").sum())
    true_flags = int(fraud.get_column("is_flagged").sum())
    overall = pl.DataFrame(
        {
            "scenario": ["all"],
            "fraud": [fraud.height],
            "caught": [true_flags],
            "recall": [true_flags / fraud.height if fraud.height else 0.0],
        },
        schema=per_scenario.schema,
    )
    table = pl.concat([per_scenario, overall])
    return table.with_columns(
        precision=pl.when(pl.col("scenario") == "all")
        .then(pl.lit(true_flags / flagged if flagged else 0.0))
        .otherwise(None),
        flags=pl.when(pl.col("scenario") == "all").then(pl.lit(flagged)).otherwise(None),
    )
