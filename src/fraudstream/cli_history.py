"""Commands for the Delta Lake history of decisions: show, compact, vacuum.

The table is `--path` when given, else `history.delta_path`, else the one `fraudstream run`
writes (`stack.data_dir/history/decisions`); `history.storage_options` reach the object store.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.table import Table

from fraudstream.cli_support import console, settings_or_exit

history_app = typer.Typer(
    help="Inspect, compact and vacuum the Delta Lake history of decisions.", no_args_is_help=True
)

PathOption = Annotated[
    str | None,
    typer.Option(
        "--path",
        help="Table path or URI (default: history.delta_path, else the one `run` writes).",
    ),
]


def _table(path: str | None) -> tuple[str, dict[str, str]]:
    from fraudstream.adapters.delta import DEFAULT_TABLE_DIR  # noqa: PLC0415 - deltalake

    settings = settings_or_exit()
    history = settings.history
    uri = path or history.delta_path or str(settings.stack.data_dir / DEFAULT_TABLE_DIR)
    return uri, history.storage_options


@contextmanager
def _table_errors(uri: str) -> Iterator[None]:
    """A missing table or a storage error: one line and exit code 2, no traceback."""
    from deltalake.exceptions import DeltaError, TableNotFoundError  # noqa: PLC0415

    from fraudstream.adapters.delta import safe_uri  # noqa: PLC0415

    try:
        yield
    except TableNotFoundError:
        console.print(f"[red]no Delta table at {safe_uri(uri)}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None
    except (DeltaError, OSError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        console.print(f"[red]{safe_uri(uri)}:[/red] {reason}", soft_wrap=True)
        raise typer.Exit(2) from None


def _mb(size: int) -> str:
    return f"{size / 1e6:,.2f} MB"


@history_app.command("show")
def show(path: PathOption = None) -> None:
    """The table's version, files, rows, size and dates."""
    from fraudstream.adapters.delta import safe_uri  # noqa: PLC0415
    from fraudstream.adapters.delta_maintenance import describe  # noqa: PLC0415

    uri, options = _table(path)
    with _table_errors(uri):
        summary = describe(uri, options)
    table = Table(title=f"decision history {safe_uri(uri)}")
    for column in ("version", "files", "rows", "size", "dates"):
        table.add_column(column, justify="right")
    table.add_row(
        str(summary.version),
        f"{summary.files:,}",
        f"{summary.rows:,}",
        _mb(summary.bytes),
        f"{summary.dates:,}",
    )
    console.print(table)


@history_app.command("compact")
def compact_command(path: PathOption = None) -> None:
    """Merge each date's small files into large ones and checkpoint the log.

    Safe while workers write; the replaced files stay on disk until `vacuum`.
    """
    from fraudstream.adapters.delta import safe_uri  # noqa: PLC0415
    from fraudstream.adapters.delta_maintenance import compact  # noqa: PLC0415

    uri, options = _table(path)
    with _table_errors(uri), console.status("compacting…"):
        done = compact(uri, options)
    console.print(f"compacted {safe_uri(uri)}, now at version {done.version}", soft_wrap=True)
    table = Table()
    for column in ("", "files", "size"):
        table.add_column(column, justify="right")
    table.add_row("removed", f"{done.files_removed:,}", _mb(done.bytes_removed))
    table.add_row("added", f"{done.files_added:,}", _mb(done.bytes_added))
    console.print(table)


@history_app.command("vacuum")
def vacuum_command(
    retention_hours: Annotated[
        int, typer.Option(min=0, help="Keep the files any version this young still uses.")
    ],
    path: PathOption = None,
    dry_run: Annotated[bool, typer.Option(help="Only list what would be deleted.")] = False,
    enforce_retention: Annotated[
        bool,
        typer.Option(
            help="Refuse a retention below the table's (7 days by default). Turn off only "
            "while no worker writes: a file being written is not in the log yet."
        ),
    ] = True,
) -> None:
    """Delete the files compaction replaced, once past the retention.

    Files that a version younger than the retention still uses are kept.
    """
    from fraudstream.adapters.delta import safe_uri  # noqa: PLC0415
    from fraudstream.adapters.delta_maintenance import vacuum  # noqa: PLC0415

    uri, options = _table(path)
    with _table_errors(uri):
        files = vacuum(
            uri,
            retention_hours,
            enforce_retention=enforce_retention,
            dry_run=dry_run,
            storage_options=options,
        )
    if dry_run:
        for name in files:
            console.print(f"  {name}", soft_wrap=True, highlight=False)
    verb = "would delete" if dry_run else "deleted"
    console.print(
        f"{safe_uri(uri)}: {verb} {len(files):,} files older than {retention_hours} h",
        soft_wrap=True,
    )
