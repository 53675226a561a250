"""`fraudstream alerts dispatch | status`: deliver the alert outbox, and see how it stands."""

from __future__ import annotations

import logging
import signal
import threading

import psycopg
import typer
from rich.table import Table

from fraudstream.cli_support import console, settings_or_exit
from fraudstream.core.errors import FraudstreamError

alerts_app = typer.Typer(help="Deliver alerts and inspect the outbox.", no_args_is_help=True)

_STATUS = """
SELECT channel, route,
       count(*) FILTER (WHERE status = 'pending'),
       count(*) FILTER (WHERE status = 'delivered'),
       count(*) FILTER (WHERE status = 'suppressed'),
       coalesce(sum(attempts) FILTER (WHERE status = 'pending'), 0),
       max(last_error) FILTER (WHERE status = 'pending')
FROM alerts GROUP BY channel, route ORDER BY channel, route
"""


@alerts_app.command("dispatch")
def dispatch() -> None:
    """Deliver pending alerts to their channels until SIGTERM or Ctrl-C."""
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    from fraudstream.runners.alerts import AlertDispatcher  # noqa: PLC0415
    from fraudstream.stack import running_stack_settings  # noqa: PLC0415

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s dispatcher %(levelname)s %(name)s: %(message)s"
    )
    settings = running_stack_settings(settings_or_exit())
    try:
        dispatcher = AlertDispatcher(settings)
    except FraudstreamError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    totals = dispatcher.run(stopping)
    logging.getLogger("fraudstream.alerts").info("stopped: %s", totals)


@alerts_app.command("status")
def status() -> None:
    """Alerts per channel and route: pending, delivered, suppressed as duplicates."""
    from fraudstream.runners.serve import postgres_url  # noqa: PLC0415
    from fraudstream.stack import running_stack_settings  # noqa: PLC0415

    settings = running_stack_settings(settings_or_exit())
    try:
        with psycopg.connect(postgres_url(settings), connect_timeout=5) as connection:
            rows = connection.execute(_STATUS).fetchall()
    except (FraudstreamError, psycopg.Error) as error:
        console.print(f"[red]cannot read the alerts: {str(error).splitlines()[0]}[/red]")
        raise typer.Exit(2) from None
    table = Table("channel", "route", "pending", "delivered", "suppressed", "tries", "last error")
    for channel, route, pending, delivered, suppressed, tries, error in rows:
        table.add_row(
            channel, route, f"{pending:,}", f"{delivered:,}", f"{suppressed:,}", f"{tries:,}",
            (error or "")[:60],
        )  # fmt: skip
    console.print(table if rows else "no alerts yet")
