"""The API's rules under management: `GET|POST /v1/rules`, `GET|PATCH /v1/rules/{id}`,
`GET /v1/rules/{id}/versions` and `POST /v1/rules/{id}/backtest`.

Reading rules and their measured figures needs the `read` permission (analysts too); changing
them, and backtesting, needs `rules` (rule admins only). Every change is a new version with the
key that made it and the reason given, checked before it is stored (a bad expression is refused
with the compiler's reason), audited, and applied by running workers and API processes within
`rules.poll_interval_s`. Handlers are plain functions, run on FastAPI's thread pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Final, TypeVar

from fastapi import Depends, FastAPI, Path, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from fraudstream.adapters.api_keys import ApiKey
from fraudstream.adapters.rule_stats import RuleFigures
from fraudstream.adapters.rules_store import RuleChangeError, RuleState, RuleStore
from fraudstream.core.rules import Action, Rule, RulesetSpec, Severity
from fraudstream.core.rules.managed import RuleStatus
from fraudstream.core.rules.spec import MAX_EXPRESSION_LENGTH, RULE_ID_PATTERN
from fraudstream.ml.rule_backtest import RuleBacktest
from fraudstream.runners.api_http import (
    ApiError,
    FieldError,
    actor,
    database_call,
    problems,
    require,
)

Backtester = Callable[[Rule, RulesetSpec, float, datetime | None], RuleBacktest]
"""Replays the last N days of stored history with a candidate rule beside the live ones."""

_Reason = Annotated[
    str, Field(min_length=1, max_length=1000, description="Why: kept with the version.")
]
_Description = Annotated[str, Field(max_length=2000)]
_Expression = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_EXPRESSION_LENGTH,
        description="A SQL boolean expression over the transaction's columns and features.",
    ),
]
_Score = Annotated[float, Field(ge=0, le=100, description="Points added when the rule fires.")]
_Tags = Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=20)]


class NewRule(BaseModel):
    """A rule to manage in the database; a draft unless told otherwise."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=RULE_ID_PATTERN.pattern)
    description: _Description
    expression: _Expression
    score: _Score
    action: Action = "review"
    severity: Severity = "medium"
    tags: _Tags = []
    status: RuleStatus = "draft"
    reason: _Reason


class RuleChange(BaseModel):
    """What to change; fields left out keep their value. `expected_version` refuses the change
    (409) if someone else changed the rule since the caller read it."""

    model_config = ConfigDict(extra="forbid")

    description: _Description | None = None
    expression: _Expression | None = None
    score: _Score | None = None
    action: Action | None = None
    severity: Severity | None = None
    tags: _Tags | None = None
    status: RuleStatus | None = None
    reason: _Reason
    expected_version: int | None = Field(default=None, ge=1, le=2**31 - 1)


class BacktestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: float = Field(default=7.0, gt=0, le=90, description="How much stored history.")
    until: AwareDatetime | None = Field(
        default=None, description="End of the window (event time); unset: now."
    )


@dataclass(frozen=True, slots=True)
class RuleWithFigures:
    """A rule and what it measures: hit rate since its window start, precision and recall
    from the labels (see `adapters/rule_stats.py`)."""

    rule: RuleState
    figures: RuleFigures


class RuleList(BaseModel):
    rules: list[RuleWithFigures]


class RuleVersions(BaseModel):
    versions: list[RuleState]


RuleId = Annotated[str, Path(pattern=RULE_ID_PATTERN.pattern)]
WindowHours = Annotated[float, Query(gt=0, le=24 * 90, description="Hit-rate window.")]
LabelDays = Annotated[float, Query(gt=0, le=3650, description="Precision and recall window.")]
RulesReader = Annotated[ApiKey, Depends(require("read"))]
RulesAdmin = Annotated[ApiKey, Depends(require("rules"))]
_RESPONSES: Final = problems(401, 403, 404, 422, 429, 503)


