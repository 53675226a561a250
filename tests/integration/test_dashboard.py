"""The dashboard page through Streamlit's AppTest, on real databases of the embedded server:
its KPIs, alert feed, rules and card drill-down equal independent SQL, its filters change them
as SQL says, and an empty, bare or unreachable database gets a message, never an exception."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from dashboard_data import (
    HOUR,
    OLD_DEAD,
    RECENT_DEAD,
    expected_kpis,
    new_database,
    newest_alerts,
    populated_database,
    scope,
)
from report_data import CLI, EVIL_MERCHANT, sql_rows
from streamlit.testing.v1 import AppTest

from fraudstream.adapters.postgres import migrate
from fraudstream.dashboard import APP_PATH
from fraudstream.stack import Endpoints
from fraudstream.stack.process import free_port


@pytest.fixture(scope="module")
def populated(endpoints: Endpoints) -> Iterator[str]:
    yield from populated_database(endpoints)


def _open(url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AppTest:
    """The page as a browser's first visit renders it, reading `url`."""
    monkeypatch.setenv("FRAUDSTREAM_POSTGRES__URL", url)
    monkeypatch.setenv("FRAUDSTREAM_STACK__DATA_DIR", str(tmp_path))
    page = AppTest.from_file(str(APP_PATH), default_timeout=60).run()
    assert not page.exception, page.exception
    return page


