"""The API's allow and deny lists: `GET|POST /v1/lists`, `GET /v1/lists/{id}` and
`POST /v1/lists/{id}/remove`.

Analysts and rule admins manage lists (the `lists` permission); every change is audited with
the key that made it, and running workers and API processes apply it within
`lists.poll_interval_s`. Handlers are plain functions: FastAPI runs them on its thread pool,
so their database calls never hold up scoring on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, FastAPI, Path, Query
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from fraudstream.adapters.api_keys import ApiKey
from fraudstream.adapters.lists import ListError, ListStore, StoredEntry
from fraudstream.core.lists import Entity, ListKind
from fraudstream.runners.api_http import (
    ApiError,
    FieldError,
    actor,
    database_call,
    problems,
    require,
)


class NewListEntry(BaseModel):
    """A value to put on a list. A value already on that list gets the new reason and expiry."""

    model_config = ConfigDict(extra="forbid")

    list: ListKind
    entity: Entity
    value: str = Field(
        min_length=1,
        max_length=128,
        description="Cards by reference, never a card number; IPs as an address or a network.",
    )
    reason: str = Field(min_length=1, max_length=1000)
    expires_at: AwareDatetime | None = Field(default=None, description="Unset: until removed.")


class Removal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=1000)


class ListEntries(BaseModel):
    entries: list[StoredEntry]


EntryId = Annotated[int, Path(ge=1, le=2**63 - 1)]
ListsKey = Annotated[ApiKey, Depends(require("lists"))]
"""A key whose role may manage lists, within its rate limit."""


def add_list_routes(app: FastAPI, store: ListStore) -> None:
    @app.get("/v1/lists", tags=["lists"], responses=problems(401, 403, 422, 429, 503))
    def entries(
        _: ListsKey,
        list_: Annotated[ListKind | None, Query(alias="list")] = None,
        entity: Entity | None = None,
        value: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        include_removed: bool = False,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> ListEntries:
        """Entries, newest first; `value` is matched in its stored form (a canonical IP)."""
        found = _guarded(
            lambda: store.entries(
                list_, entity, value, include_removed=include_removed, limit=limit
            )
        )
        return ListEntries(entries=found)

    @app.post(
        "/v1/lists",
        tags=["lists"],
        status_code=201,
        responses={200: {"model": StoredEntry, "description": "The value was already on the"
                         " list: its reason and expiry are updated."},
                   **problems(401, 403, 422, 429, 503)},
    )  # fmt: skip
    def add(key: ListsKey, body: NewListEntry, response: Response) -> StoredEntry:
        """Put a value on a list (201), or update the value's entry there (200)."""
        entry, created = _guarded(
            lambda: store.add(actor(key), body.list, body.entity, body.value, body.reason,
                              body.expires_at)
        )  # fmt: skip
        response.status_code = 201 if created else 200
        return entry

    one = problems(401, 403, 404, 422, 429, 503)

    @app.get("/v1/lists/{entry_id}", tags=["lists"], responses=one)
    def entry(_: ListsKey, entry_id: EntryId) -> StoredEntry:
        """One entry, active or removed."""
        found = _guarded(lambda: store.entry(entry_id))
        if found is None:
            raise ApiError(404, "not_found", f"no list entry {entry_id}")
        return found

    @app.post("/v1/lists/{entry_id}/remove", tags=["lists"], responses=one)
    def remove(key: ListsKey, entry_id: EntryId, body: Removal) -> StoredEntry:
        """Take an entry off its list. Entries are never deleted: the row stays readable, with
        who removed it, when and why."""
        return _guarded(lambda: store.remove(actor(key), entry_id, body.reason))


_T = TypeVar("_T")


def _guarded(change: Callable[[], _T]) -> _T:
    """Run a store call; its refusals become 4xx problems (see `database_call` for the rest)."""
    try:
        return database_call(change)
    except ListError as error:
        if error.field is None:
            raise ApiError(404, "not_found", str(error)) from None
        raise ApiError(422, "invalid_list_entry", str(error),
                       [FieldError(f"body.{error.field}", str(error))]) from None  # fmt: skip
