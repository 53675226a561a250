"""The dashboard served for real and loaded in headless Chromium: the numbers a person sees in
the browser equal independent SQL, a card typed into the drill-down shows its transactions, and
a screenshot of the rendered page is kept as a test artifact (`test-artifacts/dashboard.png`).

Never skipped: without `/usr/bin/chromium` the test fails and says which package to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from dashboard_data import expected_kpis, newest_alerts, populated_database
from playwright.sync_api import Locator, Page, sync_playwright
from report_data import sql_rows

from fraudstream.cli_dashboard import dashboard_url, start_dashboard, stop_dashboard, wait_healthy
from fraudstream.config import load_settings
from fraudstream.stack import Endpoints
from fraudstream.stack.process import free_port

CHROMIUM: Final = Path("/usr/bin/chromium")
FLAGS: Final = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
SCREENSHOT: Final = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard.png"
WAIT_MS: Final = 30_000
FEED_ROWS: Final = 10


@pytest.fixture(scope="module")
def populated(endpoints: Endpoints) -> Iterator[str]:
    yield from populated_database(endpoints)


@pytest.fixture
def served(populated: str, tmp_path: Path) -> Iterator[str]:
    """The dashboard as `fraudstream run` starts it, on a free port; its URL."""
    settings = load_settings(postgres={"url": populated}, stack={"data_dir": tmp_path})
    port = free_port()
    log = tmp_path / "dashboard.log"
    process = start_dashboard(settings, port, log)
    url = dashboard_url("127.0.0.1", port)
    try:
        assert wait_healthy(process, url, 60), log.read_text()
        yield url
    finally:
        assert stop_dashboard(process) == 0, log.read_text()


def test_the_page_in_chromium_shows_the_kpis_and_alert_feed_sql_gives(
    served: str, populated: str, tmp_path: Path
) -> None:
    assert CHROMIUM.exists(), (
        "no /usr/bin/chromium: install the Debian package `chromium` "
        "(`apt-get install chromium`; `python dev.py test` does it when run as root)"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile", executable_path=CHROMIUM, headless=True,
            args=FLAGS, viewport={"width": 1600, "height": 3800},
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.set_default_timeout(WAIT_MS)
            page.goto(served)
            page.locator('[data-testid="stMetricValue"]').nth(8).wait_for()
            shown, feed = _metrics(page), _feed(page)
            card = feed[0][1]
            card_line = _drill_into(page, card)
            page.locator('[data-testid="stDeckGlJsonChart"] canvas').first.wait_for()
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=SCREENSHOT, full_page=True)
            print(f"dashboard screenshot: {SCREENSHOT}")
        finally:
            browser.close()
    assert shown == expected_kpis(populated)
    newest = newest_alerts(populated, FEED_ROWS)
    assert feed[:FEED_ROWS] == [
        (f"…{last4}", card_ref, action, "; ".join(reasons))
        for _, last4, action, reasons, card_ref in newest
    ]
    (transactions, flagged), *_ = sql_rows(
        populated,
        "SELECT count(*), count(*) FILTER (WHERE is_flagged) FROM transactions"
        " WHERE card_ref = %(card)s",
        card=card,
    )
    assert f"{transactions:,} transactions shown, {flagged:,} flagged" in card_line
    assert SCREENSHOT.stat().st_size > 50_000


def _metrics(page: Page) -> dict[str, str]:
    metrics = page.locator('[data-testid="stMetric"]')
    return {
        _text(metric.locator('[data-testid="stMetricLabel"]')): _text(
            metric.locator('[data-testid="stMetricValue"]')
        )
        for metric in metrics.all()
    }


def _feed(page: Page) -> list[tuple[str, str, str, str]]:
    """(card, card ref, action, reasons) of the alert feed's rows the grid has drawn, read
    from the grid's accessibility table (the cells themselves are painted on a canvas)."""
    grid = page.locator('[data-testid="stDataFrame"]').first
    grid.locator(f'[data-testid="glide-cell-1-{FEED_ROWS - 1}"]').wait_for(state="attached")
    headers = [_text(cell) for cell in grid.locator("thead th").all()]
    wanted = [headers.index(name) for name in ("card", "card_ref", "action", "reasons")]
    rows = []
    for row in grid.locator("tbody tr").all():
        cells = [_text(cell) for cell in row.locator("td").all()]
        card, card_ref, action, reasons = (cells[index] for index in wanted)
        rows.append((card, card_ref, action, reasons))
    return rows


def _drill_into(page: Page, card: str) -> str:
    """Type `card` into the drill-down as a person would; the line that sums it up."""
    box = page.get_by_label("…or any card ref")
    box.fill(card)
    box.press("Enter")
    summary = page.get_by_text("transactions shown")
    summary.wait_for()
    page.locator('[data-testid="stPlotlyChart"]').nth(2).locator(".main-svg").first.wait_for()
    return _text(summary)


def _text(locator: Locator) -> str:
    return (locator.text_content() or "").strip()
