"""`Engine.process(batch, state) -> Decisions`: the one function every runner calls.

Batch in, batch out. Inside: order the batch by event time, advance the per-entity feature
state event by event (compiled), then evaluate all rules and the model on the whole batch as
columns, and turn hits and scores into a decision with its reasons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import numpy as np
import numpy.typing as npt
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
from fraudstream.core.errors import ConfigError
from fraudstream.core.events import TRANSACTION_SCHEMA, Transaction, to_frame
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.features.state import FeatureColumns
from fraudstream.core.lists import LIST_FEATURES, ListSnapshot
from fraudstream.core.rules.ruleset import CompiledRuleset, engine_columns
from fraudstream.core.scoring import ModelScorer
from fraudstream.core.text import equals_text

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
    "shadow_score",
    "shadow_model_version",
    "shadow_rules_fired",
)
LATE_REASON = "late_event: arrived after the allowed lateness; stateful features are null"
CARD_PRESENT = "card_present"
_ACTION_NAMES = np.array(ACTIONS)
_COLUMN_TYPES: dict[str, pl.DataType] = {
    **TRANSACTION_SCHEMA,
    CARD_PRESENT: pl.Boolean(),
    **dict.fromkeys(LIST_FEATURES, pl.Boolean()),
}
_NUMBER_COLUMNS = frozenset(
    c for c, t in _COLUMN_TYPES.items() if t.is_numeric() or t == pl.Boolean
)
_TEXT_COLUMNS = frozenset(_COLUMN_TYPES) - _NUMBER_COLUMNS


class Decisions:
    """The result of one batch, rows in event-time processing order.

    The decision itself is held as arrays (`score`, `action`, `is_flagged`, ...), which is all
    a caller deciding in-line needs. `frame` (the transaction columns, every feature and the
    decision columns named in `DECISION_COLUMNS`) and `hits` (one Boolean column per enabled
    rule) are built on first use, for sinks and reports.
    """

    def __init__(
        self,
        inputs: _BatchInputs,
        *,
        rule_ids: tuple[str, ...],
        hit_matrix: npt.NDArray[np.bool_],
        score: npt.NDArray[np.float64],
        rule_score: npt.NDArray[np.float64],
        model_score: npt.NDArray[np.float64] | None,
        action_rank: npt.NDArray[np.int8],
        rules_fired: _Lists,
        reasons: _Lists,
        ruleset_version: str,
        model_version: str | None,
        shadow_score: npt.NDArray[np.float64] | None = None,
        shadow_model_version: str | None = None,
        shadow_rules_fired: _Lists | None = None,
    ) -> None:
        self._inputs = inputs
        self.rule_ids = rule_ids
        self.hit_matrix = hit_matrix
        self.score = score
        self.rule_score = rule_score
        self.model_score = model_score
        self.action_rank = action_rank
        self.rules_fired = rules_fired
        self.reasons = reasons
        self.ruleset_version = ruleset_version
        self.model_version = model_version
        self.shadow_score = shadow_score
        self.shadow_model_version = shadow_model_version
        self.shadow_rules_fired = shadow_rules_fired or _Lists.empty(inputs.rows)
        self._frame: pl.DataFrame | None = None

    @property
    def action(self) -> npt.NDArray[np.str_]:
        return _ACTION_NAMES[self.action_rank]

    @property
    def is_flagged(self) -> npt.NDArray[np.bool_]:
        return self.action_rank > 0

    @property
    def is_late(self) -> npt.NDArray[np.bool_]:
        return self._inputs.features.late

    @property
    def transaction_ids(self) -> list[str]:
        return self._inputs.batch.get_column("transaction_id").to_list()

    @property
    def frame(self) -> pl.DataFrame:
        if self._frame is None:
            self._frame = self._inputs.frame().with_columns(self._decision_series())
        return self._frame

    @property
    def decisions(self) -> pl.DataFrame:
        return self.frame.select(DECISION_COLUMNS)

    @property
    def outcome(self) -> pl.DataFrame:
        """The batch's own columns and the decision columns, without the features: what a
        sink storing decisions needs, at a fraction of the cost of `frame`."""
        late = pl.Series("is_late", self.is_late)
        return self._inputs.batch.with_columns([late, *self._decision_series()])

    @property
    def hits(self) -> pl.DataFrame:
        columns = {rule_id: self.hit_matrix[:, j] for j, rule_id in enumerate(self.rule_ids)}
        return pl.DataFrame(columns, schema=dict.fromkeys(self.rule_ids, pl.Boolean()))

    def __len__(self) -> int:
        return self._inputs.rows

    def _decision_series(self) -> list[pl.Series]:
        rows = len(self)
        return [
            pl.Series("score", np.round(self.score, 6)),
            pl.Series("rule_score", np.round(self.rule_score, 6)),
            _optional_scores("model_score", self.model_score, rows),
            pl.Series("action", self.action, dtype=pl.String),
            pl.Series("is_flagged", self.is_flagged),
            self.rules_fired.to_series("rules_fired"),
            self.reasons.to_series("reasons"),
            pl.Series("ruleset_version", [self.ruleset_version] * rows, dtype=pl.String),
            pl.Series("model_version", [self.model_version] * rows, dtype=pl.String),
            _optional_scores("shadow_score", self.shadow_score, rows),
            pl.Series("shadow_model_version", [self.shadow_model_version] * rows, pl.String),
            self.shadow_rules_fired.to_series("shadow_rules_fired"),
        ]


def _optional_scores(name: str, scores: npt.NDArray[np.float64] | None, rows: int) -> pl.Series:
    """A score column, null where there is no model or it could not score the row."""
    if scores is None:
        return pl.Series(name, [None] * rows, dtype=pl.Float64)
    return pl.Series(name, np.round(scores, 6), dtype=pl.Float64).fill_nan(None)


@dataclass(frozen=True, slots=True)
class _Lists:
    """A list of strings per row, held flat: all values, and how many belong to each row."""

    values: list[str]
    counts: npt.NDArray[np.int32]

    @classmethod
    def empty(cls, rows: int) -> _Lists:
        return cls([], np.zeros(rows, dtype=np.int32))

    def row(self, index: int) -> list[str]:
        start = int(self.counts[:index].sum())
        return self.values[start : start + int(self.counts[index])]

    def rows(self) -> list[list[str]]:
        """Every row's list, in row order."""
        found, start = [], 0
        for count in self.counts.tolist():
            found.append(self.values[start : start + count])
            start += count
        return found

    def to_series(self, name: str) -> pl.Series:
        offsets = np.zeros(self.counts.shape[0] + 1, dtype=np.int32)
        np.cumsum(self.counts, out=offsets[1:])
        values = pa.array(self.values, type=pa.string())
        series = pl.from_arrow(pa.ListArray.from_arrays(pa.array(offsets), values))
        assert isinstance(series, pl.Series)
        return series.alias(name)


