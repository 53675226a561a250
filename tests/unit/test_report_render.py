"""Report output that leaves this process: CSV cells a spreadsheet would run are defused."""

from __future__ import annotations

import polars as pl

from fraudstream.reports.render import spreadsheet_safe


def test_text_that_a_spreadsheet_would_run_becomes_plain_text() -> None:
    frame = pl.DataFrame(
        {
            "merchant_id": ['=HYPERLINK("x")', "shop", "+1", "-2", "@sum", None],
            "flagged": [-1, 2, 3, 4, 5, 6],
        }
    )
    safe = spreadsheet_safe(frame)
    assert safe.get_column("merchant_id").to_list() == [
        "'=HYPERLINK(\"x\")", "shop", "'+1", "'-2", "'@sum", None,
    ]  # fmt: skip
    assert safe.get_column("flagged").to_list() == [-1, 2, 3, 4, 5, 6], "numbers stay numbers"