@pytest.fixture
def page(populated: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AppTest:
    return _open(populated, monkeypatch, tmp_path)


def kpis(page: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in page.metric}


def table(page: AppTest, column: str) -> pd.DataFrame:
    """The first table on the page that has `column`."""
    found = [frame.value for frame in page.dataframe if column in frame.value.columns]
    assert found, f"no table with {column!r}"
    return found[0]


def series_totals(page: AppTest) -> dict[str, int]:
    """Sum of each line of the volume chart (the first Plotly chart)."""
    figure = json.loads(page.get("plotly_chart")[0].proto.spec)
    return {trace["name"]: sum(trace["y"]) for trace in figure["data"]}


def test_the_kpis_equal_sql_over_the_last_hour(page: AppTest, populated: str) -> None:
    expected = expected_kpis(populated)
    assert kpis(page) == expected
    flagged = sql_rows(
        populated, f"SELECT count(*) FROM transactions WHERE is_flagged AND {scope()}", span=HOUR
    )[0][0]
    assert series_totals(page) == {"transactions": 2600, "flagged": flagged}
    assert expected["Transactions"] == "2,600"  # the newest and middle clusters
    assert expected["Dead letters"] == f"{RECENT_DEAD}"
    assert expected["tx/s"] == "4.0"  # the newest batch of 40 alone is within 10 s
    assert "Newest decision" in page.caption[0].value


def test_the_alert_feed_starts_with_the_newest_flagged_rows_and_masks_cards(
    page: AppTest, populated: str
) -> None:
    feed = table(page, "reasons")
    newest = newest_alerts(populated, 10)
    assert len(feed) == 50  # the feed's LIMIT
    assert feed["transaction_id"].head(10).tolist() == [row[0] for row in newest]
    assert feed["card"].head(10).tolist() == [f"…{row[1]}" for row in newest]
    assert feed["action"].head(10).tolist() == [row[2] for row in newest]
    assert feed["reasons"].head(10).tolist() == ["; ".join(row[3]) for row in newest]
    assert all(re.fullmatch(r"…\d{4}", card) for card in feed["card"])


def test_rule_hits_and_precision_equal_sql(page: AppTest, populated: str) -> None:
    rules = table(page, "rule_id")
    expected = sql_rows(
        populated,
        "SELECT r, count(*), (count(*) FILTER (WHERE l.is_fraud))::float8"
        " / nullif(count(l.transaction_id), 0) FROM transactions t"
        " CROSS JOIN unnest(t.rules_fired) AS r LEFT JOIN labels l USING (transaction_id)"
        f" WHERE {scope()} GROUP BY r",
        span=HOUR,
    )
    shown = {row.rule_id: (row.hits, row.precision) for row in rules.itertuples()}
    assert set(shown) == {rule for rule, _, _ in expected}
    assert any(precision is not None for _, _, precision in expected)
    for rule, hits, precision in expected:
        assert shown[rule][0] == hits, rule
        if precision is None:
            assert pd.isna(shown[rule][1]), rule
        else:
            assert shown[rule][1] == pytest.approx(precision), rule


def test_the_time_range_changes_every_figure_as_sql_says(page: AppTest, populated: str) -> None:
    page.sidebar.selectbox(key="range").select("Last 15 minutes").run()
    quarter = expected_kpis(populated, timedelta(minutes=15))
    assert kpis(page) == quarter
    assert quarter["Transactions"] == "1,200" and quarter["Dead letters"] == f"{RECENT_DEAD}"
    page.sidebar.selectbox(key="range").select("All").run()
    shown = kpis(page)
    assert shown["Transactions"] == "4,000"
    assert shown["Dead letters"] == f"{RECENT_DEAD + OLD_DEAD}"
    assert shown == expected_kpis(populated, timedelta(days=3650))
    assert series_totals(page)["transactions"] == 4000


def test_the_action_filter_keeps_only_those_decisions(page: AppTest, populated: str) -> None:
    page.sidebar.multiselect(key="actions").set_value(["decline"]).run()
    shown = kpis(page)
    assert shown == expected_kpis(populated, where="action = 'decline'")
    assert shown["Review"] == "0" and shown["Approve"] == "0" and shown["Decline"] != "0"
    feed = table(page, "reasons")
    assert set(feed["action"]) == {"decline"}
    expected = newest_alerts(populated, 10, where="action = 'decline'")
    assert feed["transaction_id"].head(10).tolist() == [row[0] for row in expected]


def test_the_rule_and_merchant_filters_count_as_sql_says(page: AppTest, populated: str) -> None:
    (rule, hits), *_ = sql_rows(
        populated,
        "SELECT r, count(*) FROM transactions CROSS JOIN unnest(rules_fired) AS r"
        f" WHERE {scope()} GROUP BY r ORDER BY count(*) DESC, r LIMIT 1",
        span=HOUR,
    )
    page.sidebar.selectbox(key="rule").select(rule).run()
    assert kpis(page) == expected_kpis(populated, where="%(rule)s = ANY(rules_fired)", rule=rule)
    assert kpis(page)["Transactions"] == f"{hits:,}"
    page.sidebar.selectbox(key="rule").select("(any rule)").run()
    page.sidebar.text_input(key="merchant").input(EVIL_MERCHANT).run()
    shown = kpis(page)
    assert shown == expected_kpis(populated, where="merchant_id = %(m)s", m=EVIL_MERCHANT)
    assert shown["Transactions"] != "0"
    assert set(table(page, "reasons")["merchant"]) == {EVIL_MERCHANT}  # as text, not markup


def test_the_card_drilldown_shows_exactly_that_cards_transactions(
    page: AppTest, populated: str
) -> None:
    newest_flagged = sql_rows(
        populated,
        f"SELECT card_ref FROM transactions WHERE is_flagged AND {scope()}"
        ' ORDER BY decided_at DESC, transaction_id COLLATE "C" DESC LIMIT 1',
        span=HOUR,
    )[0][0]
    picker = page.selectbox(key="card_pick")
    assert picker.options[0] == newest_flagged
    picker.select(newest_flagged).run()
    assert not page.exception
    _assert_card_rows(page, populated, newest_flagged)
    never_flagged = sql_rows(
        populated,
        "SELECT card_ref FROM transactions GROUP BY card_ref"
        " HAVING NOT bool_or(is_flagged) AND count(*) > 2 ORDER BY card_ref LIMIT 1",
    )[0][0]
    page.text_input(key="card_typed").input(never_flagged).run()
    _assert_card_rows(page, populated, never_flagged)
    page.text_input(key="card_typed").input("tok_nobody").run()
    assert "No transactions stored for card tok_nobody." in [info.value for info in page.info]


def _assert_card_rows(page: AppTest, url: str, card: str) -> None:
    rows = table(page, "event_time")
    expected = sql_rows(
        url,
        "SELECT transaction_id, card_last4 FROM transactions WHERE card_ref = %(card)s"
        ' ORDER BY event_time DESC, transaction_id COLLATE "C" DESC',
        card=card,
    )
    assert rows["transaction_id"].tolist() == [tid for tid, _ in expected]
    assert set(rows["card"]) == {f"…{expected[0][1]}"}


@pytest.mark.parametrize("schema", [True, False], ids=["migrated", "bare"])
def test_an_empty_database_gets_help_not_an_exception(
    endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, schema: bool
) -> None:
    with new_database(endpoints) as url:
        if schema:
            migrate(url)
        page = _open(url, monkeypatch, tmp_path)
    assert [info.value for info in page.info if "fraudstream run" in info.value]
    assert not page.metric and not page.dataframe and not page.error


def test_an_unreachable_database_shows_an_error_box_without_the_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"postgresql://fraud:s3cret-pw@127.0.0.1:{free_port()}/fraud"
    page = _open(url, monkeypatch, tmp_path)
    (error,) = page.error
    assert "Cannot read the database" in error.value and "127.0.0.1" in error.value
    assert "s3cret-pw" not in error.value
    assert not page.metric


def test_the_command_without_a_database_says_how_to_get_one(tmp_path: Path) -> None:
    environment = {"PATH": "/usr/bin:/bin", "FRAUDSTREAM_STACK__DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [CLI, "dashboard", "--port", str(free_port())], env=environment, cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "fraudstream stack" in result.stdout
