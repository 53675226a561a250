"""`Engine.process(batch, state) -> Decisions`: the one function every runner calls.

Batch in, batch out. Inside: order the batch by event time, advance the per-entity feature
state event by event (compiled), then evaluate all rules and the model on the whole batch as
columns, and turn hits and scores into a decision with its reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from fraudstream.core.decision import (
    ACTIONS,
    SEVERITY,
    DecisionConfig,
    actions_for,
    combine_scores,
    rule_scores,
)
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules.ruleset import CompiledRuleset, engine_columns
from fraudstream.core.scoring import ModelScorer

DECISION_COLUMNS = (
    "transaction_id",
    "score",
    "rule_score",
    "model_score",
    "action",
    "is_flagged",
    "rules_fired",
    "reasons",
    "is_late",
    "ruleset_version",
    "model_version",
)
LATE_REASON = "late_event: arrived after the allowed lateness; stateful features are null"


@dataclass(frozen=True, slots=True)
class Decisions:
    """The result of one batch, rows in event-time processing order.

    `frame` holds the transaction columns, every feature, and the decision columns named in
    `DECISION_COLUMNS`; `hits` holds one Boolean column per enabled rule (for rule statistics).
    """

    frame: pl.DataFrame
    hits: pl.DataFrame

    @property
    def decisions(self) -> pl.DataFrame:
        return self.frame.select(DECISION_COLUMNS)

    def __len__(self) -> int:
        return self.frame.height


def available_columns(config: FeatureConfig) -> dict[str, pl.DataType]:
    """Every column a rule may name: transaction fields, `card_present` and all features."""
    return engine_columns(config.names, config.boolean_features, config.count_features)


class Engine:
    """Scores batches with a ruleset, an optional model and decision thresholds.

    The engine holds no per-entity state (that is the `FeatureState` passed to `process`) and
    reads no clock; ruleset and model can be swapped between batches.
    """

    def __init__(
        self,
        ruleset: CompiledRuleset,
        decision: DecisionConfig | None = None,
        model: ModelScorer | None = None,
    ) -> None:
        self.decision = decision or DecisionConfig()
        self.model = model
        self.ruleset = ruleset

    @property
    def ruleset(self) -> CompiledRuleset:
        return self._ruleset

    @ruleset.setter
    def ruleset(self, ruleset: CompiledRuleset) -> None:
        self._ruleset = ruleset
        rules = ruleset.rules
        self._weights = np.array([rule.score for rule in rules], dtype=np.float64)
        self._rule_actions = np.array([SEVERITY[rule.action] for rule in rules], dtype=np.int8)
        self._explainers = [(rule.id, _columns_read(rule.expression)) for rule in rules]

    def process(self, batch: pl.DataFrame, state: FeatureState) -> Decisions:
        """Score a batch (in the engine's transaction schema) and advance `state`."""
        if batch.height == 0:
            return self._empty(state)
        if not batch.get_column("timestamp").is_sorted():
            batch = batch.sort("timestamp", maintain_order=True)
        features = state.update(batch)
        frame = pl.concat([batch, features], how="horizontal").with_columns(
            card_present=pl.col("channel") == "card_present"
        )
        hits = self._ruleset.evaluate(frame)
        hit_matrix = hits.to_numpy().astype(np.bool_, copy=False).reshape(frame.height, -1)
        by_rules = rule_scores(hit_matrix, self._weights)
        model_score, drivers = self._model_scores(frame)
        score = combine_scores(by_rules, model_score)
        action_rank = actions_for(score, hit_matrix, self._rule_actions, self.decision)
        decided = frame.with_columns(
            pl.Series("score", np.round(score, 6)),
            pl.Series("rule_score", np.round(by_rules, 6)),
            _model_column(model_score, frame.height),
            pl.Series("action", np.array(ACTIONS)[action_rank], dtype=pl.String),
            pl.Series("is_flagged", action_rank > 0),
            *self._fired_and_reasons(frame, hit_matrix, drivers),
            pl.lit(self._ruleset.version).alias("ruleset_version"),
            pl.lit(self.model.version if self.model else None, dtype=pl.String).alias(
                "model_version"
            ),
        )
        return Decisions(decided, hits)

    def _model_scores(
        self, frame: pl.DataFrame
    ) -> tuple[np.ndarray | None, list[list[str]] | None]:
        if self.model is None:
            return None, None
        output = self.model.score(frame.select(self.model.feature_names))
        return np.clip(output.scores, 0.0, 1.0), output.drivers

    def _fired_and_reasons(
        self,
        frame: pl.DataFrame,
        hit_matrix: np.ndarray,
        drivers: list[list[str]] | None,
    ) -> tuple[pl.Series, pl.Series]:
        """Per row: the fired rule ids, and each fired rule with the values it saw (then the
        model's drivers). Strings are built in plain Python for the rows something fired on:
        the few, not the many, so a quiet batch costs almost nothing; the list columns are
        assembled from flat values and offsets (Arrow), not from a list per row."""
        n = frame.height
        late = frame.get_column("is_late").to_numpy()
        rows = np.flatnonzero(hit_matrix.any(axis=1) | late)
        fired_counts = np.zeros(n, dtype=np.int32)
        reason_counts = np.zeros(n, dtype=np.int32)
        fired: list[str] = []
        reasons: list[str] = []
        if rows.size:
            seen = self._values_seen(frame, hit_matrix, rows)
            for k, row in enumerate(rows.tolist()):
                fired_before, reasons_before = len(fired), len(reasons)
                for j in np.flatnonzero(hit_matrix[row]).tolist():
                    rule_id, columns = self._explainers[j]
                    fired.append(rule_id)
                    reasons.append(_explain(rule_id, columns, seen, k))
                fired_counts[row] = len(fired) - fired_before
                if late[row]:
                    reasons.append(LATE_REASON)
                reason_counts[row] = len(reasons) - reasons_before
        if drivers is not None:
            reasons, reason_counts = _with_model_reasons(reasons, reason_counts, drivers)
        return (
            _list_column("rules_fired", fired, fired_counts),
            _list_column("reasons", reasons, reason_counts),
        )

    def _values_seen(
        self, frame: pl.DataFrame, hit_matrix: np.ndarray, rows: np.ndarray
    ) -> dict[str, list[object]]:
        """The values of every column a fired rule reads, at the given rows."""
        rules_fired = np.flatnonzero(hit_matrix[rows].any(axis=0)).tolist()
        columns = list(dict.fromkeys(c for j in rules_fired for c in self._explainers[j][1]))
        if not columns:
            return {}
        picked = frame.select(columns)[rows.astype(np.uint32)]
        return {c: picked.get_column(c).to_list() for c in columns}

    def _empty(self, state: FeatureState) -> Decisions:
        del state
        schema = {name: pl.Null() for name in DECISION_COLUMNS}
        return Decisions(pl.DataFrame(schema=schema), pl.DataFrame())


def _model_column(model_score: np.ndarray | None, height: int) -> pl.Series:
    if model_score is None:
        return pl.Series("model_score", [None] * height, dtype=pl.Float64)
    return pl.Series("model_score", model_score, dtype=pl.Float64).fill_nan(None)


def _columns_read(expression: str) -> tuple[str, ...]:
    """The columns a rule's expression reads, in order of first mention."""
    return tuple(dict.fromkeys(pl.sql_expr(expression).meta.root_names()))


def _explain(rule_id: str, columns: tuple[str, ...], seen: dict[str, list[object]], k: int) -> str:
    """`card_velocity_10m: tx_count_by_card_10m=7, amount=12.5` for a fired rule."""
    if not columns:
        return rule_id
    values = ", ".join(f"{c}={_shown(seen[c][k])}" for c in columns)
    return f"{rule_id}: {values}"


def _shown(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _with_model_reasons(
    reasons: list[str], counts: np.ndarray, drivers: list[list[str]]
) -> tuple[list[str], np.ndarray]:
    """Append `model: <driver>` to each row's rule reasons."""
    merged: list[str] = []
    start = 0
    for row, row_drivers in enumerate(drivers):
        end = start + int(counts[row])
        merged.extend(reasons[start:end])
        merged.extend(f"model: {d}" for d in row_drivers)
        start = end
    merged_counts = counts + np.array([len(d) for d in drivers], dtype=np.int32)
    return merged, merged_counts


def _list_column(name: str, values: list[str], counts: np.ndarray) -> pl.Series:
    """A `list[str]` column from flat values and per-row counts."""
    offsets = np.zeros(counts.shape[0] + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.string()))
    series = pl.from_arrow(lists)
    assert isinstance(series, pl.Series)
    return series.alias(name)
