"""The scoring API's HTTP surface (FastAPI): routes, keys and roles, errors, metrics, OpenAPI.

Bodies are decoded by the core's own transaction decoder (msgspec), the one the stream uses, so
the API accepts exactly what the stream accepts, and the OpenAPI document is generated from the
same structs. Every client mistake is a 4xx with a `Problem` body naming the fields; only health
and metrics are open without a key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Final, Protocol

import msgspec
from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from fraudstream import __version__
from fraudstream.adapters.api_keys import ApiKey
from fraudstream.adapters.cases import CaseStore
from fraudstream.adapters.lists import ListStore
from fraudstream.adapters.rules_store import RuleStore
from fraudstream.core.decision_record import DecisionRecord
from fraudstream.core.events import Transaction
from fraudstream.core.rules import Rule, RulesetSpec
from fraudstream.ml.rule_backtest import RuleBacktest
from fraudstream.ports import SinkUnavailable
from fraudstream.runners.api_auth import Authenticator, RateLimiter
from fraudstream.runners.api_cases import add_case_routes
from fraudstream.runners.api_http import (
    ApiError,
    FieldError,
    Problem,
    content,
    json_response,
    problems,
    require,
)
from fraudstream.runners.api_lists import add_list_routes
from fraudstream.runners.api_rules import add_rule_routes
from fraudstream.runners.api_score_route import documentation as score_documentation
from fraudstream.runners.api_score_route import score_route
from fraudstream.runners.api_scoring import ScoringService

log = logging.getLogger("fraudstream.api")


class KeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    role: str
    rate_limit_per_s: float


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    folded: int | None = None


class Runtime(Protocol):
    """What the routes need; `api_server.ApiRuntime` builds it from settings."""

    service: ScoringService
    auth: Authenticator
    limiter: RateLimiter
    registry: CollectorRegistry
    lists: ListStore
    cases: CaseStore
    rules: RuleStore

    def backtest_rule(
        self, candidate: Rule, live: RulesetSpec, days: float, until: datetime | None
    ) -> RuleBacktest: ...

    def ready(self) -> bool: ...
    def folded(self) -> int: ...
    async def stored(self, transaction_id: str) -> DecisionRecord | None: ...
    def observe(self, route: str, status: int, seconds: float) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


_SCHEMAS: Final = msgspec.json.schema_components(
    [Transaction, DecisionRecord, Problem, KeyInfo, Health],
    ref_template="#/components/schemas/{name}",
)[1]


def create_app(runtime: Runtime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="fraudstream",
        version=__version__,
        summary="Real-time payment fraud decisions, and the analyst's loop.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    _add_error_handlers(app)
    _add_timing(app, runtime)
    _add_health(app, runtime)
    _add_scoring(app, runtime)
    add_list_routes(app, runtime.lists)
    add_case_routes(app, runtime.cases)
    add_rule_routes(app, runtime.rules, runtime.backtest_rule)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _add_health(app: FastAPI, runtime: Runtime) -> None:
    @app.get("/health/live", tags=["health"], responses={200: content("Health")})
    async def live() -> Response:
        """The process answers. Open without a key; also the benchmark's ceiling."""
        return json_response(Health(status="ok"))

    @app.get(
        "/health/ready",
        tags=["health"],
        responses={200: content("Health"), 503: content("Health")},
    )
    async def ready() -> Response:
        """Ready once the stream's feature state is folded up to the end of the log."""
        if runtime.ready():
            return json_response(Health(status="ready", folded=runtime.folded()))
        return json_response(Health(status="catching_up", folded=runtime.folded()), 503)

    @app.get(
        "/metrics",
        tags=["health"],
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        """Prometheus metrics. Open without a key."""
        return Response(generate_latest(runtime.registry), media_type=CONTENT_TYPE_LATEST)


def _add_scoring(app: FastAPI, runtime: Runtime) -> None:
    # First in the list: the router tries routes in order, and this is the hot path.
    app.router.routes.insert(0, score_route(runtime, runtime.service))

    @app.get(
        "/v1/transactions/{transaction_id}",
        tags=["scoring"],
        responses={200: content("DecisionRecord"), **problems(401, 403, 404, 422, 429, 503)},
    )
    async def stored(
        _: Annotated[ApiKey, Depends(require("read"))],
        transaction_id: Annotated[str, Path(min_length=1, max_length=128)],
    ) -> Response:
        """The decision stored for a transaction, whichever path it took."""
        try:
            record = await runtime.stored(transaction_id)
        except SinkUnavailable as error:
            raise ApiError(503, "unavailable", str(error)) from None
        if record is None:
            raise ApiError(404, "not_found", f"no stored decision for {transaction_id!r}")
        return json_response(record)

    @app.get(
        "/v1/keys/me",
        tags=["keys"],
        responses={200: content("KeyInfo"), **problems(401, 429, 503)},
    )
    async def me(key: Annotated[ApiKey, Depends(require(None))]) -> Response:
        """The key this request was made with: its id, name, role and rate limit."""
        return json_response(KeyInfo(id=key.id, name=key.name, role=key.role,
                             rate_limit_per_s=key.rate_limit_per_s))  # fmt: skip


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> Response:
        return json_response(error.problem, error.status, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        """Starlette's own refusals as `Problem` bodies: a body that is not JSON is a 422 like
        any invalid body, and a 405 names every method of the path in `Allow` (Starlette
        names only those of the first route that matched the path)."""
        if error.status_code == 400:
            fields = [FieldError("body", str(error.detail))]
            return json_response(Problem(error="invalid_request", message=str(error.detail),
                                         fields=fields), 422)  # fmt: skip
        if error.status_code == 405:
            allowed = _methods_of(request)
            problem = Problem(error="method_not_allowed", message=f"allowed: {allowed}")
            return json_response(problem, 405, {"Allow": allowed})
        problem = Problem(error=f"http_{error.status_code}", message=str(error.detail))
        return json_response(problem, error.status_code, getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> Response:
        fields = [
            FieldError(".".join(str(part) for part in e.get("loc", ())), str(e.get("msg", "")))
            for e in error.errors()
        ]
        message = "; ".join(f"{f.field}: {f.message}" for f in fields) or "invalid request"
        return json_response(Problem(error="invalid_request", message=message, fields=fields), 422)


def _methods_of(request: Request) -> str:
    """Every method of the path the request matched first, as the OpenAPI document lists it
    (a literal path such as `/v1/transactions/score` also fits the template after it)."""
    routes = request.app.router.routes
    first = next((r for r in routes if r.matches(request.scope)[0] != Match.NONE), None)
    template = getattr(first, "path_format", None)
    methods: set[str] = set()
    for route in routes:
        if template is not None and getattr(route, "path_format", None) == template:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def _add_timing(app: FastAPI, runtime: Runtime) -> None:
    app.add_middleware(_Timing, runtime=runtime, routes=app.router.routes)  # type: ignore[arg-type]


class _Timing:
    """Every request's route, status and time, to `Runtime.observe` (a plain ASGI middleware:
    Starlette's `BaseHTTPMiddleware` costs more than the trivial route it would time)."""

    def __init__(
        self, app: Callable[..., Awaitable[None]], runtime: Runtime, routes: list[BaseRoute]
    ) -> None:
        self._app = app
        self._runtime = runtime
        self._routes = routes

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, sending)
        finally:
            self._runtime.observe(self._label(scope), status, time.perf_counter() - started)

    def _label(self, scope: dict[str, Any]) -> str:
        """The matched route's path template. FastAPI's routes (and the score route) put
        themselves in the scope; Starlette's plain ones (`/openapi.json`, `/docs`) leave only
        their endpoint, found here by a walk that only such rare requests take."""
        route = scope.get("route")
        if route is not None:
            return str(route.path)
        endpoint = scope.get("endpoint")
        if endpoint is not None:
            for candidate in self._routes:
                if getattr(candidate, "endpoint", None) is endpoint:
                    return str(getattr(candidate, "path", "unmatched"))
        return "unmatched"


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        routes = [*app.routes, *score_documentation().routes]
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(_SCHEMAS)
        app.openapi_schema = schema
    return app.openapi_schema
