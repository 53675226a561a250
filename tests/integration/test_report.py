"""`fraudstream report` on a real database: every figure equals an independent SQL count over
the same period, and the HTML page, CSV files, email (through a real SMTP server) and terminal
summary carry them. The period leaves data out on both sides, so a wrong bound shows."""

from __future__ import annotations

import dataclasses
import email
import json
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
import pytest
from aiosmtpd.controller import Controller
from psycopg import sql
from report_data import (
    CUT_FROM,
    CUT_TO,
    EVIL_MERCHANT,
    IN_PERIOD,
    Inbox,
    database_url,
    populate,
    run_report,
    scored_frame,
    sql_rows,
    sql_value,
)

from fraudstream.reports.figures import Period, Report, collect
from fraudstream.reports.render import NONE, render_html, write_csv
from fraudstream.stack import Endpoints
from fraudstream.stack.process import free_port

PERIOD = Period(CUT_FROM, CUT_TO)
CUT_ARGS = ("--from", "2026-01-02", "--to", "2026-01-06T00:00:00+00:00", "--top", "5")
ESCAPED_EVIL = "&lt;script&gt;alert(&#34;merchant&#34;)&lt;/script&gt;"


@pytest.fixture(scope="module")
def url(endpoints: Endpoints) -> Iterator[str]:
    """A database of this module's own, populated once: the tests only read it."""
    name = f"report_{uuid.uuid4().hex[:12]}"
    admin = database_url(endpoints.postgres_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    populate(database_url(endpoints.postgres_url, name), scored_frame())
    yield database_url(endpoints.postgres_url, name)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def report(url: str) -> Report:
    with psycopg.connect(url) as connection:
        return collect(connection, PERIOD, top=5)


def _sql_actions(url: str) -> dict[str, int]:
    rows = sql_rows(url, f"SELECT action, count(*) FROM transactions WHERE {IN_PERIOD} GROUP BY 1")
    return {"approve": 0, "review": 0, "decline": 0} | dict(rows)


# --- the figures ----------------------------------------------------------------------------


def test_the_headline_equals_sql_counts_over_the_period(url: str, report: Report) -> None:
    count = f"SELECT count(*) FROM transactions WHERE {IN_PERIOD}"
    transactions = sql_value(url, count)
    assert 0 < transactions < sql_value(url, "SELECT count(*) FROM transactions")
    on_the_edges = "SELECT count(*) FROM transactions WHERE event_time IN (%(start)s, %(end)s)"
    assert sql_value(url, on_the_edges) == 2  # [start, end): the first counts, the second not
    labelled = "SELECT count(*) FROM labels JOIN transactions USING (transaction_id) WHERE "
    expected = (
        transactions,
        sql_value(url, f"SELECT count(DISTINCT card_ref) FROM transactions WHERE {IN_PERIOD}"),
        sql_value(url, f"{count} AND is_flagged"),
        sql_value(url, labelled + IN_PERIOD),
        sql_value(url, labelled + IN_PERIOD + " AND is_fraud"),
    )
    head = report.headline
    assert dataclasses.astuple(head) == expected
    assert 0 < head.labelled_fraud < head.labelled < head.transactions
    assert head.flag_rate == expected[2] / transactions
    assert head.fraud_rate == expected[4] / expected[3]


def test_volumes_by_currency_and_per_day_equal_sql(url: str, report: Report) -> None:
    rows = sql_rows(
        url,
        f"SELECT currency, count(*), sum(amount) FROM transactions WHERE {IN_PERIOD} GROUP BY 1",
    )
    got = {row[0]: row[1:] for row in report.amounts.iter_rows()}
    assert got.keys() == {row[0] for row in rows}
    for currency, transactions, amount in rows:
        assert got[currency] == (transactions, pytest.approx(amount, rel=1e-12))
    days = [CUT_FROM + timedelta(days=n) for n in range(4)]
    assert report.series["bucket"].to_list() == days
    between = "SELECT count(*), count(*) FILTER (WHERE is_flagged) FROM transactions WHERE "
    for day, transactions, flagged in report.series.iter_rows():
        assert (transactions, flagged) == sql_rows(
            url, between + IN_PERIOD, start=day, end=day + timedelta(1)
        )[0]
    assert report.series["transactions"].sum() == report.headline.transactions


def test_a_period_of_two_days_or_less_is_counted_per_hour_from_its_start(url: str) -> None:
    period = Period(datetime(2026, 1, 3, 6, 30, tzinfo=UTC), datetime(2026, 1, 4, 18, tzinfo=UTC))
    with psycopg.connect(url) as connection:
        series = collect(connection, period).series
    hours = [datetime(2026, 1, 3, 6, tzinfo=UTC) + timedelta(hours=n) for n in range(36)]
    assert series["bucket"].to_list() == hours
    count = f"SELECT count(*) FROM transactions WHERE {IN_PERIOD}"
    for hour, transactions, _ in series.iter_rows():
        start, end = max(hour, period.start), hour + timedelta(hours=1)
        assert transactions == sql_value(url, count, start=start, end=end), hour
    assert series["transactions"].sum() == sql_value(url, count, start=period.start, end=period.end)


def test_decisions_by_action_equal_sql(url: str, report: Report) -> None:
    expected = _sql_actions(url)
    total = sum(expected.values())
    assert report.actions.rows() == [(a, n, n / total) for a, n in expected.items()]
    assert all(n > 0 for n in expected.values())


def test_top_rules_hits_and_precision_equal_sql(url: str, report: Report) -> None:
    rules = sql_rows(
        url, f"SELECT DISTINCT unnest(rules_fired) FROM transactions WHERE {IN_PERIOD}"
    )
    figures = []
    for (rule,) in rules:
        hits, labelled, fraud = sql_rows(
            url,
            "SELECT count(*), count(l.transaction_id), count(*) FILTER (WHERE l.is_fraud)"
            " FROM transactions t LEFT JOIN labels l USING (transaction_id)"
            f" WHERE %(rule)s = ANY(t.rules_fired) AND {IN_PERIOD}",
            rule=rule,
        )[0]
        figures.append((rule, hits, labelled, fraud, fraud / labelled if labelled else None))
    top = sorted(figures, key=lambda row: (-row[1], row[0]))[:5]
    total = report.headline.transactions
    assert report.rules.rows() == [(r, h, h / total, n, f, p) for r, h, n, f, p in top]
    assert len(rules) > 5
    assert any(p is not None and 0 < p < 1 for *_, p in top)


@pytest.mark.parametrize("column", ["merchant_id", "country"])
def test_top_merchants_and_countries_by_flagged_equal_sql(
    url: str, report: Report, column: str
) -> None:
    rows = sql_rows(
        url,
        f"SELECT {column}, count(*), count(*) FILTER (WHERE is_flagged) FROM transactions"
        f" WHERE {IN_PERIOD} GROUP BY 1",
    )
    ranked = sorted(
        (row for row in rows if row[2] > 0),
        key=lambda row: (-row[2], -row[1], row[0] is None, row[0] or ""),
    )
    frame = report.merchants if column == "merchant_id" else report.countries
    assert frame.rows() == [(name, n, f, f / n) for name, n, f in ranked[:5]]
    if column == "merchant_id":
        assert frame[column][0] == EVIL_MERCHANT


def test_alert_delivery_per_channel_equals_the_outbox(url: str, report: Report) -> None:
    alerts = sql_rows(
        url, f"SELECT id, channel, status, created_at, delivered_at FROM alerts WHERE {IN_PERIOD}"
    )
    assert 0 < len(alerts) < sql_value(url, "SELECT count(*) FROM alerts")
    failed = Counter(
        alert_id for (alert_id,) in sql_rows(
            url, "SELECT alert_id FROM alert_attempts WHERE outcome = 'failed'"
        )
    )  # fmt: skip
    expected = []
    for channel in sorted({row[1] for row in alerts}):
        mine = [row for row in alerts if row[1] == channel]
        statuses = Counter(row[2] for row in mine)
        delays = [(d - c).total_seconds() for _, _, s, c, d in mine if s == "delivered"]
        p50, p95 = np.percentile(delays, [50, 95])
        expected.append((
            channel, len(mine), statuses["delivered"], statuses["pending"],
            statuses["suppressed"], sum(failed[row[0]] for row in mine),
            pytest.approx(p50, rel=1e-9), pytest.approx(p95, rel=1e-9),
        ))  # fmt: skip
        assert min(statuses.values()) > 0 and len(statuses) == 3
    assert [row[0] for row in expected] == ["email", "slack"]
    assert report.alerts.rows() == expected


def test_score_histograms_count_every_score_of_the_period(url: str, report: Report) -> None:
    rows = sql_rows(url, f"SELECT score, model_score FROM transactions WHERE {IN_PERIOD}")
    scores = np.array([score for score, _ in rows])
    models = np.array([model for _, model in rows if model is not None])
    assert {0.0, 1.0, 0.05, 0.5} <= set(models.tolist())

    def histogram(values: np.ndarray) -> list[int]:
        bins = np.clip(np.floor(values * 20), 0, 19).astype(int)
        return np.bincount(bins, minlength=20).tolist()

    assert report.scores["score"].to_list() == histogram(scores)
    assert report.scores["model_score"].to_list() == histogram(models)
    assert report.scores["score"].sum() == report.headline.transactions
    assert 0 < report.scores["model_score"].sum() < report.headline.transactions
    assert report.scores["lower"][3] == 0.15 and report.scores["upper"][19] == 1.0


def test_an_empty_period_is_a_valid_report_that_says_so(url: str, tmp_path: Path) -> None:
    period = Period(datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 2, tzinfo=UTC))
    with psycopg.connect(url) as connection:
        empty = collect(connection, period)
    assert empty.empty
    assert dataclasses.astuple(empty.headline) == (0, 0, 0, 0, 0)
    assert (empty.headline.flag_rate, empty.headline.fraud_rate) == (None, None)
    assert empty.actions.rows() == [("approve", 0, None), ("review", 0, None), ("decline", 0, None)]
    assert empty.rules.is_empty() and empty.merchants.is_empty() and empty.alerts.is_empty()
    assert (empty.series.height, empty.series["transactions"].sum()) == (24, 0)
    assert (empty.scores.height, empty.scores["score"].sum()) == (20, 0)
    page = render_html(empty)
    assert "Nothing in this period" in page and "Plotly.newPlot" not in page
    files = write_csv(empty, tmp_path / "csv")
    assert pl.read_csv(tmp_path / "csv" / "rules.csv").columns == empty.rules.columns
    assert len(files) == len(empty.sections())
    shown = run_report(url, tmp_path, "--from", "2030-01-01", "--to", "2030-01-02")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "nothing in this period" in shown.stdout


