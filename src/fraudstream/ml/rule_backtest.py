"""Backtest a draft rule: what it would have done on recent stored traffic, before it goes live.

The history is scored twice through the engine, exactly as the stream scores it: once with the
live rules (the baseline), once with the live rules plus the candidate, enabled and deciding
(the candidate replaces a live rule with the same id). The candidate's hits, and every row
whose action differs between the two runs, are what the analyst looks at.

Warm-up: features are computed from the past only (card velocity over ten minutes, customer
spend over thirty days, ...). Scoring just the measured window would start every entity with an
empty history and undercount those features at the window's start, so the rows before
`measured_from` are scored first, only to build the feature state, and are not measured.

Labels: over the last few days most transactions have no label yet: a chargeback takes weeks
and analysts review only what was flagged. So an unlabelled row is unknown, not legitimate:
precision and recall are computed over labelled rows only, and the candidate's hits on
unlabelled rows are counted apart (`unlabelled_hits`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from fraudstream.adapters.labels import recent_history
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.lists import ListSnapshot
from fraudstream.core.rules import CompiledRuleset, Rule, RulesetSpec, compile_ruleset
from fraudstream.runners.replay import replay

_APPROVE = "approve"


@dataclass(frozen=True, slots=True)
class RuleBacktest:
    """What a candidate rule would have done on the measured window of a history.

    `window_end` is the end of the measured window: the `now` of `run_rule_backtest`, or, for
    `backtest_rule` on frames, the latest event time scored (`window_start` when there is none).
    """

    rule_id: str
    window_start: datetime
    window_end: datetime
    transactions: int
    warm_up_transactions: int
    truncated: bool
    hits: int
    hit_rate: float
    labelled_fraud: int
    labelled_legitimate: int
    fraud_hits: int
    legitimate_hits: int
    unlabelled_hits: int
    precision: float | None
    recall: float | None
    action_changes: dict[str, int]
    newly_flagged_fraud: int
    baseline_ruleset_version: str

    def to_dict(self) -> dict[str, object]:
        """Plain, JSON-ready data (datetimes in ISO 8601)."""
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        data["window_start"] = self.window_start.isoformat()
        data["window_end"] = self.window_end.isoformat()
        data["action_changes"] = dict(self.action_changes)
        return data


def with_candidate(live: RulesetSpec, candidate: Rule) -> RulesetSpec:
    """`live` with `candidate` enabled and deciding, in place of a live rule with its id (or
    appended when it is new)."""
    deciding = dataclasses.replace(candidate, enabled=True, shadow=False)
    rules = [deciding if rule.id == candidate.id else rule for rule in live.rules]
    if all(rule.id != candidate.id for rule in live.rules):
        rules.append(deciding)
    return RulesetSpec(version=f"{live.version}+{candidate.id}", rules=tuple(rules))


def backtest_rule(
    transactions: pl.DataFrame,
    labels: pl.DataFrame,
    live: RulesetSpec,
    candidate: Rule,
    *,
    measured_from: datetime,
    config: FeatureConfig | None = None,
    lists: ListSnapshot | None = None,
    batch_size: int = 1000,
    truncated: bool = False,
) -> RuleBacktest:
    """Score `transactions` (engine schema) with `live`, then with `live` plus `candidate`,
    and measure the rows from `measured_from` on against `labels` (`transaction_id`,
    `is_fraud`, for the labelled rows only). Raises `RuleError` when the candidate does not
    compile."""
    if measured_from.tzinfo is None:
        raise ValueError("measured_from must be timezone-aware")
    config = config or FeatureConfig()
    columns = available_columns(config)
    baseline = compile_ruleset(live, columns)
    challenger = compile_ruleset(with_candidate(live, candidate), columns)
    before = _score(transactions, baseline, config, lists, batch_size)
    after = _score(transactions, challenger, config, lists, batch_size)
    rows = _compared(before, after, labels, candidate.id)
    measured = rows.filter(pl.col("timestamp") >= measured_from)
    return _measure(
        measured,
        rule_id=candidate.id,
        window=(measured_from, _latest(measured, measured_from)),
        warm_up=rows.height - measured.height,
        truncated=truncated,
        baseline_version=live.version,
    )


def run_rule_backtest(
    url: str,
    live: RulesetSpec,
    candidate: Rule,
    *,
    days: float,
    now: datetime,
    lists: ListSnapshot | None = None,
    config: FeatureConfig | None = None,
    limit: int = 500_000,
) -> RuleBacktest:
    """Backtest `candidate` on the stored transactions of [`now` - `days`, `now`), after a
    warm-up as long as the longest feature window; at most the latest `limit` rows are read."""
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    config = config or FeatureConfig()
    measured_from = now - timedelta(days=days)
    history = recent_history(url, measured_from - warm_up_period(config), now, limit)
    result = backtest_rule(
        history.transactions,
        history.labels,
        live,
        candidate,
        measured_from=measured_from,
        config=config,
        lists=lists,
        truncated=history.truncated,
    )
    return dataclasses.replace(result, window_end=now)


def warm_up_period(config: FeatureConfig) -> timedelta:
    """How much history before the measured window the features need: the longest window."""
    longest_us = max(*config.account_windows_us, *config.place_windows_us)
    return timedelta(microseconds=longest_us)


def _score(
    transactions: pl.DataFrame,
    ruleset: CompiledRuleset,
    config: FeatureConfig,
    lists: ListSnapshot | None,
    batch_size: int,
) -> pl.DataFrame:
    """Each row's id, event time, action and fired rules, in event-time processing order."""
    engine = Engine(ruleset, lists=lists)
    scored, _ = replay(transactions, engine, FeatureState(config), batch_size=batch_size)
    if scored.is_empty():
        return pl.DataFrame(
            schema={
                "transaction_id": pl.String(),
                "timestamp": pl.Datetime("us", "UTC"),
                "action": pl.String(),
                "rules_fired": pl.List(pl.String()),
            }
        )
    return scored.select("transaction_id", "timestamp", "action", "rules_fired")


