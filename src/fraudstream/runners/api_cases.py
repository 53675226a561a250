"""The API's analyst cases: the queue, one case, assign, comment, and close with verdicts.

Analysts and rule admins work cases (the `cases` permission). Closing writes a verdict per
transaction to `labels` (with who and when), can deny-list the card, and is audited, in one
database transaction (`adapters/cases.py`). Handlers are plain functions: FastAPI runs them on
its thread pool, away from the scoring loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, TypeVar

from fastapi import Depends, FastAPI, Path, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from fraudstream.adapters.api_keys import ApiKey
from fraudstream.adapters.cases import (
    CaseComment,
    CaseDetail,
    CaseError,
    CaseFilter,
    CaseStore,
    CaseSummary,
    CaseTransaction,
    DenyCard,
    Verdict,
)
from fraudstream.runners.api_http import (
    ApiError,
    FieldError,
    actor,
    database_call,
    problems,
    require,
)

CasesKey = Annotated[ApiKey, Depends(require("cases"))]
"""A key whose role may work cases, within its rate limit."""
CaseId = Annotated[int, Path(ge=1, le=2**63 - 1)]
_Text = Annotated[str, Field(min_length=1, max_length=5000)]


class CaseDetailOut(BaseModel):
    """A case as the API shows it: the summary under `case`."""

    case: CaseSummary
    transactions: list[CaseTransaction]
    comments: list[CaseComment]


class CaseQueue(BaseModel):
    cases: list[CaseSummary]


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


def _detail(detail: CaseDetail) -> CaseDetailOut:
    return CaseDetailOut(
        case=detail.summary, transactions=detail.transactions, comments=detail.comments
    )


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
        return CaseQueue(cases=_guarded(lambda: store.cases(wanted)))

    @app.get("/v1/cases/{case_id}", tags=["cases"], responses=one)
    def case(_: CasesKey, case_id: CaseId) -> CaseDetailOut:
        """A case with its transactions (stored decision and verdict) and its comments."""
        found = _guarded(lambda: store.case(case_id))
        if found is None:
            raise ApiError(404, "not_found", f"no case {case_id}")
        return _detail(found)

    @app.post("/v1/cases/{case_id}/assign", tags=["cases"], responses=change)
    def assign(key: CasesKey, case_id: CaseId, body: Assignment) -> CaseSummary:
        """Assign an open case to an analyst, or unassign it (null)."""
        return _guarded(lambda: store.assign(actor(key), case_id, body.assignee))

    @app.post("/v1/cases/{case_id}/comments", tags=["cases"], status_code=201, responses=one)
    def comment(key: CasesKey, case_id: CaseId, body: NewComment) -> CaseComment:
        """Add a comment to a case."""
        return _guarded(lambda: store.comment(actor(key), case_id, body.body))

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
    """Run a store call; its refusals become problems (see `database_call` for the rest)."""
    try:
        return database_call(call)
    except CaseError as error:
        status = _STATUS[error.kind]
        fields = [FieldError(f"verdicts.{m}", "no verdict given") for m in error.missing]
        if error.field and not fields:
            fields = [FieldError(error.field, str(error))]
        raise ApiError(status, f"case_{error.kind}", str(error), fields) from None