# --- the outputs ----------------------------------------------------------------------------


def test_html_and_csv_from_the_command_carry_the_figures(
    url: str, report: Report, tmp_path: Path
) -> None:
    page, folder = tmp_path / "out" / "report.html", tmp_path / "csv"
    result = run_report(url, tmp_path, *CUT_ARGS, "--html", str(page), "--csv", str(folder))
    assert result.returncode == 0, result.stdout + result.stderr
    html = page.read_text()
    assert f"{report.headline.transactions:,}" in html
    assert all(f'id="{key}"' in html for key in report.sections() if key != "summary")
    assert html.count("Plotly.newPlot") == 4
    assert html.count("* plotly.js v") == 1  # the library inline, once
    assert re.search(r"<script[^>]*\bsrc=", html) is None  # and nothing to fetch
    assert ESCAPED_EVIL in html and EVIL_MERCHANT not in html
    assert {path.name for path in folder.iterdir()} == {f"{k}.csv" for k in report.sections()}
    decisions = pl.read_csv(folder / "decisions.csv")
    assert dict(decisions.select("action", "transactions").rows()) == _sql_actions(url)
    assert pl.read_csv(folder / "rules.csv").rows() == report.rules.rows()
    assert pl.read_csv(folder / "merchants.csv")["merchant_id"][0] == EVIL_MERCHANT
    series = pl.read_csv(folder / "volume_over_time.csv")
    assert series["transactions"].sum() == report.headline.transactions
    alerts = pl.read_csv(folder / "alerts.csv")
    count = f"SELECT channel, count(*) FROM alerts WHERE {IN_PERIOD} GROUP BY 1"
    assert dict(alerts.select("channel", "created").rows()) == dict(sql_rows(url, count))


