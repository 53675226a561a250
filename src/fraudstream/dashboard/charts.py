"""The dashboard's Plotly figures and display tables: pure functions of the query frames.

Kept apart from the page so they can be built (and looked at) without a Streamlit session.
Cards appear only as their token and last four digits (`…1234`): the database holds no full
card number, and nothing here would show one.
"""

from __future__ import annotations

from html import escape
from typing import Final

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

ACTION_COLOURS: Final = {"approve": "#2ca02c", "review": "#ff7f0e", "decline": "#d62728"}
_LAYOUT: Final = {"margin": {"l": 10, "r": 10, "t": 30, "b": 10}, "hovermode": "x unified"}


def step_label(step_s: int) -> str:
    """`10 s`, `5 min`, `1 h`, `1 d`: the series' bucket in words."""
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if step_s >= seconds and step_s % seconds == 0:
            return f"{step_s // seconds} {unit}"
    return f"{step_s} s"


def series_chart(series: pl.DataFrame, step_s: int) -> go.Figure:
    """Decisions and flagged decisions per bucket of decision time."""
    figure = go.Figure()
    x = series.get_column("bucket").to_list()
    for column, colour in (("transactions", "#1f77b4"), ("flagged", "#d62728")):
        figure.add_trace(
            go.Scatter(
                x=x, y=series.get_column(column).to_list(), name=column, mode="lines+markers",
                line={"color": colour, "shape": "hv"},
            )
        )  # fmt: skip
    figure.update_layout(
        **_LAYOUT, title=f"Decisions per {step_label(step_s)}", yaxis_title="decisions"
    )
    return figure


def score_chart(scores: pl.DataFrame) -> go.Figure:
    """Histogram of the decision score and of the model's score (where a model scored), on a
    log scale: most transactions score near 0, and the few near 1 are the ones that matter."""
    figure = go.Figure()
    middle = ((scores.get_column("lower") + scores.get_column("upper")) / 2).to_list()
    for column in ("score", "model_score"):
        figure.add_trace(go.Bar(x=middle, y=scores.get_column(column).to_list(), name=column))
    figure.update_layout(
        **_LAYOUT, title="Score distribution", barmode="group", xaxis_title="score",
        yaxis_title="transactions (log scale)", yaxis_type="log", bargap=0.1,
    )  # fmt: skip
    return figure


def card_chart(timeline: pl.DataFrame) -> go.Figure:
    """One card over event time: amounts coloured by action (hover: merchant and the rules
    that fired), and below them the score and the model's score."""
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4])
    for action, colour in ACTION_COLOURS.items():
        rows = timeline.filter(pl.col("action") == action)
        if rows.is_empty():
            continue
        figure.add_trace(
            go.Scatter(
                x=rows.get_column("event_time").to_list(), y=rows.get_column("amount").to_list(),
                mode="markers", name=action, marker={"color": colour, "size": 10},
                text=_hover(rows), hovertemplate="%{y:,.2f}<br>%{text}<extra></extra>",
            ),
            row=1, col=1,
        )  # fmt: skip
    x = timeline.get_column("event_time").to_list()
    for column, dash in (("score", "solid"), ("model_score", "dot")):
        figure.add_trace(
            go.Scatter(
                x=x, y=timeline.get_column(column).to_list(), name=column, mode="lines+markers",
                line={"dash": dash},
            ),
            row=2, col=1,
        )  # fmt: skip
    figure.update_yaxes(title_text="amount", row=1, col=1)
    figure.update_yaxes(title_text="score", range=[0, 1.05], row=2, col=1)
    figure.update_layout(**_LAYOUT, title="Card timeline (event time)", height=480)
    return figure


def _hover(rows: pl.DataFrame) -> list[str]:
    """Hover text, escaped: merchant ids come from the data, and plotly.js reads a subset of
    HTML in labels (the report keeps such text out of charts for the same reason)."""
    columns = rows.select("currency", "action", "merchant_id", "rules_fired").iter_rows()
    return [
        f"{escape(currency)} {escape(action)} at {escape(merchant or '?')}"
        f"<br>rules: {escape(', '.join(rules))}"
        for currency, action, merchant, rules in columns
    ]


def masked_card(last4: pl.Expr) -> pl.Expr:
    """`…1234`: the only part of a card number the page shows."""
    return pl.concat_str(pl.lit("…"), last4.fill_null("????"))


def feed_table(feed: pl.DataFrame) -> pl.DataFrame:
    """The alert feed as shown: masked card, rules and reasons as text."""
    return feed.select(
        "decided_at",
        card=masked_card(pl.col("card_last4")),
        card_ref="card_ref",
        merchant="merchant_id",
        amount="amount",
        currency="currency",
        country="country",
        action="action",
        score="score",
        rules=pl.col("rules_fired").list.join(", "),
        reasons=pl.col("reasons").list.join("; "),
        transaction_id="transaction_id",
    )


def card_table(timeline: pl.DataFrame) -> pl.DataFrame:
    """A card's transactions as shown, newest first."""
    return timeline.reverse().select(
        "event_time",
        "transaction_id",
        card=masked_card(pl.col("card_last4")),
        merchant="merchant_id",
        amount="amount",
        currency="currency",
        country="country",
        score="score",
        model_score="model_score",
        action="action",
        rules=pl.col("rules_fired").list.join(", "),
        reasons=pl.col("reasons").list.join("; "),
    )


def map_points(points: pl.DataFrame) -> pl.DataFrame:
    """The flagged points with a colour per action, as `st.map` takes them."""
    colours = pl.col("action").replace_strict(ACTION_COLOURS, default="#7f7f7f")
    return points.with_columns(colour=colours)
