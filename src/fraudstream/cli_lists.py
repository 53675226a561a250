"""`fraudstream lists add | show | remove`: the allow and deny lists rules read."""

from __future__ import annotations

import getpass
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.table import Table

from fraudstream.cli_support import console, database_url, settings_or_exit
from fraudstream.core.errors import FraudstreamError

lists_app = typer.Typer(
    help="Allow and deny lists of cards, customers, merchants, devices and IPs.",
    no_args_is_help=True,
)
_DURATION = re.compile(r"^(\d+)([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def _store():  # type: ignore[no-untyped-def] - imported late: the pipeline extras
    from fraudstream.adapters.lists import ListStore  # noqa: PLC0415
    from fraudstream.adapters.postgres_schema import migrate  # noqa: PLC0415

    url = database_url(settings_or_exit())
    migrate(url)
    return ListStore(url)


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _expiry(expires: str | None, lasting: str | None) -> datetime | None:
    if expires is not None and lasting is not None:
        raise FraudstreamError("--expires and --for: give one or neither")
    if lasting is not None:
        match = _DURATION.match(lasting.strip())
        if match is None:
            raise FraudstreamError(f"--for {lasting!r}: expected a number and m, h or d (90m, 7d)")
        amount, unit = match.groups()
        return datetime.now(UTC) + timedelta(**{_UNITS[unit]: int(amount)})
    if expires is None:
        return None
    try:
        moment = datetime.fromisoformat(expires)
    except ValueError:
        raise FraudstreamError(f"--expires {expires!r}: not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise FraudstreamError(f"--expires {expires!r}: add a timezone (Z or +01:00)")
    return moment


def _fail(error: FraudstreamError) -> typer.Exit:
    console.print(f"[red]{error}[/red]")
    return typer.Exit(2)


@lists_app.command("add")
def add(
    list_: Annotated[str, typer.Option("--list", help="deny or allow.")],
    entity: Annotated[str, typer.Option(help="card, customer, merchant, device or ip.")],
    value: Annotated[str, typer.Option(help="Card reference, id, or IP address/network.")],
    reason: Annotated[str, typer.Option(help="Why it is listed (kept, and audited).")],
    expires: Annotated[
        str | None, typer.Option(help="When the entry lapses (ISO 8601 with a timezone).")
    ] = None,
    lasting: Annotated[
        str | None, typer.Option("--for", help="Or how long it lasts: 90m, 12h, 30d.")
    ] = None,
) -> None:
    """Put a value on a list (or update its reason and expiry there); workers and the API
    apply it within lists.poll_interval_s."""
    try:
        entry, created = _store().add(
            _actor(), list_, entity, value, reason, _expiry(expires, lasting)
        )
    except FraudstreamError as error:
        raise _fail(error) from None
    until = (
        "no expiry" if entry.expires_at is None else f"until {entry.expires_at:%Y-%m-%d %H:%M %Z}"
    )
    verb = "added to" if created else "updated on"
    console.print(
        f"entry {entry.id}: {entry.entity} {entry.value} {verb} the {entry.list} list ({until})"
    )


@lists_app.command("show")
def show(
    list_: Annotated[str | None, typer.Option("--list", help="deny or allow.")] = None,
    entity: Annotated[str | None, typer.Option(help="Only this entity.")] = None,
    value: Annotated[str | None, typer.Option(help="Only this value (needs --entity).")] = None,
    removed: Annotated[bool, typer.Option(help="Include removed entries.")] = False,
    limit: Annotated[int, typer.Option(min=1)] = 200,
) -> None:
    """Entries, newest first."""
    try:
        entries = _store().entries(list_, entity, value, include_removed=removed, limit=limit)
    except FraudstreamError as error:
        raise _fail(error) from None
    table = Table("id", "list", "entity", "value", "reason", "expires", "by", "added", "removed")
    for e in entries:
        table.add_row(
            str(e.id), e.list, e.entity, e.value, e.reason,
            "" if e.expires_at is None else f"{e.expires_at:%Y-%m-%d %H:%M}",
            e.created_by, f"{e.created_at:%Y-%m-%d %H:%M}",
            "" if e.removed_at is None else f"{e.removed_at:%Y-%m-%d %H:%M} by {e.removed_by}",
        )  # fmt: skip
    console.print(table)


@lists_app.command("remove")
def remove(
    entry_id: Annotated[int, typer.Argument(help="The entry's id, as `show` lists it.")],
    reason: Annotated[str, typer.Option(help="Why it comes off the list.")],
) -> None:
    """Take an entry off its list (the row is kept, with who removed it and why)."""
    try:
        entry = _store().remove(_actor(), entry_id, reason)
    except FraudstreamError as error:
        raise _fail(error) from None
    console.print(
        f"entry {entry.id}: {entry.entity} {entry.value} removed from the {entry.list} list"
    )