def add_rule_routes(app: FastAPI, store: RuleStore, backtest: Backtester) -> None:
    @app.get("/v1/rules", tags=["rules"], responses=problems(401, 403, 422, 429, 503))
    def rules(
        _: RulesReader, window_hours: WindowHours = 24.0, label_days: LabelDays = 90.0
    ) -> RuleList:
        """Every rule (the rules file's and the managed ones) with its status and figures."""
        return RuleList(rules=_guarded(lambda: _measured(store, store.rules(), window_hours,
                                                         label_days)))  # fmt: skip

    @app.post(
        "/v1/rules", tags=["rules"], status_code=201,
        responses=problems(401, 403, 409, 422, 429, 503),
    )  # fmt: skip
    def create(key: RulesAdmin, body: NewRule) -> RuleState:
        """Create a managed rule at version 1 (refused if the id is taken, here or in the
        rules file: change that one instead)."""
        definition = RuleState(
            id=body.id, version=1, status=body.status, source="database",
            description=body.description, expression=body.expression, score=body.score,
            action=body.action, severity=body.severity, tags=body.tags,
        )  # fmt: skip
        return _guarded(lambda: store.create(actor(key), definition, body.reason))

    @app.get("/v1/rules/{rule_id}", tags=["rules"], responses=_RESPONSES)
    def rule(
        _: RulesReader,
        rule_id: RuleId,
        window_hours: WindowHours = 24.0,
        label_days: LabelDays = 90.0,
    ) -> RuleWithFigures:
        """One rule as it stands, with its figures."""
        return _guarded(lambda: _measured(store, [store.rule(rule_id)], window_hours,
                                          label_days)[0])  # fmt: skip

    @app.patch(
        "/v1/rules/{rule_id}", tags=["rules"], responses=problems(401, 403, 404, 409, 422, 429, 503)
    )
    def change(key: RulesAdmin, rule_id: RuleId, body: RuleChange) -> RuleState:
        """Edit, enable, disable, put in shadow or back to draft: a new version, unless nothing
        changes. Changing a rule of the rules file makes it a managed rule that replaces it."""
        changes = body.model_dump(exclude_none=True, exclude={"reason", "expected_version"})
        state, _ = _guarded(lambda: store.change(actor(key), rule_id, changes, body.reason,
                                                 body.expected_version))  # fmt: skip
        return state

    @app.get("/v1/rules/{rule_id}/versions", tags=["rules"], responses=_RESPONSES)
    def versions(_: RulesReader, rule_id: RuleId) -> RuleVersions:
        """Every version, newest first, with who changed it, when and why."""
        return RuleVersions(versions=_guarded(lambda: store.versions(rule_id)))

    @app.post("/v1/rules/{rule_id}/backtest", tags=["rules"], responses=_RESPONSES)
    def run_backtest(_: RulesAdmin, rule_id: RuleId, body: BacktestRequest) -> RuleBacktest:
        """Replay `days` of stored history up to `until` with the rule (its current version, as if
        enabled) beside the rules in force, against the live rules alone: what it would have
        fired on, its precision and recall among labelled transactions, and the decisions it
        would have changed."""
        candidate = _guarded(lambda: store.rule(rule_id)).rule()
        return _guarded(lambda: backtest(candidate, store.live_spec(), body.days, body.until))


def _measured(
    store: RuleStore, states: list[RuleState], window_hours: float, label_days: float
) -> list[RuleWithFigures]:
    figures = store.figures(states, timedelta(hours=window_hours), timedelta(days=label_days))
    return [RuleWithFigures(s, f) for s, f in zip(states, figures, strict=True)]


_T = TypeVar("_T")
_STATUS: Final = {"invalid": 422, "not_found": 404, "conflict": 409}


def _guarded(call: Callable[[], _T]) -> _T:
    """Run a store call; its refusals become 4xx problems (see `database_call` for the rest)."""
    try:
        return database_call(call)
    except RuleChangeError as error:
        status = _STATUS[error.kind]
        fields = [] if error.field is None else [FieldError(f"body.{error.field}", str(error))]
        raise ApiError(status, f"rule_{error.kind}", str(error), fields) from None
