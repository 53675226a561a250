"""The dashboard page through Streamlit's AppTest, on real databases of the embedded server:
its KPIs, alert feed, rules (live and shadow) and card drill-down equal independent SQL, its
filters change them as SQL says, and an empty, bare or unreachable database gets a message,
never an exception."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import pandas as pd
import psycopg
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
from report_data import CLI, EVIL_MERCHANT, sql_rows, sql_value
from streamlit.testing.v1 import AppTest

from fraudstream.adapters.postgres import migrate
from fraudstream.dashboard import APP_PATH
from fraudstream.dashboard.queries import Filters, read_figures, shadow_rules
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


SHADOW_WIDE: Final = "shadow_wide"
"""Fired in shadow on every fifth decision, in every cluster."""
SHADOW_MIDDLE: Final = "shadow_middle"
"""Fired in shadow on every other decision of the middle cluster (50 to 38 minutes ago) only."""
SHADOW_UNLABELLED: Final = "shadow_unlabelled"
"""Fired in shadow on unlabelled decisions only: its precision is unknown."""
NO_SHADOW: Final = "No shadow rule fired in this range."
SHADOW_TITLE: Final = "Shadow rules: recorded, never deciding"


@dataclass(frozen=True, slots=True)
class Shadowed:
    """A database with shadow hits; `live_rule` is the busiest live rule of the last hour, also
    fired in shadow on other rows; `quiet` a merchant with decisions but no shadow hit."""

    url: str
    live_rule: str
    quiet: str


@pytest.fixture(scope="module")
def shadowed(endpoints: Endpoints) -> Iterator[Shadowed]:
    """A database of its own (the shared one stays without shadow hits): the same rows, with
    shadow rules recorded on some, as a worker with rules in shadow would have written them.
    `kafka_offset` is the row's index in the frame, which decides its cluster."""
    for url in populated_database(endpoints):
        live_rule = sql_value(
            url,
            "SELECT r FROM transactions CROSS JOIN unnest(rules_fired) AS r"
            f' WHERE {scope()} GROUP BY r ORDER BY count(*) DESC, r COLLATE "C" LIMIT 1',
            span=HOUR,
        )
        quiet = sql_value(
            url,
            f"SELECT merchant_id FROM transactions WHERE {scope()} GROUP BY merchant_id"
            ' ORDER BY count(*) DESC, merchant_id COLLATE "C" LIMIT 1',
            span=HOUR,
        )
        with psycopg.connect(url) as connection:
            connection.execute(
                "UPDATE transactions t SET shadow_rules_fired = array_remove(ARRAY["
                " CASE WHEN kafka_offset %% 5 = 0 THEN %(wide)s END,"
                " CASE WHEN kafka_offset BETWEEN 1400 AND 2799 AND kafka_offset %% 2 = 1"
                "  THEN %(middle)s END,"
                " CASE WHEN kafka_offset %% 7 = 3 THEN %(live)s END,"
                " CASE WHEN kafka_offset %% 4 = 1 AND NOT EXISTS"
                "  (SELECT FROM labels l WHERE l.transaction_id = t.transaction_id)"
                "  THEN %(unlabelled)s END]::text[], NULL)"
                " WHERE merchant_id <> %(quiet)s",
                {
                    "wide": SHADOW_WIDE, "middle": SHADOW_MIDDLE, "live": live_rule,
                    "unlabelled": SHADOW_UNLABELLED, "quiet": quiet,
                },
            )  # fmt: skip
        yield Shadowed(url, live_rule, quiet)


def expected_shadow(
    url: str, span: timedelta = HOUR, where: str = "true", **params: Any
) -> list[tuple[Any, ...]]:
    """(rule, hits, hit rate, labelled hits, labelled fraud hits, precision) of each shadow
    rule over the decisions in range matching `where`, from plain SQL: most hits first."""
    total = sql_value(
        url, f"SELECT count(*) FROM transactions WHERE {scope(where)}", span=span, **params
    )
    counts = sql_rows(
        url,
        "SELECT r, count(*), count(l.transaction_id), count(*) FILTER (WHERE l.is_fraud)"
        " FROM transactions t CROSS JOIN unnest(t.shadow_rules_fired) AS r"
        f" LEFT JOIN labels l USING (transaction_id) WHERE {scope(where)} GROUP BY r",
        span=span,
        **params,
    )
    rows = [
        (rule, hits, hits / total, labelled, fraud, fraud / labelled if labelled else None)
        for rule, hits, labelled, fraud in counts
    ]
    return sorted(rows, key=lambda row: (-row[1], row[0]))


def _shadow_rows(url: str, filters: Filters) -> list[tuple[Any, ...]]:
    """The shadow rules' rows as the page reads them: within `read_figures`' snapshot."""
    with psycopg.connect(url, autocommit=True) as connection:
        return read_figures(connection, filters).shadow_rules.rows()


