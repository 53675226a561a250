"""The score route's own reading of keys, headers and body (it bypasses FastAPI's parameter
machinery, so what FastAPI did for it is checked here), in the real app over ASGI. The whole
route, with the stack behind it, is tested in `tests/integration/test_api.py`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from fraudstream.adapters.api_keys import ApiKey
from fraudstream.runners.api_app import create_app
from fraudstream.runners.api_auth import RateLimiter
from fraudstream.runners.api_scoring import Answer, ReplayConflict


def _key(key_id: str, role: str) -> ApiKey:
    return ApiKey(
        id=key_id, name=role, role=role, rate_limit_per_s=1000.0, created_by="test",
        created_at=datetime(2026, 3, 1, tzinfo=UTC), revoked_at=None,
    )  # fmt: skip


KEYS = {"scorer-key": _key("k1", "scorer"), "analyst-key": _key("k2", "analyst")}
TRANSACTION = (
    b'{"transaction_id":"t-1","timestamp":"2026-03-01T10:00:00Z","amount":12.5,"card_ref":"c"}'
)


class _Keys:
    async def key(self, presented: str) -> ApiKey | None:
        return KEYS.get(presented)


class _Service:
    """Answers with the id and the key it was given; a repeated key conflicts."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    async def score(self, transaction: Any, idempotency_key: str | None) -> Answer:
        self.calls.append((transaction.transaction_id, idempotency_key))
        if idempotency_key == "used":
            raise ReplayConflict("this Idempotency-Key was used for a different transaction")
        return Answer(b'{"ok":true}', replayed=idempotency_key == "again")


def _app() -> tuple[Any, _Service, list[tuple[str, int]]]:
    service = _Service()
    observed: list[tuple[str, int]] = []
    runtime = SimpleNamespace(
        auth=_Keys(), limiter=RateLimiter(), service=service, registry=None,
        lists=None, cases=None, rules=None, backtest_rule=None,
        observe=lambda route, status, _: observed.append((route, status)),
    )  # fmt: skip
    return create_app(runtime), service, observed  # type: ignore[arg-type]


def _post(app: Any, headers: dict[str, str], body: bytes = TRANSACTION) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.post("/v1/transactions/score", headers=headers, content=body)

    return asyncio.run(send())


def test_keys_are_read_from_either_header_and_checked_like_every_route() -> None:
    app, service, observed = _app()
    assert _post(app, {"X-API-Key": "scorer-key"}).json() == {"ok": True}
    assert _post(app, {"Authorization": "Bearer scorer-key"}).status_code == 200
    assert _post(app, {"Authorization": "bearer scorer-key"}).status_code == 200
    missing = _post(app, {"Authorization": "Basic scorer-key"})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"] == "unauthenticated"
    assert _post(app, {"X-API-Key": "nobody"}).json()["message"] == "unknown or revoked API key"
    forbidden = _post(app, {"X-API-Key": "analyst-key"})
    assert (forbidden.status_code, forbidden.json()["error"]) == (403, "forbidden")
    assert service.calls == [("t-1", None)] * 3
    assert observed == [("/v1/transactions/score", s) for s in (200, 200, 200, 401, 401, 403)]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "String should have at least 1 character"),
        ("k" * 256, "String should have at most 255 characters"),
    ],
)
def test_an_idempotency_key_out_of_bounds_is_refused_naming_the_header(
    value: str, message: str
) -> None:
    app, service, _ = _app()
    answer = _post(app, {"X-API-Key": "scorer-key", "Idempotency-Key": value})
    assert answer.status_code == 422
    assert answer.json()["fields"] == [{"field": "header.Idempotency-Key", "message": message}]
    assert service.calls == []


def test_the_key_body_and_replays_reach_the_service_and_come_back() -> None:
    app, service, _ = _app()
    key = "k" * 255
    assert _post(app, {"X-API-Key": "scorer-key", "Idempotency-Key": key}).status_code == 200
    replayed = _post(app, {"X-API-Key": "scorer-key", "Idempotency-Key": "again"})
    assert replayed.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in _post(app, {"X-API-Key": "scorer-key"}).headers
    conflict = _post(app, {"X-API-Key": "scorer-key", "Idempotency-Key": "used"})
    assert conflict.status_code == 422
    assert conflict.json()["fields"][0]["field"] == "Idempotency-Key"
    assert service.calls == [("t-1", key), ("t-1", "again"), ("t-1", None), ("t-1", "used")]

    invalid = _post(app, {"X-API-Key": "scorer-key"}, b'{"transaction_id":"t-2","amount":-1}')
    assert invalid.status_code == 422
    assert invalid.json()["error"] == "invalid_transaction"
    assert len(service.calls) == 4


def test_repeated_query_parameters_and_other_methods_are_refused() -> None:
    app, _, _ = _app()

    async def send() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            repeated = await client.post(
                "/v1/transactions/score?a=1&a=2",
                headers={"X-API-Key": "scorer-key"},
                content=TRANSACTION,
            )
            put = await client.put("/v1/transactions/score", content=TRANSACTION)
            return repeated, put

    repeated, put = asyncio.run(send())
    assert repeated.status_code == 422
    assert repeated.json()["fields"] == [{"field": "a", "message": "given more than once"}]
    assert put.status_code == 405
    assert "POST" in put.headers["allow"]


def test_the_document_describes_the_route_it_does_not_mount() -> None:
    app, _, _ = _app()
    operation = app.openapi()["paths"]["/v1/transactions/score"]["post"]
    assert {p["name"] for p in operation["parameters"]} == {"Idempotency-Key"}
    header = operation["parameters"][0]["schema"]["anyOf"][0]
    assert (header["minLength"], header["maxLength"]) == (1, 255)
    assert set(operation["responses"]) == {"200", "401", "403", "422", "429", "503"}
    assert {next(iter(s)) for s in operation["security"]} == {"APIKeyHeader", "HTTPBearer"}
    score_routes = [r for r in app.routes if getattr(r, "path", "") == "/v1/transactions/score"]
    assert [type(r).__name__ for r in score_routes] == ["_NamedRoute"]
