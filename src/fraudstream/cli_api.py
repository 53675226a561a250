"""`fraudstream api`: serve the scoring API; `fraudstream api keys create | list | revoke`."""

from __future__ import annotations

import getpass
import logging
from typing import Annotated

import typer
from rich.table import Table

from fraudstream.cli_support import console, settings_or_exit
from fraudstream.core.errors import FraudstreamError

api_app = typer.Typer(help="The scoring API (HTTP) and its keys.")
keys_app = typer.Typer(help="API keys: one role and one rate limit each.", no_args_is_help=True)
api_app.add_typer(keys_app, name="keys")


@api_app.callback(invoke_without_command=True)
def api(
    context: typer.Context,
    host: Annotated[str | None, typer.Option(help="Listen address (default: api.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: api.port).")] = None,
) -> None:
    """Serve the scoring API until Ctrl-C or SIGTERM (workers record what it decides)."""
    if context.invoked_subcommand is not None:
        return
    from fraudstream.runners.api_server import serve_api  # noqa: PLC0415
    from fraudstream.stack import running_stack_settings  # noqa: PLC0415

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s api %(levelname)s %(name)s: %(message)s"
    )
    settings = running_stack_settings(settings_or_exit())
    try:
        serve_api(settings, host, port)
    except FraudstreamError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None


def _store():  # type: ignore[no-untyped-def] - imported late: the pipeline extras
    from fraudstream.adapters.api_keys import KeyStore  # noqa: PLC0415
    from fraudstream.adapters.postgres_schema import migrate  # noqa: PLC0415
    from fraudstream.cli_support import database_url  # noqa: PLC0415

    url = database_url(settings_or_exit())
    migrate(url)
    return KeyStore(url)


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="Who or what uses the key.")],
    role: Annotated[str, typer.Option(help="scorer, analyst or rule_admin.")],
    rate_limit: Annotated[
        float | None,
        typer.Option(help="Requests per second (default: api.default_rate_limit_per_s)."),
    ] = None,
) -> None:
    """Create a key and print it once: only its SHA-256 is stored."""
    rate = settings_or_exit().api.default_rate_limit_per_s if rate_limit is None else rate_limit
    try:
        key, text = _store().create(name, role, rate, _actor())
    except FraudstreamError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    console.print(f"key {key.id} ({key.role}, {key.rate_limit_per_s:g}/s) for {key.name}:")
    print(text)


@keys_app.command("list")
def list_keys() -> None:
    """Every key: id, name, role, rate limit, who created it and when, revoked or not."""
    table = Table("id", "name", "role", "rate/s", "created by", "created", "revoked")
    for key in _store().all():
        table.add_row(
            key.id, key.name, key.role, f"{key.rate_limit_per_s:g}", key.created_by,
            f"{key.created_at:%Y-%m-%d %H:%M}",
            "" if key.revoked_at is None else f"{key.revoked_at:%Y-%m-%d %H:%M}",
        )  # fmt: skip
    console.print(table)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id, as `list` shows it.")],
) -> None:
    """Revoke a key: refused from then on (within api.key_cache_s on running servers)."""
    try:
        key = _store().revoke(key_id, _actor())
    except FraudstreamError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    console.print(f"key {key.id} ({key.name}) revoked")
