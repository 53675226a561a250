"""What every route of the API shares: the `Problem` error body, `ApiError`, JSON responses,
OpenAPI fragments, and `require`, the dependency that checks a key, its role and its rate limit."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, Protocol, TypeVar

import msgspec
import psycopg
from fastapi import Request, Security
from fastapi.responses import Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers, QueryParams

from fraudstream.adapters.api_keys import ApiKey
from fraudstream.runners.api_auth import Authenticator, RateLimiter, allows


class FieldError(msgspec.Struct, frozen=True):
    field: str
    message: str


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """What every error answers: a code, a sentence, and the fields at fault."""

    error: str
    message: str
    fields: list[FieldError] = msgspec.field(default_factory=list)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        fields: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.problem = Problem(error=error, message=message, fields=fields or [])
        self.headers = headers


class Guard(Protocol):
    """What `require` reads from `app.state.runtime`."""

    auth: Authenticator
    limiter: RateLimiter


_T = TypeVar("_T")
JSON: Final = "application/json"
_ENCODER: Final = msgspec.json.Encoder()


def json_response(
    value: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(_ENCODER.encode(value), status, headers, media_type=JSON)


def content(name: str) -> dict[str, Any]:
    return {"content": {JSON: {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "No API key, or an unknown or revoked one.",
        403: "The key's role does not allow this.",
        404: "Not found.",
        409: "The change conflicts with the current state; the message says how.",
        422: "The request is invalid; `fields` names what is wrong.",
        429: "The key's rate limit is reached; see Retry-After.",
        503: "Not ready, or a server it needs is unreachable; retry later.",
    }
    return {s: {"description": described[s], **content("Problem")} for s in statuses}


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_bearer = HTTPBearer(auto_error=False)


def require(permission: str | None) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency: the caller's key, when it exists, may `permission` (None: whatever its
    role) and is within its rate limit."""

    async def dependency(
        request: Request,
        header_key: Annotated[str | None, Security(_api_key_header)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> ApiKey:
        refuse_repeated(request.query_params)
        presented = header_key or (bearer.credentials if bearer else None)
        return await authorize(request.app.state.runtime, presented, permission)

    return dependency


def presented_key(headers: Headers) -> str | None:
    """The key a request presents, as `require`'s two schemes read it: `X-API-Key`, else
    `Authorization: Bearer <key>`."""
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return credentials if scheme.lower() == "bearer" and credentials else None


def refuse_repeated(query: QueryParams) -> None:
    """A query parameter given twice is refused, not silently read once."""
    if len(query) != len(query.multi_items()):
        repeated = sorted({k for k, _ in query.multi_items() if len(query.getlist(k)) > 1})
        raise ApiError(
            422, "invalid_request", f"query parameters given more than once: {repeated}",
            [FieldError(name, "given more than once") for name in repeated],
        )  # fmt: skip


async def authorize(guard: Guard, presented: str | None, permission: str | None) -> ApiKey:
    """The stored key for `presented`, when it exists, may `permission` (None: whatever its
    role) and is within its rate limit; else the `ApiError` saying which of these failed."""
    if not presented:
        raise ApiError(
            401, "unauthenticated", "an API key is required (X-API-Key or Bearer)",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    try:
        key = await guard.auth.key(presented)
    except psycopg.Error:
        raise ApiError(503, "unavailable", "cannot check API keys now") from None
    if key is None:
        raise ApiError(
            401, "unauthenticated", "unknown or revoked API key",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    if permission is not None and not allows(key, permission):
        raise ApiError(403, "forbidden", f"role {key.role} may not {permission}")
    wait_s = guard.limiter.wait_s(key.id, key.rate_limit_per_s)
    if wait_s:
        raise ApiError(
            429, "rate_limited", f"over {key.rate_limit_per_s:g} requests/s for this key",
            headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
        )  # fmt: skip
    return key


def database_call(call: Callable[[], _T]) -> _T:
    """Run a blocking store call for a route: text PostgreSQL cannot hold (such as a NUL) is a
    422, an unreachable database a 503. The store's own refusals pass through to the route."""
    try:
        return call()
    except psycopg.DataError as error:
        raise ApiError(422, "invalid_request", f"a value cannot be stored: {error}") from None
    except psycopg.OperationalError:
        raise ApiError(503, "unavailable", "the database cannot be reached now") from None


def actor(key: ApiKey) -> str:
    """How a key appears in the audit log and on the rows it changes."""
    return f"key {key.id} ({key.name})"