def test_shadow_rule_hits_and_precision_equal_sql_and_leave_live_hits_out(
    shadowed: Shadowed,
) -> None:
    url, live_rule = shadowed.url, shadowed.live_rule
    expected = expected_shadow(url)
    assert _shadow_rows(url, Filters(span=HOUR)) == expected
    shadow = {SHADOW_WIDE, SHADOW_MIDDLE, SHADOW_UNLABELLED, live_rule}
    assert {row[0] for row in expected} == shadow  # no live-only rule among them
    # the data has what the figures must tell apart: fraud, legitimate and unlabelled hits
    mix = sql_rows(
        url,
        "SELECT count(*) FILTER (WHERE l.is_fraud), count(*) FILTER (WHERE NOT l.is_fraud),"
        " count(*) FILTER (WHERE l.transaction_id IS NULL) FROM transactions t"
        " LEFT JOIN labels l USING (transaction_id)"
        f" WHERE %(rule)s = ANY(t.shadow_rules_fired) AND {scope()}",
        span=HOUR,
        rule=SHADOW_WIDE,
    )[0]
    assert all(count > 0 for count in mix), mix
    by_rule = {row[0]: row for row in expected}
    assert 0 < by_rule[SHADOW_WIDE][5] < 1
    assert by_rule[SHADOW_UNLABELLED][3] == 0 and by_rule[SHADOW_UNLABELLED][5] is None
    # the live rule's live hits are not shadow hits: counting them would change its figures
    live_hits = sql_value(
        url, f"SELECT count(*) FROM transactions WHERE %(rule)s = ANY(rules_fired) AND {scope()}",
        span=HOUR, rule=live_rule,
    )  # fmt: skip
    assert live_hits > 0 and by_rule[live_rule][1] != live_hits
    # top: the most hits first
    with psycopg.connect(url, autocommit=True) as connection:
        assert shadow_rules(connection, Filters(span=HOUR), 2).rows() == expected[:2]


def test_the_filters_scope_the_shadow_rules_as_sql_says(shadowed: Shadowed) -> None:
    url = shadowed.url
    every = {row[0]: row[1] for row in expected_shadow(url)}
    merchant = sql_value(
        url,
        "SELECT merchant_id FROM transactions"
        f" WHERE cardinality(shadow_rules_fired) > 0 AND {scope()} GROUP BY merchant_id"
        ' ORDER BY count(*) DESC, merchant_id COLLATE "C" LIMIT 1',
        span=HOUR,
    )
    cases = [
        (Filters(span=HOUR, merchant=merchant), expected_shadow(
            url, where="merchant_id = %(m)s", m=merchant)),
        (Filters(span=HOUR, actions=("decline",)), expected_shadow(
            url, where="action = 'decline'")),
        (Filters(span=HOUR, actions=("approve", "review")), expected_shadow(
            url, where="action <> 'decline'")),
        (Filters(span=HOUR, rule=shadowed.live_rule), expected_shadow(
            url, where="%(r)s = ANY(rules_fired)", r=shadowed.live_rule)),
        (Filters(span=timedelta(minutes=15)), expected_shadow(url, timedelta(minutes=15))),
        (Filters(span=None), expected_shadow(url, timedelta(days=3650))),
    ]  # fmt: skip
    for filters, expected in cases:
        assert expected, filters
        assert _shadow_rows(url, filters) == expected, filters
        assert {row[0]: row[1] for row in expected} != every, filters  # the filter mattered
    quarter = {row[0] for row in cases[4][1]}
    assert SHADOW_MIDDLE in every and SHADOW_MIDDLE not in quarter
    quiet = Filters(span=HOUR, merchant=shadowed.quiet)
    assert sql_value(
        url, f"SELECT count(*) FROM transactions WHERE merchant_id = %(m)s AND {scope()}",
        span=HOUR, m=shadowed.quiet,
    ) > 0  # fmt: skip
    assert _shadow_rows(url, quiet) == []


def _under_shadow_title(page: AppTest) -> Any:
    """The element right under the shadow rules' title, which must be in the live rules'
    column, after the live rules."""
    for column in page.columns:
        items = list(column.children.values())
        titles = [(i, n.value) for i, n in enumerate(items) if n.type == "subheader"]
        if SHADOW_TITLE in [title for _, title in titles]:
            assert [title for _, title in titles] == ["Rules: hits and precision", SHADOW_TITLE]
            return items[titles[1][0] + 1]
    raise AssertionError(f"no column with {SHADOW_TITLE!r}")


def test_the_page_shows_the_shadow_rules_beside_the_live_ones(
    shadowed: Shadowed, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    page = _open(shadowed.url, monkeypatch, tmp_path)
    under = _under_shadow_title(page)
    assert under.type == "dataframe"
    shown = under.value
    expected = expected_shadow(shadowed.url)
    assert shown["rule_id"].tolist() == [row[0] for row in expected]
    assert shown["hits"].tolist() == [row[1] for row in expected]
    assert shown["precision"].tolist() == pytest.approx(
        [float("nan") if row[5] is None else row[5] for row in expected], nan_ok=True
    )
    assert NO_SHADOW not in [caption.value for caption in page.caption]
    live = table(page, "rule_id")  # the live table comes first, with the live rules only
    assert SHADOW_WIDE not in set(live["rule_id"]) and shadowed.live_rule in set(live["rule_id"])
    page.sidebar.text_input(key="merchant").input(shadowed.quiet).run()
    assert not page.exception
    assert kpis(page)["Transactions"] != "0"
    under = _under_shadow_title(page)
    assert (under.type, under.value) == ("caption", NO_SHADOW)
    assert len([frame for frame in page.dataframe if "hit_rate" in frame.value.columns]) == 1


def test_the_page_says_when_no_shadow_rule_fired(page: AppTest, populated: str) -> None:
    assert sql_value(populated, "SELECT count(*) FROM transactions"
                     " WHERE cardinality(shadow_rules_fired) > 0") == 0  # fmt: skip
    under = _under_shadow_title(page)
    assert (under.type, under.value) == ("caption", NO_SHADOW)
    assert len([frame for frame in page.dataframe if "hit_rate" in frame.value.columns]) == 1
    assert not table(page, "rule_id").empty  # the live rules still show
