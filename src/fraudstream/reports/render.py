"""A report's figures as an HTML page with charts, as CSV files, and as a few lines of text.

The HTML is rendered by Jinja2 with autoescaping on, because merchant ids, countries and rule ids
come from the data and may hold markup. Charts are Plotly; plotly.js is embedded inline once,
with the first chart (`include_plotlyjs=True`), never loaded from a CDN, because reports are
read offline and archived. Untrusted text (merchants, countries) only appears in tables, never
in chart labels, which plotly.js interprets as a subset of HTML.

CSV is one file per section, written by Polars, with raw numbers (rates as fractions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final

import jinja2
import plotly.graph_objects as go
import polars as pl
from markupsafe import Markup

from fraudstream.reports.figures import Report

TEMPLATE: Final = "resources/report.html.j2"
NONE: Final = "—"
"""Shown for a figure that cannot be computed (a rate of nothing, a precision of no labels)."""

Formatter = Callable[[Any], str]


@dataclass(frozen=True, slots=True)
class Table:
    """A section as the page shows it: every cell already a string (autoescaped later)."""

    key: str
    title: str
    headers: tuple[str, ...]
    rows: list[list[str]]
    note: str = ""


def count(value: int | None) -> str:
    return NONE if value is None else f"{value:,}"


def rate(value: float | None) -> str:
    return NONE if value is None else f"{value:.2%}"


def money(value: float | None) -> str:
    return NONE if value is None else f"{value:,.2f}"


def seconds(value: float | None) -> str:
    return NONE if value is None else f"{value:,.1f} s"


def text(value: object) -> str:
    return "(none)" if value is None else str(value)


def instant(value: datetime) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _rows(frame: pl.DataFrame, formats: Sequence[Formatter]) -> list[list[str]]:
    return [[show(v) for show, v in zip(formats, row, strict=True)] for row in frame.iter_rows()]


def tables(report: Report) -> list[Table]:
    """The sections below the headline, in reading order."""
    top = report.top
    bucket = "hour" if report.period.step_hours == 1 else "day (UTC)"
    return [
        Table("volume_by_currency", "Volume by currency", ("currency", "transactions", "amount"),
              _rows(report.amounts, (text, count, money))),
        Table("volume_over_time", f"Volume per {bucket}", ("from", "transactions", "flagged"),
              _rows(report.series, (instant, count, count))),
        Table("decisions", "Decisions by action", ("action", "transactions", "share"),
              _rows(report.actions, (text, count, rate))),
        Table("rules", f"Top {top} rules by hits",
              ("rule", "hits", "hit rate", "labelled hits", "labelled fraud hits", "precision"),
              _rows(report.rules, (text, count, rate, count, count, rate)),
              f"precision = labelled fraud hits / labelled hits; {NONE}: no hit is labelled"),
        Table("merchants", f"Top {top} merchants by flagged transactions",
              ("merchant", "transactions", "flagged", "flag rate"),
              _rows(report.merchants, (text, count, count, rate))),
        Table("countries", f"Top {top} countries by flagged transactions",
              ("country", "transactions", "flagged", "flag rate"),
              _rows(report.countries, (text, count, count, rate))),
        Table("alerts", "Alert delivery per channel",
              ("channel", "created", "delivered", "pending", "suppressed (duplicates)",
               "failed attempts", "delay p50", "delay p95"),
              _rows(report.alerts, (text, count, count, count, count, count, seconds, seconds)),
              "alerts on the period's transactions, status now; delay: created to delivered"),
        Table("score_distribution", "Score distribution",
              ("from", "to", "score", "model score"),
              _rows(report.scores.drop("bin"), ("{:.2f}".format, "{:.2f}".format, count, count))),
    ]  # fmt: skip


def headline(report: Report) -> list[tuple[str, str]]:
    """The figures at the top of every rendering: label, value."""
    head = report.headline
    return [
        ("transactions", count(head.transactions)),
        ("distinct cards", count(head.cards)),
        ("flagged (review or decline)", f"{count(head.flagged)} ({rate(head.flag_rate)})"),
        ("labelled", count(head.labelled)),
        ("fraud rate (of labelled)", f"{rate(head.fraud_rate)} ({count(head.labelled_fraud)})"),
    ]


def summary_text(report: Report) -> str:
    """Plain-text headline: the email's text part."""
    period = report.period
    lines = [f"fraudstream report, {instant(period.start)} to {instant(period.end)} (event time)"]
    if report.empty:
        lines.append("No transactions in this period.")
    lines += [f"{label}: {value}" for label, value in headline(report)]
    lines += [
        f"{row[0]}: {row[1]} ({row[2]})" for row in _rows(report.actions, (text, count, rate))
    ]
    for row in report.alerts.iter_rows(named=True):
        lines.append(
            f"alerts via {row['channel']}: {row['created']:,} created, "
            f"{row['delivered']:,} delivered, {row['pending']:,} pending"
        )
    return "\n".join(lines) + "\n"