class _BatchInputs:
    """One batch as rules read it: the kernel's feature arrays and the transaction columns.

    Arrays are converted once per batch and only when a rule asks; the Polars frame of all
    columns is built only for rules outside the compiled subset, a model, or `Decisions.frame`.
    """

    def __init__(self, batch: pl.DataFrame, features: FeatureColumns, lists: ListSnapshot) -> None:
        self.batch = batch
        self.features = features
        self.lists = lists
        self._numbers: dict[str, npt.NDArray[np.float64]] = {}
        self._frame: pl.DataFrame | None = None

    @property
    def rows(self) -> int:
        return self.batch.height

    def number(self, column: str) -> npt.NDArray[np.float64]:
        if column in self.features.index:
            return self.features.column(column)
        cached = self._numbers.get(column)
        if cached is None:
            if column == CARD_PRESENT:
                hit, known = self.equals("channel", "card_present")
                cached = np.where(known, hit.astype(np.float64), np.nan)
            elif column in LIST_FEATURES:
                cached = self.lists.membership(column, self.batch).astype(np.float64)
            else:  # a Float64 column's nulls come out as NaN
                cached = self.batch.get_column(column).cast(pl.Float64).to_numpy()
            self._numbers[column] = cached
        return cached

    def equals(self, column: str, text: str) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        return equals_text(self.batch.get_column(column), text)

    def frame(self) -> pl.DataFrame:
        if self._frame is None:
            card_present = pa.array(self.number(CARD_PRESENT), from_pandas=True).cast(pa.bool_())
            columns = pl.concat([self.batch, self.features.to_frame()], how="horizontal")
            on_lists = [pl.Series(f, self.number(f).astype(np.bool_)) for f in LIST_FEATURES]
            self._frame = columns.with_columns(pl.Series(CARD_PRESENT, card_present), *on_lists)
        return self._frame

    def values_at(self, column: str, rows: npt.NDArray[np.intp]) -> list[str]:
        """A column's values at `rows`, as reasons show them."""
        dtype = _COLUMN_TYPES.get(column) or self.features.dtypes.get(column) or pl.Float64()
        if column in self.features.index or dtype.is_float() or dtype == pl.Boolean:
            show = (
                _show_flag if dtype == pl.Boolean else _show_count if dtype.is_integer() else repr
            )
            values = self.number(column)[rows].tolist()
            return ["null" if math.isnan(v) else show(v) for v in values]
        picked = self.batch.get_column(column).gather(rows.astype(np.uint32)).to_list()
        return ["null" if v is None else str(v) for v in picked]


_WARM_UP_TIME = datetime(2020, 1, 1, tzinfo=UTC)


