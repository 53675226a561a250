"""The live dashboard page, run by `streamlit run` (see `fraudstream.cli_dashboard`); it is the
default page of the dashboard's navigation, the analysts' "Cases" page (`cases_page`) the other.

Streamlit runs this script top to bottom on every visit and every change of a filter; the
live part (KPIs, charts, feeds) is a fragment that reruns itself every `REFRESH_S` seconds,
so the page stays live without a loop and without reloading the filters. It reads PostgreSQL
only, with the URL from the settings (`FRAUDSTREAM_POSTGRES__URL`, which the launcher sets, or
the embedded stack `fraudstream stack` runs). No database, an unreachable one or an empty one
each get a message saying what to do, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

import psycopg
import streamlit as st

from fraudstream.config import load_settings
from fraudstream.core.errors import FraudstreamError
from fraudstream.dashboard import cases_page, charts
from fraudstream.dashboard.database import Database, DatabaseUnavailableError
from fraudstream.dashboard.queries import (
    ACTIONS,
    Figures,
    Filters,
    alert_feed,
    card_timeline,
    has_data,
    read_figures,
    rule_ids,
)
from fraudstream.reports.figures import Connection
from fraudstream.stack import running_database_url

REFRESH_S: Final = 5
RANGES: Final = {
    "Last 15 minutes": timedelta(minutes=15),
    "Last hour": timedelta(hours=1),
    "Last 24 hours": timedelta(hours=24),
    "Last 7 days": timedelta(days=7),
    "All": None,
}
DEFAULT_RANGE: Final = "Last hour"
ANY_RULE: Final = "(any rule)"
EMPTY_HELP: Final = (
    "No decisions stored yet. Feed the pipeline: `fraudstream run` scores a simulated stream "
    "(and opens this dashboard), or `fraudstream stack`, `fraudstream worker` and "
    "`fraudstream produce` each in their own terminal."
)
_RULE_COLUMNS: Final = {
    "hit_rate": st.column_config.NumberColumn("hit rate", format="percent"),
    "precision": st.column_config.NumberColumn(format="percent"),
}
_RULE_ORDER: Final = ("rule_id", "hits", "hit_rate", "precision", "labelled_hits")
T = TypeVar("T")


@st.cache_resource(show_spinner=False)
def _database(url: str) -> Database:
    """One connection per database URL for the whole server, across sessions and refreshes."""
    return Database(url)


def _read(database: Database, reader: Callable[[Connection], T]) -> tuple[T] | None:
    """`(reader's result,)`, or None having shown why there is none: an error box for an
    unreachable database, the empty state's help for one without the pipeline's tables."""
    try:
        return (database.read(reader),)
    except DatabaseUnavailableError as error:
        st.error(f"Cannot read the database: {error}. Retrying every {REFRESH_S} s.")
    except psycopg.errors.UndefinedTable:
        st.info(f"{EMPTY_HELP} (The pipeline creates its tables when it first starts.)")
    return None


@st.cache_data(ttl=30, show_spinner=False)
def _rule_choices(url: str, span: timedelta | None) -> list[str]:
    return _database(url).read(lambda connection: rule_ids(connection, span))


def _sidebar(url: str) -> Filters:
    """The filters, in the sidebar (outside the live fragment, which cannot write there)."""
    bar = st.sidebar
    bar.header("Filters")
    label = bar.selectbox(
        "Time range (decision time)", list(RANGES), index=list(RANGES).index(DEFAULT_RANGE),
        key="range",
    )  # fmt: skip
    span = RANGES[label]
    actions = bar.multiselect("Action", ACTIONS, default=list(ACTIONS), key="actions")
    try:
        rules = _rule_choices(url, span)
    except (DatabaseUnavailableError, psycopg.errors.UndefinedTable):  # the live part says why
        rules = []
    chosen = st.session_state.get("rule")
    options = [ANY_RULE, *rules, *([chosen] if chosen and chosen not in rules else [])]
    rule = bar.selectbox("Rule fired", options, key="rule")
    merchant = bar.text_input("Merchant id", key="merchant", placeholder="any merchant").strip()
    bar.caption(f"Refreshes every {REFRESH_S} s. Reads PostgreSQL only.")
    return Filters(
        span=span,
        actions=tuple(action for action in ACTIONS if action in actions),
        rule=None if rule in (ANY_RULE, None) else rule,
        merchant=merchant or None,
    )


def _figures(connection: Connection, filters: Filters) -> Figures | None:
    return read_figures(connection, filters) if has_data(connection) else None


@st.fragment(run_every=REFRESH_S)
def _live(database: Database, filters: Filters) -> None:
    if not filters.actions:
        st.warning("Choose at least one action.")
        return
    read = _read(database, lambda connection: _figures(connection, filters))
    if read is None:
        return
    (figures,) = read
    if figures is None:
        st.info(EMPTY_HELP)
        return
    _kpis(figures)
    if figures.headline.transactions == 0:
        st.info("No decisions match these filters in this time range.")
        return
    st.plotly_chart(charts.series_chart(figures.series, figures.step_s), key="series")
    st.subheader("Alert feed: the newest flagged transactions")
    st.dataframe(charts.feed_table(figures.feed), hide_index=True, key="feed")
    left, right = st.columns(2)
    left.subheader("Rules: hits and precision")
    left.dataframe(
        figures.rules, hide_index=True, key="rules", column_config=_RULE_COLUMNS, placeholder="-",
        column_order=_RULE_ORDER,
    )  # fmt: skip
    left.caption("precision: confirmed fraud among the labelled hits (-: none labelled)")
    left.subheader("Shadow rules: recorded, never deciding")
    if figures.shadow_rules.is_empty():
        left.caption("No shadow rule fired in this range.")
    else:
        left.dataframe(
            figures.shadow_rules, hide_index=True, key="shadow_rules",
            column_config=_RULE_COLUMNS, placeholder="-", column_order=_RULE_ORDER,
        )  # fmt: skip
    right.plotly_chart(charts.score_chart(figures.scores), key="scores")
    st.subheader("Where flagged transactions happen")
    if figures.points.is_empty():
        st.caption("No flagged transaction with a location in this range.")
    else:
        st.map(charts.map_points(figures.points), color="colour", size=20000)


def _kpis(figures: Figures) -> None:
    head, live = figures.headline, figures.live
    share = figures.flagged_share
    columns = st.columns(6)
    columns[0].metric("Transactions", f"{head.transactions:,}")
    columns[1].metric("tx/s", f"{live.rate:,.1f}", help="over the 10 s up to the newest decision")
    columns[2].metric("Flagged share", "-" if share is None else f"{share:.2%}")
    columns[3].metric("Latency p50", _ms(live.latency_p50_s), help="event published → decided")
    columns[4].metric("Latency p99", _ms(live.latency_p99_s), help="event published → decided")
    columns[5].metric("Dead letters", f"{figures.dead_letters:,}")
    by_action = dict(figures.actions.select("action", "transactions").iter_rows())
    for column, action in zip(st.columns(6), ACTIONS, strict=False):
        column.metric(action.capitalize(), f"{by_action.get(action, 0):,}")
    if live.newest is not None:
        age = (datetime.now(UTC) - live.newest).total_seconds()
        st.caption(
            f"Newest decision {live.newest:%Y-%m-%d %H:%M:%S} UTC ({max(age, 0):,.0f} s ago)."
        )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def _recent_cards(database: Database, filters: Filters) -> list[str] | None:
    """The cards of the newest alerts, the drill-down's suggestions; None when there is
    nothing to drill into (an empty or unreachable database: the live part says so)."""

    def cards(connection: Connection) -> list[str] | None:
        if not has_data(connection):
            return None
        feed = alert_feed(connection, filters, limit=20).drop_nulls("card_ref")
        return feed.get_column("card_ref").unique(maintain_order=True).to_list()

    try:
        return database.read(cards)
    except (DatabaseUnavailableError, psycopg.errors.UndefinedTable):  # the live part says why
        return None


@st.fragment(run_every=REFRESH_S)
def _drilldown(database: Database, suggestions: list[str]) -> None:
    """One card's timeline; `suggestions` come from the full run, so they stay put while
    this part refreshes and a choice is never taken from under the user."""
    st.subheader("Card drill-down")
    left, right = st.columns(2)
    picked = left.selectbox(
        "A recently flagged card", suggestions, index=None, placeholder="tok_…", key="card_pick"
    )
    typed = right.text_input("…or any card ref", key="card_typed", placeholder="tok_…").strip()
    card = typed or picked
    if not card:
        st.caption("Choose a card to see its transactions, scores and the rules that fired.")
        return
    read = _read(database, lambda connection: card_timeline(connection, card))
    if read is None:
        return
    (timeline,) = read
    if timeline.is_empty():
        st.info(f"No transactions stored for card {card}.")
        return
    flagged = int(timeline.get_column("is_flagged").sum())
    last4 = timeline.get_column("card_last4").drop_nulls().tail(1).to_list() or ["????"]
    shown = card.replace("`", "")  # typed text: no way out of the code span
    st.markdown(
        f"Card `{shown}` (…{last4[0]}): **{timeline.height:,}** transactions shown, "
        f"**{flagged:,}** flagged."
    )
    st.plotly_chart(charts.card_chart(timeline), key="card_chart")
    st.dataframe(charts.card_table(timeline), hide_index=True, key="card_rows")


def main() -> None:
    st.set_page_config(page_title="fraudstream — live", page_icon="🛡️", layout="wide")
    st.title("fraudstream — live decisions")
    try:
        url = running_database_url(load_settings())
    except FraudstreamError as error:
        st.error(str(error))
        return
    database = _database(url)
    filters = _sidebar(url)
    _live(database, filters)
    suggestions = _recent_cards(database, filters)
    if suggestions is not None:
        _drilldown(database, suggestions)


def run() -> None:
    """The dashboard: the live page (the default) and the analysts' cases page."""
    live = st.Page(main, title="Live decisions", icon=":material/monitoring:", default=True)
    cases = st.Page(cases_page.main, title="Cases", icon=":material/inbox:", url_path="cases")
    st.navigation([live, cases]).run()


if __name__ == "__main__":
    run()