def charts(report: Report) -> dict[str, go.Figure]:
    """Charts by the section they illustrate; none for an empty period."""
    if report.empty:
        return {}
    series, actions, rules, scores = report.series, report.actions, report.rules, report.scores
    volume = go.Figure(
        [
            go.Bar(x=series["bucket"].to_list(), y=series["transactions"].to_list(), name="all"),
            go.Scatter(
                x=series["bucket"].to_list(), y=series["flagged"].to_list(), name="flagged",
                yaxis="y2", mode="lines+markers",
            ),
        ],
        layout={"title": "Transactions over time", "yaxis2": {"overlaying": "y", "side": "right"}},
    )  # fmt: skip
    decisions = go.Figure(
        go.Bar(x=actions["action"].to_list(), y=actions["transactions"].to_list()),
        layout={"title": "Decisions by action"},
    )
    hits = go.Figure(
        go.Bar(y=rules["rule_id"].to_list(), x=rules["hits"].to_list(), orientation="h"),
        layout={"title": "Rule hits", "yaxis": {"autorange": "reversed"}},
    )
    middles = ((scores["lower"] + scores["upper"]) / 2).to_list()
    histogram = go.Figure(
        [
            go.Bar(x=middles, y=scores["score"].to_list(), name="score"),
            go.Bar(x=middles, y=scores["model_score"].to_list(), name="model score"),
        ],
        layout={"title": "Score distribution", "barmode": "group"},
    )
    return {
        "volume_over_time": volume, "decisions": decisions, "rules": hits,
        "score_distribution": histogram,
    }  # fmt: skip


def chart_html(figures: Sequence[go.Figure]) -> list[Markup]:
    """Each chart as a `<div>`; plotly.js inline in the first one only."""
    return [
        Markup(  # noqa: S704 - Plotly's own output; it escapes `<` in the data it embeds
            figure.update_layout(template="plotly_white", height=380).to_html(
                full_html=False, include_plotlyjs=index == 0, config={"displaylogo": False}
            )
        )
        for index, figure in enumerate(figures)
    ]


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )


def render_html(report: Report, *, with_charts: bool = True) -> str:
    """The report as one self-contained HTML page. Without charts it has no script at all,
    which is what an email body should be (mail readers do not run scripts)."""
    source = resources.files("fraudstream").joinpath(TEMPLATE).read_text(encoding="utf-8")
    template = _environment().from_string(source)
    sections = tables(report)
    figures = charts(report) if with_charts else {}
    keys = [table.key for table in sections if table.key in figures]  # page order: plotly.js first
    return template.render(
        period=report.period,
        start=instant(report.period.start),
        end=instant(report.period.end),
        generated=instant(report.generated_at),
        empty=report.empty,
        headline=headline(report),
        tables=sections,
        charts=dict(zip(keys, chart_html([figures[key] for key in keys]), strict=True)),
    )


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def write_csv(report: Report, directory: Path) -> list[Path]:
    """One `<section>.csv` per section into `directory` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in report.sections().items():
        path = directory / f"{name}.csv"
        spreadsheet_safe(frame).write_csv(path)
        written.append(path)
    return written


def spreadsheet_safe(frame: pl.DataFrame) -> pl.DataFrame:
    """Text that a spreadsheet would run as a formula (a merchant id `=HYPERLINK(...)`: the
    data is untrusted) gets a leading `'`, which spreadsheets show as text. Numbers stay."""
    texts = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    return frame.with_columns(
        pl.when(_starts_formula(name))
        .then(pl.lit("'") + pl.col(name))
        .otherwise(pl.col(name))
        .alias(name)
        for name in texts
    )


def _starts_formula(name: str) -> pl.Expr:
    return pl.any_horizontal(pl.col(name).str.starts_with(start) for start in _FORMULA_START)
