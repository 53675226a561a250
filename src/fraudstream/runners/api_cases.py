"""The API's analyst cases: the queue, one case, assign, comment, and close with verdicts.

Analysts and rule admins work cases (the `cases` permission). Closing writes a verdict per
transaction to `labels` (with who and when), can deny-list the card, and is audited, in one
database transaction (`adapters/cases.py`). Handlers are plain functions: FastAPI runs them on
its thread pool, away from the scoring loop.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal, TypeVar

import psycopg
from fastapi import Depends, FastAPI, Path, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from fraudstream.adapters.api_keys import ApiKey
from fraudstream.adapters.cases import (
    CaseComment,
    CaseDetail,
    CaseError,
    CaseFilter,
    CaseStatus,
    CaseStore,
    CaseSummary,
    DenyCard,
    Verdict,
)
from fraudstream.runners.api_http import ApiError, FieldError, actor, problems, require

CasesKey = Annotated[ApiKey, Depends(require("cases"))]
"""A key whose role may work cases, within its rate limit."""
CaseId = Annotated[int, Path(ge=1, le=2**63 - 1)]
_Text = Annotated[str, Field(min_length=1, max_length=5000)]


class CaseSummaryOut(BaseModel):
    id: int
    card_ref: str
    status: CaseStatus
    assignee: str | None
    transactions: int
    max_score: float
    highest_action: str
    total_amount: float
    opened_at: datetime
    updated_at: datetime
    last_event_time: datetime
    closed_at: datetime | None
    closed_by: str | None
    resolution: str | None


class CaseTransactionOut(BaseModel):
    transaction_id: str
    event_time: datetime
    amount: float
    currency: str | None
    merchant_id: str | None
    country: str | None
    score: float
    action: str
    rules_fired: list[str]
    reasons: list[str]
    verdict: Verdict | None
    labelled_by: str | None
    labelled_at: datetime | None


class CaseCommentOut(BaseModel):
    id: int
    author: str
    body: str
    created_at: datetime


class CaseDetailOut(BaseModel):
    case: CaseSummaryOut
    transactions: list[CaseTransactionOut]
    comments: list[CaseCommentOut]


class CaseQueue(BaseModel):
    cases: list[CaseSummaryOut]


class Assignment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    assignee: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        description="An analyst's name; null unassigns."
    )


class NewComment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    body: _Text


class DenyCardIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=1, max_length=1000)]
    expires_at: AwareDatetime | None = None


class Closing(BaseModel):
    """A verdict for every transaction of the case (exactly those), and optionally a comment
    and the card onto the deny list."""

    model_config = ConfigDict(extra="forbid")

    verdicts: dict[Annotated[str, Field(min_length=1, max_length=128)], Verdict] = Field(
        min_length=1
    )
    comment: _Text | None = None
    deny_card: DenyCardIn | None = None


def _summary(case: CaseSummary) -> CaseSummaryOut:
    return CaseSummaryOut.model_validate(case, from_attributes=True)


def _detail(detail: CaseDetail) -> CaseDetailOut:
    return CaseDetailOut(
        case=_summary(detail.summary),
        transactions=[
            CaseTransactionOut.model_validate(t, from_attributes=True) for t in detail.transactions
        ],
        comments=[_comment(c) for c in detail.comments],
    )


def _comment(comment: CaseComment) -> CaseCommentOut:
    return CaseCommentOut.model_validate(comment, from_attributes=True)


def add_case_routes(app: FastAPI, store: CaseStore) -> None:
    one = problems(401, 403, 404, 422, 429, 503)
    change = problems(401, 403, 404, 409, 422, 429, 503)

    @app.get("/v1/cases", tags=["cases"], responses=problems(401, 403, 422, 429, 503))
    def queue(
        _: CasesKey,
        status: Literal["open", "closed", "all"] = "open",
        assignee: Annotated[
            str | None,
            Query(max_length=128, description="An analyst's name; empty: unassigned cases."),
        ] = None,
        card_ref: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        min_score: Annotated[float | None, Query(ge=0, le=100)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> CaseQueue:
        """The queue: open cases with the highest score first, by default."""
        wanted = CaseFilter(None if status == "all" else status, assignee, card_ref, min_score,
                            limit)  # fmt: skip
        return CaseQueue(cases=[_summary(c) for c in _guarded(lambda: store.cases(wanted))])

    @app.get("/v1/cases/{case_id}", tags=["cases"], responses=one)
    def case(_: CasesKey, case_id: CaseId) -> CaseDetailOut:
        """A case with its transactions (stored decision and verdict) and its comments."""
        found = _guarded(lambda: store.case(case_id))
        if found is None:
            raise ApiError(404, "not_found", f"no case {case_id}")
        return _detail(found)

    @app.post("/v1/cases/{case_id}/assign", tags=["cases"], responses=change)
    def assign(key: CasesKey, case_id: CaseId, body: Assignment) -> CaseSummaryOut:
        """Assign an open case to an analyst, or unassign it (null)."""
        return _summary(_guarded(lambda: store.assign(actor(key), case_id, body.assignee)))

    @app.post("/v1/cases/{case_id}/comments", tags=["cases"], status_code=201, responses=one)
    def comment(key: CasesKey, case_id: CaseId, body: NewComment) -> CaseCommentOut:
        """Add a comment to a case."""
        return _comment(_guarded(lambda: store.comment(actor(key), case_id, body.body)))

    @app.post("/v1/cases/{case_id}/close", tags=["cases"], responses=change)
    def close(key: CasesKey, case_id: CaseId, body: Closing) -> CaseDetailOut:
        """Close an open case with a verdict per transaction: the verdicts become labels for
        training; a 409 names transactions that joined the case since it was read."""
        deny = body.deny_card
        deny_card = None if deny is None else DenyCard(deny.reason, deny.expires_at)
        return _detail(
            _guarded(
                lambda: store.close(actor(key), case_id, dict(body.verdicts), body.comment,
                                    deny_card)
            )
        )  # fmt: skip


_T = TypeVar("_T")
_STATUS = {"invalid": 422, "not_found": 404, "conflict": 409}


def _guarded(call: Callable[[], _T]) -> _T:
    """Run a store call; its refusals become problems, an unreachable database a 503."""
    try:
        return call()
    except CaseError as error:
        status = _STATUS[error.kind]
        fields = [FieldError(f"verdicts.{m}", "no verdict given") for m in error.missing]
        if error.field and not fields:
            fields = [FieldError(error.field, str(error))]
        raise ApiError(status, f"case_{error.kind}", str(error), fields) from None
    except psycopg.DataError as error:  # text PostgreSQL cannot hold, such as a NUL
        raise ApiError(422, "invalid_request", f"a value cannot be stored: {error}") from None
    except psycopg.OperationalError:
        raise ApiError(503, "unavailable", "the database cannot be reached now") from None