def _compared(
    before: pl.DataFrame, after: pl.DataFrame, labels: pl.DataFrame, rule_id: str
) -> pl.DataFrame:
    """Per row: event time, both actions, whether the candidate fired, the label (or null).

    Both runs process the same rows in the same order, so they line up row for row."""
    if not before.get_column("transaction_id").equals(after.get_column("transaction_id")):
        raise RuntimeError("the two runs scored the transactions in different orders")
    known = labels.select("transaction_id", pl.col("is_fraud").cast(pl.Boolean))
    return (
        before.select(
            "transaction_id",
            "timestamp",
            pl.col("action").alias("before"),
            after.get_column("action").alias("after"),
            after.get_column("rules_fired").list.contains(rule_id).alias("hit"),
        )
        .with_row_index("row")
        .join(known.unique("transaction_id", keep="last"), on="transaction_id", how="left")
        .sort("row")
    )


def _latest(measured: pl.DataFrame, otherwise: datetime) -> datetime:
    latest = measured.get_column("timestamp").max()
    return latest if isinstance(latest, datetime) else otherwise


def _measure(
    measured: pl.DataFrame,
    *,
    rule_id: str,
    window: tuple[datetime, datetime],
    warm_up: int,
    truncated: bool,
    baseline_version: str,
) -> RuleBacktest:
    count = _counts(measured)
    total = measured.height
    return RuleBacktest(
        rule_id=rule_id,
        window_start=window[0],
        window_end=window[1],
        transactions=total,
        warm_up_transactions=warm_up,
        truncated=truncated,
        hits=count["hits"],
        hit_rate=count["hits"] / total if total else 0.0,
        labelled_fraud=count["fraud"],
        labelled_legitimate=count["legitimate"],
        fraud_hits=count["fraud_hits"],
        legitimate_hits=count["legitimate_hits"],
        unlabelled_hits=count["unlabelled_hits"],
        precision=_ratio(count["fraud_hits"], count["fraud_hits"] + count["legitimate_hits"]),
        recall=_ratio(count["fraud_hits"], count["fraud"]),
        action_changes=_action_changes(measured),
        newly_flagged_fraud=count["newly_flagged_fraud"],
        baseline_ruleset_version=baseline_version,
    )


def _counts(measured: pl.DataFrame) -> dict[str, int]:
    """Hits and labels of the measured rows; a null label (unknown) is neither fraud nor not."""
    hit, fraud, legitimate = pl.col("hit"), pl.col("is_fraud"), pl.col("is_fraud").not_()
    newly_flagged = (pl.col("before") == _APPROVE) & (pl.col("after") != _APPROVE)
    counts = measured.select(
        hits=hit.sum(),
        fraud=fraud.sum(),
        legitimate=legitimate.sum(),
        fraud_hits=(hit & fraud).sum(),
        legitimate_hits=(hit & legitimate).sum(),
        unlabelled_hits=(hit & fraud.is_null()).sum(),
        newly_flagged_fraud=(fraud & newly_flagged).sum(),
    )
    return {name: int(value or 0) for name, value in counts.row(0, named=True).items()}


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _action_changes(measured: pl.DataFrame) -> dict[str, int]:
    """`{"approve->review": 12, ...}` over the rows whose action differs, sorted by key."""
    changed = measured.filter(pl.col("before") != pl.col("after"))
    pairs = Counter(zip(changed.get_column("before"), changed.get_column("after"), strict=True))
    return {f"{old}->{new}": count for (old, new), count in sorted(pairs.items())}