def available_columns(config: FeatureConfig) -> dict[str, pl.DataType]:
    """Every column a rule may name: transaction fields, `card_present`, all features, and
    the list features (`card_on_deny_list`, ...)."""
    return engine_columns(config.names, config.boolean_features, config.count_features)


class Engine:
    """Scores batches with a ruleset, an optional model and decision thresholds.

    The engine holds no per-entity state (that is the `FeatureState` passed to `process`) and
    reads no clock; ruleset, models and `lists` (the allow and deny lists in force) can be
    swapped between batches. The `shadow` model is scored beside the live one and stored, but
    never moves a decision.
    """

    def __init__(
        self,
        ruleset: CompiledRuleset,
        decision: DecisionConfig | None = None,
        model: ModelScorer | None = None,
        shadow: ModelScorer | None = None,
        lists: ListSnapshot | None = None,
    ) -> None:
        self.decision = decision or DecisionConfig()
        self.lists = lists or ListSnapshot()
        self.ruleset = ruleset
        self.model = model
        self.shadow = shadow

    @property
    def model(self) -> ModelScorer | None:
        return self._model

    @model.setter
    def model(self, model: ModelScorer | None) -> None:
        self._model = self._checked(model)

    @property
    def shadow(self) -> ModelScorer | None:
        return self._shadow

    @shadow.setter
    def shadow(self, model: ModelScorer | None) -> None:
        self._shadow = self._checked(model)

    @staticmethod
    def _checked(model: ModelScorer | None) -> ModelScorer | None:
        """Refuse a model that wants a text column as a number (feature names are checked
        against the state's features on the first batch: the engine holds no feature config)."""
        if model is not None:
            text = [name for name in model.feature_names if name in _TEXT_COLUMNS]
            if text:
                raise ConfigError(f"model {model.version}: text columns as inputs: {text}")
        return model

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

    def process(
        self, batch: pl.DataFrame, state: FeatureState, decide: str | None = None
    ) -> Decisions:
        """Score a batch (in the engine's transaction schema) and advance `state`.

        With `decide`, the name of a Boolean column of `batch`, every row advances the state but
        only the rows where it is true are scored and returned: a worker that keeps the whole
        stream's state scores only its own partitions' transactions.
        """
        if not batch.get_column("timestamp").is_sorted():
            batch = batch.sort("timestamp", maintain_order=True)
        features = state.advance(batch)
        if decide is not None:
            mask = batch.get_column(decide).to_numpy()
            features = features.select(np.flatnonzero(mask))
            batch = batch.filter(pl.col(decide)).drop(decide)
        inputs = _BatchInputs(batch, features, self.lists)
        hit_matrix, _ = self._ruleset.evaluate_batch(inputs)
        by_rules = rule_scores(hit_matrix, self._weights)
        model_score, drivers = self._model_scores(self._model, inputs, explain=True)
        shadow_score, _ = self._model_scores(self._shadow, inputs, explain=False)
        score = combine_scores(by_rules, model_score)
        action_rank = actions_for(score, hit_matrix, self._rule_actions, self.decision)
        rules_fired, reasons = self._fired_and_reasons(inputs, hit_matrix, drivers)
        return Decisions(
            inputs,
            rule_ids=self._ruleset.rule_ids,
            hit_matrix=hit_matrix,
            score=score,
            rule_score=by_rules,
            model_score=model_score,
            action_rank=action_rank,
            rules_fired=rules_fired,
            reasons=reasons,
            ruleset_version=self._ruleset.version,
            model_version=self._model.version if self._model else None,
            shadow_score=shadow_score,
            shadow_model_version=self._shadow.version if self._shadow else None,
            shadow_rules_fired=self._shadow_rules_fired(inputs),
        )

    def _shadow_rules_fired(self, inputs: _BatchInputs) -> _Lists | None:
        """Per row, the shadow rules that fired, in rule order; None when there are none."""
        shadow = self._ruleset.shadow
        if shadow is None:
            return None
        hits, _ = shadow.evaluate_batch(inputs)
        _, columns = np.nonzero(hits)  # row-major: by row, then by rule
        ids = shadow.rule_ids
        return _Lists([ids[j] for j in columns.tolist()], hits.sum(axis=1, dtype=np.int32))

    def warm_up(self, config: FeatureConfig) -> None:
        """Score a two-row batch on a throwaway state, so that every compiled kernel is loaded
        (from numba's cache, or compiled) now and not inside the first real batch, where it
        would add a few hundred milliseconds to those transactions' latency."""
        fields = {
            "card_ref": "warm-up-card", "customer_id": "warm-up-customer", "merchant_id": "m",
            "terminal_id": "t", "country": "US", "latitude": 40.7, "longitude": -74.0,
            "channel": "online", "device_id": "d", "ip": "192.0.2.1",
        }  # fmt: skip
        transactions = [
            msgspec.convert(
                {
                    "transaction_id": f"warm-up-{i}",
                    "timestamp": _WARM_UP_TIME,
                    "amount": 10.0 * (i + 1),
                    **fields,
                },
                Transaction,
            )
            for i in range(2)
        ]
        frame = to_frame(transactions).with_columns(pl.Series("warm_up", [False, True]))
        self.process(frame, FeatureState(config), decide="warm_up").outcome  # noqa: B018

    @staticmethod
    def _model_scores(
        model: ModelScorer | None, inputs: _BatchInputs, *, explain: bool
    ) -> tuple[npt.NDArray[np.float64] | None, Mapping[int, list[str]] | None]:
        if model is None:
            return None, None
        known = inputs.features.index
        missing = [n for n in model.feature_names if n not in known and n not in _NUMBER_COLUMNS]
        if missing:
            raise ConfigError(f"model {model.version}: the engine computes no {missing}")
        matrix = np.empty((inputs.rows, len(model.feature_names)), dtype=np.float64)
        for j, name in enumerate(model.feature_names):
            matrix[:, j] = inputs.number(name)
        output = model.score(matrix, explain=explain)
        return np.clip(output.scores, 0.0, 1.0), output.drivers

    def _fired_and_reasons(
        self,
        inputs: _BatchInputs,
        hit_matrix: npt.NDArray[np.bool_],
        drivers: Mapping[int, list[str]] | None,
    ) -> tuple[_Lists, _Lists]:
        """Per row: the fired rule ids, and each fired rule with the values it saw (then the
        model's drivers). Strings are built in plain Python for the rows something fired on:
        the few, not the many, so a quiet batch costs almost nothing."""
        n = inputs.rows
        late = inputs.features.late
        rows = np.flatnonzero(hit_matrix.any(axis=1) | late)
        fired_counts = np.zeros(n, dtype=np.int32)
        reason_counts = np.zeros(n, dtype=np.int32)
        fired: list[str] = []
        reasons: list[str] = []
        if rows.size:
            seen = self._values_seen(inputs, hit_matrix, rows)
            flagged = zip(
                rows.tolist(), hit_matrix[rows].tolist(), late[rows].tolist(), strict=True
            )
            for k, (row, row_hits, is_late) in enumerate(flagged):
                fired_before, reasons_before = len(fired), len(reasons)
                for j, hit in enumerate(row_hits):
                    if hit:
                        rule_id, columns = self._explainers[j]
                        fired.append(rule_id)
                        reasons.append(_explain(rule_id, columns, seen, k))
                fired_counts[row] = len(fired) - fired_before
                if is_late:
                    reasons.append(LATE_REASON)
                reason_counts[row] = len(reasons) - reasons_before
        if drivers:
            reasons, reason_counts = _with_model_reasons(reasons, reason_counts, drivers)
        return _Lists(fired, fired_counts), _Lists(reasons, reason_counts)

    def _values_seen(
        self, inputs: _BatchInputs, hit_matrix: npt.NDArray[np.bool_], rows: npt.NDArray[np.intp]
    ) -> dict[str, list[str]]:
        """How every column a fired rule reads is shown, at the given rows."""
        rules_fired = np.flatnonzero(hit_matrix[rows].any(axis=0)).tolist()
        columns = dict.fromkeys(c for j in rules_fired for c in self._explainers[j][1])
        return {c: inputs.values_at(c, rows) for c in columns}


