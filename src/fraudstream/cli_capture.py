"""`fraudstream capture run | status | remove`: change-data capture from a PostgreSQL table."""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fraudstream.cli_support import console, settings_or_exit
from fraudstream.core.errors import FraudstreamError

if TYPE_CHECKING:
    from fraudstream.adapters.cdc import SlotState
    from fraudstream.adapters.cdc_positions import Position
    from fraudstream.config import Settings

capture_app = typer.Typer(
    help="Capture the rows inserted into a PostgreSQL table into the transactions topic.",
    no_args_is_help=True,
)


@capture_app.command("run")
def run(
    snapshot: Annotated[
        bool | None,
        typer.Option(
            "--snapshot/--no-snapshot",
            help="Also capture the rows that exist before the slot (default: capture.snapshot).",
        ),
    ] = None,
) -> None:
    """Stream the table's inserts into Kafka until SIGTERM or Ctrl-C, then finish the
    transaction in hand, acknowledge what Kafka confirmed and exit 0."""
    stopping = threading.Event()  # first: a SIGTERM while the imports run is a clean stop too
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    from fraudstream.runners.capture import run_capture  # noqa: PLC0415
    from fraudstream.stack import running_stack_settings  # noqa: PLC0415

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s capture %(levelname)s %(name)s: %(message)s"
    )
    settings = running_stack_settings(settings_or_exit())
    try:
        run_capture(settings, stopping, snapshot)
    except FraudstreamError as error:
        logging.getLogger("fraudstream.capture").error("%s", error)
        raise typer.Exit(2) from None


@capture_app.command("status")
def status() -> None:
    """Every replication slot of the source server with the WAL it holds (active or not),
    and each capture's stored position and counts."""
    import psycopg  # noqa: PLC0415

    from fraudstream.adapters.cdc import slot_states  # noqa: PLC0415
    from fraudstream.adapters.cdc_positions import PositionStore  # noqa: PLC0415
    from fraudstream.runners.capture import source_of  # noqa: PLC0415
    from fraudstream.runners.serve import postgres_url  # noqa: PLC0415

    settings = _settings()
    try:
        source = source_of(settings)
        slots = slot_states(source.url)
        store = PositionStore(postgres_url(settings))
        positions = {position.slot_name: position for position in store.all()}
        store.close()
    except (FraudstreamError, psycopg.Error) as error:
        console.print(f"[red]cannot read the capture status: {str(error).splitlines()[0]}[/red]")
        raise typer.Exit(2) from None
    console.print(_slots_table(slots, positions, source.slot))
    console.print(
        "retained WAL: what the server keeps until the slot's reader confirms it; a slot nobody "
        "reads retains more and more. `fraudstream capture remove` drops this capture's slot."
    )
    for position in positions.values():
        console.print(_capture_line(position, {state.name for state in slots}))


def _slots_table(
    slots: list[SlotState], positions: dict[str, Position], configured: str
) -> Table | str:
    if not slots:
        return "no replication slots on the source server"
    table = Table("slot", "active", "retained WAL", "confirmed LSN", "stored LSN",
                  title="replication slots", caption="* this capture's slot")  # fmt: skip
    for state in slots:
        position = positions.get(state.name)
        table.add_row(
            f"{state.name} *" if state.name == configured else state.name,
            f"yes, pid {state.active_pid}" if state.active else "[yellow]no[/yellow]",
            _size(state.retained_bytes),
            _lsn(state.confirmed_flush_lsn),
            "" if position is None else _lsn(position.lsn),
        )
    return table


def _capture_line(position: Position, slots: set[str]) -> str:
    totals = position.totals
    missing = "" if position.slot_name in slots else " [red](its slot is missing)[/red]"
    return (
        f"capture {position.slot_name} of {position.source_table}{missing}: stored LSN "
        f"{_lsn(position.lsn)} at {position.updated_at:%Y-%m-%d %H:%M:%S %Z}, snapshot "
        f"{position.snapshot}; {totals.transactions:,} transactions, {totals.rows_captured:,} "
        f"rows captured, {totals.rows_rejected:,} rejected, {totals.updates:,} updates, "
        f"{totals.deletes:,} deletes, {totals.truncates:,} truncates"
    )


def _lsn(lsn: int | None) -> str:
    from fraudstream.adapters.pg_values import format_lsn  # noqa: PLC0415

    return "" if lsn is None else format_lsn(lsn)


def _size(count: int | None) -> str:
    if count is None:
        return "?"
    size = float(count)
    for unit in ("B", "kB", "MB"):
        if size < 1024:
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GB"


@capture_app.command("remove")
def remove(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop this capture's replication slot (so it holds no more WAL), its publication and
    its stored position. A later `capture run` starts afresh (with --snapshot, from the
    table's current rows)."""
    import psycopg  # noqa: PLC0415

    from fraudstream.adapters.cdc_positions import PositionStore  # noqa: PLC0415
    from fraudstream.runners.capture import source_of  # noqa: PLC0415
    from fraudstream.runners.serve import postgres_url  # noqa: PLC0415

    settings = _settings()
    source = source_of(settings)
    if not yes:
        typer.confirm(
            f"drop slot {source.slot} and publication {source.publication} of "
            f"{source.table}, and forget the capture's position?",
            abort=True,
        )
    try:
        had_slot, had_publication = source.drop()
        store = PositionStore(postgres_url(settings))
        had_position = store.delete(source.slot)
        store.close()
    except (FraudstreamError, psycopg.Error) as error:
        console.print(f"[red]cannot remove the capture: {str(error).splitlines()[0]}[/red]")
        raise typer.Exit(2) from None
    console.print(
        f"slot {source.slot}: {'dropped' if had_slot else 'was not there'}; "
        f"publication {source.publication}: {'dropped' if had_publication else 'was not there'}; "
        f"stored position: {'forgotten' if had_position else 'none'}"
    )


def _settings() -> Settings:
    from fraudstream.stack import running_stack_settings  # noqa: PLC0415

    return running_stack_settings(settings_or_exit())