def test_a_precision_without_labels_shows_as_a_dash(report: Report) -> None:
    unknown = dataclasses.replace(report, rules=report.rules.with_columns(precision=None))
    rules = render_html(unknown, with_charts=False).split('id="rules"')[1].split("</section>")[0]
    assert rules.count(f"<td>{NONE}</td>") == unknown.rules.height > 0


def test_the_terminal_summary_shows_the_figures(url: str, report: Report, tmp_path: Path) -> None:
    zoned = ("--from", "2026-01-02T01:00+01:00", "--to", "2026-01-06", "--top", "5")  # = CUT
    result = run_report(url, tmp_path, *zoned)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2026-01-02 00:00 UTC" in result.stdout
    assert f"{report.headline.transactions:,}" in result.stdout
    assert report.rules["rule_id"][0] in result.stdout
    assert EVIL_MERCHANT in result.stdout  # text, not markup
    assert "Alert delivery per channel" in result.stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--from", "2026-02-30"), "--from"),
        (("--from", "2026-01-02", "--to", "yesterday"), "--to"),
        (("--from", "2026-01-05", "--to", "2026-01-02"), "--from"),
    ],
)
def test_a_bad_date_exits_2_naming_the_option(
    tmp_path: Path, args: tuple[str, ...], named: str
) -> None:
    result = run_report(None, tmp_path, *args)
    assert result.returncode == 2
    assert named in result.stdout and "Traceback" not in result.stdout + result.stderr


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def test_the_report_is_emailed_through_the_first_email_channel(
    url: str, report: Report, tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    mail = {"kind": "email", "host": "127.0.0.1", "port": port, "sender": "reports@bank.test"}
    channels = {"topic": {"kind": "kafka"}, "mail": mail}
    routes = [{"name": "t", "channel": "topic"}, {"name": "m", "channel": "mail",
                                                  "recipients": ["ops@bank.test"]}]  # fmt: skip
    result = run_report(
        url, tmp_path, *CUT_ARGS, "--email-to", "risk@bank.test", "--email-to", "cfo@bank.test",
        FRAUDSTREAM_ALERTS__CHANNELS=json.dumps(channels),
        FRAUDSTREAM_ALERTS__ROUTES=json.dumps(routes),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [(recipients, raw)] = inbox.received
    assert recipients == ["risk@bank.test", "cfo@bank.test"]
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message["From"] == "reports@bank.test"
    assert "2026-01-02 00:00 UTC" in message["Subject"]
    total = f"{report.headline.transactions:,}"
    assert total in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    body = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert total in body and ESCAPED_EVIL in body and "<script" not in body
    attached = {part.get_filename(): part.get_content() for part in message.iter_attachments()}
    assert attached.keys() == {"report.html"} | {f"{k}.csv" for k in report.sections()}
    assert attached["report.html"].count("Plotly.newPlot") == 4
    decisions = attached["decisions.csv"]
    decisions = decisions.decode() if isinstance(decisions, bytes) else decisions
    rows = pl.read_csv(decisions.encode()).select("action", "transactions").rows()
    assert dict(rows) == _sql_actions(url)


def test_email_needs_an_email_channel(tmp_path: Path) -> None:
    result = run_report(None, tmp_path, "--email-to", "risk@bank.test")
    assert result.returncode == 2 and "email channel" in result.stdout
    named = run_report(
        None, tmp_path, "--email-to", "x@bank.test", "--smtp-channel", "alerts-topic"
    )
    assert named.returncode == 2 and "--smtp-channel 'alerts-topic'" in named.stdout