def _columns_read(expression: str) -> tuple[str, ...]:
    """The columns a rule's expression reads, in order of first mention."""
    return tuple(dict.fromkeys(pl.sql_expr(expression).meta.root_names()))


def _explain(rule_id: str, columns: tuple[str, ...], seen: dict[str, list[str]], k: int) -> str:
    """`card_velocity_10m: tx_count_by_card_10m=7, amount=12.5` for a fired rule."""
    if not columns:
        return rule_id
    values = ", ".join(f"{c}={seen[c][k]}" for c in columns)
    return f"{rule_id}: {values}"


def _show_flag(value: float) -> str:
    return "true" if value else "false"


def _show_count(value: float) -> str:
    return str(int(value))


def _with_model_reasons(
    reasons: list[str], counts: npt.NDArray[np.int32], drivers: Mapping[int, list[str]]
) -> tuple[list[str], npt.NDArray[np.int32]]:
    """Append `model: <driver>` after the rule reasons of each row the model explained."""
    ends = np.cumsum(counts)
    merged: list[str] = []
    taken = 0
    merged_counts = counts.copy()
    for row in sorted(drivers):
        end = int(ends[row])
        merged.extend(reasons[taken:end])
        merged.extend(f"model: {d}" for d in drivers[row])
        merged_counts[row] += len(drivers[row])
        taken = end
    merged.extend(reasons[taken:])
    return merged, merged_counts
