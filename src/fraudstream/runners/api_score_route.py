"""`POST /v1/transactions/score`, the API's hot path, as a plain ASGI endpoint.

Every other route is a FastAPI route: FastAPI declares, validates and documents its parameters.
That machinery (dependency resolution, parameter validation, the request/response wrapper)
costs more per request than scoring does: on the benchmark's machine the score route with no
scoring at all answered about 5 k requests/s as a FastAPI route and 15 k as this endpoint,
the same middleware around both. So this one route reads its two headers and its body itself,
checks the key with the same `authorize` as every other route, and answers through the same
middleware (error handlers, timing, metrics) as the rest of the app.

Its OpenAPI description is still FastAPI's: `documentation()` declares the route with its key,
header, body and answers, and the app's document is generated from that declaration, which is
never mounted; the schemathesis test checks the endpoint against that document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Header
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from fraudstream.adapters.api_keys import ApiKey
from fraudstream.core.errors import InvalidTransaction
from fraudstream.core.events import decode_transaction
from fraudstream.ports import SinkUnavailable
from fraudstream.runners.api_http import (
    JSON,
    ApiError,
    FieldError,
    Guard,
    authorize,
    content,
    presented_key,
    problems,
    refuse_repeated,
    require,
)
from fraudstream.runners.api_scoring import NotReady, ReplayConflict, ScoringService

PATH: Final = "/v1/transactions/score"
IDEMPOTENCY_KEY: Final = "Idempotency-Key"
_MAX_IDEMPOTENCY_KEY: Final = 255
_REPLAYED: Final = {"Idempotent-Replayed": "true"}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ScoreEndpoint:
    """Key, `Idempotency-Key`, body, score, answer; refusals are raised as `ApiError`, which
    the app's error handler turns into `Problem` bodies like every other route's."""

    def __init__(self, guard: Guard, service: ScoringService) -> None:
        self._guard = guard
        self._service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("query_string"):  # parsing an absent query costs a few µs a request
            refuse_repeated(Request(scope).query_params)
        headers = Headers(scope=scope)
        await authorize(self._guard, presented_key(headers), "score")
        idempotency_key = _idempotency_key(headers)
        body = await _body(receive)
        if body is None:
            return  # the client went away: nobody to answer, nothing scored
        try:
            transaction = decode_transaction(body)
        except InvalidTransaction as error:
            raise ApiError(
                422, "invalid_transaction", f"{error.field}: {error.reason}",
                [FieldError(error.field, error.reason)],
            ) from None  # fmt: skip
        try:
            answer = await self._service.score(transaction, idempotency_key)
        except ReplayConflict as error:
            field = IDEMPOTENCY_KEY if idempotency_key else "transaction_id"
            raise ApiError(
                422, "replay_conflict", str(error), [FieldError(field, str(error))]
            ) from None
        except NotReady as error:
            raise ApiError(503, "not_ready", str(error), headers={"Retry-After": "1"}) from None
        except SinkUnavailable as error:
            raise ApiError(503, "unavailable", str(error), headers={"Retry-After": "1"}) from None
        response = Response(answer.body, 200, _REPLAYED if answer.replayed else None, JSON)
        await response(scope, receive, send)


class _NamedRoute(Route):
    """A Starlette route that puts itself in the scope, as FastAPI's routes do, so the
    timing middleware labels its requests by path."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match != Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def score_route(guard: Guard, service: ScoringService) -> Route:
    return _NamedRoute(PATH, ScoreEndpoint(guard, service), methods=["POST"], name="score")


async def _body(receive: Receive) -> bytes | None:
    """The request's body, None when the client disconnected first. (Starlette's
    `Request.body` does the same through an async generator, at twice the cost.)"""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _idempotency_key(headers: Headers) -> str | None:
    """The header as the documentation declares it: 1 to 255 characters when present."""
    value = headers.get(IDEMPOTENCY_KEY)
    if value is None or 1 <= len(value) <= _MAX_IDEMPOTENCY_KEY:
        return value
    message = (
        "String should have at least 1 character"
        if not value
        else f"String should have at most {_MAX_IDEMPOTENCY_KEY} characters"
    )
    field = f"header.{IDEMPOTENCY_KEY}"
    raise ApiError(422, "invalid_request", f"{field}: {message}", [FieldError(field, message)])


def documentation() -> APIRouter:
    """The route as FastAPI describes it in the OpenAPI document; never mounted."""
    router = APIRouter()

    @router.post(
        PATH,
        tags=["scoring"],
        openapi_extra={"requestBody": {"required": True, **content("Transaction")}},
        responses={
            200: {
                "description": "The decision. A replay gets the first answer, with the"
                " header Idempotent-Replayed: true.",
                **content("DecisionRecord"),
            },
            **problems(401, 403, 422, 429, 503),
        },
    )
    async def score(
        _: Annotated[ApiKey, Depends(require("score"))],
        idempotency_key: Annotated[
            str | None,
            Header(
                alias=IDEMPOTENCY_KEY,
                min_length=1,
                max_length=_MAX_IDEMPOTENCY_KEY,
                description="Makes a retry return the first answer; else the transaction id does.",
            ),
        ] = None,
    ) -> Response:
        """Score one transaction against the stream's state, record it, return the decision."""
        raise NotImplementedError("served by ScoreEndpoint")

    return router
