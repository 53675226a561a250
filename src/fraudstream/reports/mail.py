"""A report as an email: a text part with the headline, an HTML part with the tables, the full
report with its charts and the CSV files attached.

The HTML body carries no charts: mail readers do not run scripts, and plotly.js alone is
several megabytes. The page with charts travels as `report.html`, to open in a browser.
Sending is `fraudstream.adapters.smtp.send_email`'s job, not this module's.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path

from fraudstream.reports.figures import Report
from fraudstream.reports.render import instant, render_html, summary_text


def subject(report: Report) -> str:
    return f"fraudstream report {instant(report.period.start)} to {instant(report.period.end)}"


def report_message(
    report: Report, recipients: Sequence[str], csv_files: Sequence[Path], html: str | None = None
) -> EmailMessage:
    """The message for `recipients`; `html` is the page with charts (rendered here if None)."""
    message = EmailMessage()
    message["Subject"] = subject(report)
    message["To"] = ", ".join(recipients)
    message.set_content(summary_text(report))
    message.add_alternative(render_html(report, with_charts=False), subtype="html")
    page = html if html is not None else render_html(report)
    message.add_attachment(page, subtype="html", filename="report.html")
    for path in csv_files:
        message.add_attachment(
            path.read_bytes(), maintype="text", subtype="csv", filename=path.name
        )
    return message
