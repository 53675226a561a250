"""Rich tables more than one command shows."""

from __future__ import annotations

import polars as pl
from rich.table import Table


def scenario_table(report: pl.DataFrame, title: str) -> Table:
    """Recall per fraud scenario and overall precision (see `runners.replay.scenario_report`)."""
    table = Table(title=f"{title} (flag = review or decline)")
    for column in ("scenario", "fraud tx", "caught", "recall", "precision"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for row in report.iter_rows(named=True):
        precision = row["precision"]
        table.add_row(
            str(row["scenario"]),
            f"{row['fraud']:,}",
            f"{row['caught']:,}",
            f"{row['recall']:.1%}",
            "" if precision is None else f"{precision:.1%} of {row['flags']:,} flags",
        )
    return table
