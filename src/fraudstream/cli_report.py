"""`fraudstream report`: a period's figures from the pipeline's database, to the terminal, as an
HTML page with charts, as CSV files, and by email.

The period is in event time, half-open [--from, --to), so consecutive reports (`--from` of one
being `--to` of the last) count every transaction exactly once. Dates and datetimes without a
zone are UTC, because that is how the pipeline stores and buckets them. The database is found
as the other commands find it (`cli_support.database_url`: settings, else the embedded stack
that `fraudstream stack` runs); the SMTP server is that of an email alert channel, so a
deployment configures its mail server once.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table as RichTable
from rich.text import Text

from fraudstream.cli_support import console, database_url, settings_or_exit
from fraudstream.config import EmailChannelSettings, Settings
from fraudstream.core.errors import FraudstreamError

if TYPE_CHECKING:
    from fraudstream.reports.figures import Period, Report
    from fraudstream.reports.render import Table

DEFAULT_SPAN = timedelta(hours=24)
TERMINAL_SECTIONS = ("decisions", "rules", "merchants", "countries", "alerts")
"""What the terminal summary shows besides the headline (the long series stay in the files)."""


def parse_instant(value: str, option: str) -> datetime:
    """An ISO date (midnight) or datetime; UTC when it names no zone."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise FraudstreamError(
            f"{option} {value!r}: expected an ISO date or datetime, "
            "e.g. 2026-01-31, 2026-01-31T18:00 or 2026-01-31T18:00+01:00"
        ) from None
    return parsed.astimezone(UTC) if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def period_from(start: str | None, end: str | None, now: datetime) -> Period:
    """The period the options name: by default the 24 hours up to `now` (or up to --to)."""
    from fraudstream.reports.figures import Period  # noqa: PLC0415 - psycopg, only when used

    stop = now if end is None else parse_instant(end, "--to")
    begin = stop - DEFAULT_SPAN if start is None else parse_instant(start, "--from")
    if begin >= stop:
        raise FraudstreamError(f"--from {begin.isoformat()} is not before --to {stop.isoformat()}")
    return Period(begin, stop)


def smtp_channel(settings: Settings, name: str | None) -> EmailChannelSettings:
    """The email alert channel `name`, or the first one configured."""
    channels = settings.alerts.channels
    emails = [key for key, channel in channels.items() if isinstance(channel, EmailChannelSettings)]
    if name is not None and name not in emails:
        raise FraudstreamError(f"--smtp-channel {name!r}: no such email channel (have: {emails})")
    if not emails:
        raise FraudstreamError(
            "--email-to needs an SMTP server: configure an email channel in alerts.channels, "
            """e.g. FRAUDSTREAM_ALERTS__CHANNELS='{"mail": {"kind": "email", "host": "..."}}'"""
        )
    channel = channels[name or emails[0]]
    assert isinstance(channel, EmailChannelSettings)
    return channel


def _collect(url: str, period: Period, top: int) -> Report:
    import psycopg  # noqa: PLC0415

    from fraudstream.reports.figures import collect  # noqa: PLC0415

    try:
        with psycopg.connect(url, connect_timeout=10) as connection:
            return collect(connection, period, top)
    except psycopg.Error as error:
        raise FraudstreamError(f"reading the figures failed: {error}".strip()) from None


def _rich(table: Table) -> RichTable:
    """A section for the terminal; cells as plain Text, since data is not Rich markup."""
    shown = RichTable(title=table.title, caption=table.note or None)
    for index, header in enumerate(table.headers):
        shown.add_column(header, justify="left" if index == 0 else "right")
    for row in table.rows:
        shown.add_row(*(Text(cell) for cell in row))
    return shown


def show_summary(report: Report) -> None:
    from fraudstream.reports.render import headline, instant, tables  # noqa: PLC0415

    period = report.period
    figures = RichTable(
        title=f"fraudstream report {instant(period.start)} to {instant(period.end)}"
    )
    figures.add_column("measure")
    figures.add_column("value", justify="right")
    for label, value in headline(report):
        figures.add_row(label, value)
    console.print(figures)
    if report.empty:
        console.print("[yellow]nothing in this period: no transaction has its event time in it")
        return
    for table in tables(report):
        if table.key in TERMINAL_SECTIONS:
            console.print(_rich(table))


def _email(
    report: Report, html: str | None, files: list[Path], to: list[str], smtp: EmailChannelSettings
) -> None:
    from fraudstream.adapters.smtp import send_email  # noqa: PLC0415
    from fraudstream.reports.mail import report_message  # noqa: PLC0415
    from fraudstream.reports.render import write_csv  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as scratch:  # CSVs not asked for: attached all the same
        attached = files or write_csv(report, Path(scratch))
        refused = send_email(smtp, report_message(report, to, attached, html))
    sent = [address for address in to if address not in refused]
    console.print(f"emailed the report to {', '.join(sent)} via {smtp.host}:{smtp.port}")
    if refused:
        console.print(f"[yellow]the server refused {', '.join(refused)}")


def _write(
    report: Report, html_path: Path | None, csv_dir: Path | None
) -> tuple[str | None, list[Path]]:
    """Write the files asked for; returns the HTML page (if rendered) and the CSV files."""
    from fraudstream.reports.render import render_html, write_csv  # noqa: PLC0415

    html, files = None, []
    if html_path is not None:
        html = render_html(report)
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(html, encoding="utf-8")
        console.print(f"wrote {html_path}")
    if csv_dir is not None:
        files = write_csv(report, csv_dir)
        console.print(f"wrote {len(files)} CSV files to {csv_dir}")
    return html, files


def report(
    start: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Period start, event time: ISO date or datetime, UTC if "
            "no zone. Default: 24 h before --to.",
        ),
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Period end (excluded). Default: now.")
    ] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Write an HTML page with charts here.")
    ] = None,
    csv: Annotated[
        Path | None, typer.Option("--csv", help="Write one CSV file per section into this folder.")
    ] = None,
    email_to: Annotated[
        list[str] | None, typer.Option("--email-to", help="Email the report here (repeatable).")
    ] = None,
    smtp: Annotated[
        str | None,
        typer.Option(
            "--smtp-channel",
            help="The email alert channel to send through (default: the first configured).",
        ),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Rules, merchants, countries shown.")] = 10,
) -> None:
    """A period's figures: volumes, flag and fraud rates, decisions, top rules, merchants and
    countries, alert delivery, score distribution. Without --html, --csv or --email-to, a
    summary on the terminal."""
    try:
        period = period_from(start, end, datetime.now(UTC))
        settings = settings_or_exit()
        channel = smtp_channel(settings, smtp) if email_to else None
        url = database_url(settings)
    except FraudstreamError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    try:
        with console.status("reading the period's figures…"):
            figures = _collect(url, period, top)
        if html is None and csv is None and not email_to:
            show_summary(figures)
            return
        page, files = _write(figures, html, csv)
        if email_to and channel is not None:
            _email(figures, page, files, email_to, channel)
    except FraudstreamError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
