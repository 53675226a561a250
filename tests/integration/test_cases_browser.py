"""The analysts' Cases page served for real and worked in headless Chromium, as an analyst would:
a case opened by the real sink for a card's flagged transactions is opened on the page, a change
without a name is refused, a comment is added, a transaction that joins the case while the
analyst decides makes the first Close a conflict naming it, and the second Close (a verdict for
each, the card onto the deny list) lands in `labels`, `audit_log`, `cases`, `case_comments` and
`list_entries` as SQL reads them. A screenshot is kept (`test-artifacts/cases.png`).

Never skipped: without `/usr/bin/chromium` the test fails and says which package to install.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import polars as pl
import pytest
from playwright.sync_api import Page, expect, sync_playwright
from report_data import sql_rows, sql_value
from test_dashboard_browser import CHROMIUM, FLAGS

from fraudstream.adapters.postgres import PostgresSink
from fraudstream.adapters.postgres_schema import migrate
from fraudstream.cli_dashboard import dashboard_url, start_dashboard, stop_dashboard, wait_healthy
from fraudstream.config import load_settings
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.ports import ScoredBatch
from fraudstream.stack.process import free_port

SCREENSHOT: Final = Path(__file__).resolve().parents[2] / "test-artifacts" / "cases.png"
WAIT_MS: Final = 30_000
ANALYST: Final = "Ada Lovelace"
ACTOR: Final = f"dashboard:{ANALYST}"
COMMENT: Final = "Three payments at three merchants within two minutes: card testing?"
DENY_REASON: Final = "confirmed card testing"


@dataclass(frozen=True)
class Flagged:
    """The scored transactions of the test: `card`'s first two flagged ones (its case), its
    third (joining the case later), another card's flagged one and a few unflagged ones."""

    frame: pl.DataFrame
    card: str
    first: str
    second: str
    late: str


def _scored() -> pl.DataFrame:
    """1 000 generated transactions scored with the shipped rules, as a worker stores them."""
    config = FeatureConfig()
    engine = Engine(
        compile_ruleset(parse_ruleset(load_default_ruleset_text()), available_columns(config))
    )
    stream = generate(GeneratorConfig(seed=3, n_transactions=1000))
    frame = engine.process(stream.transactions, FeatureState(config)).frame
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    decided = datetime.now(UTC) - timedelta(minutes=5)
    return frame.with_columns(
        kafka_partition=pl.lit(0, pl.Int32), kafka_offset=index,
        ingested_at=pl.col("timestamp"), decided_at=pl.lit(decided, pl.Datetime("us", "UTC")),
    )  # fmt: skip


def _flagged() -> Flagged:
    frame = _scored()
    flagged = frame.filter("is_flagged").sort("timestamp", "transaction_id")
    counts = flagged.group_by("card_ref").len().filter(pl.col("len") >= 3).sort("card_ref")
    card = counts.get_column("card_ref")[0]
    first, second, late = flagged.filter(pl.col("card_ref") == card)["transaction_id"][:3]
    other = flagged.filter(pl.col("card_ref") != card)["transaction_id"][0]
    calm = frame.filter(~pl.col("is_flagged"))["transaction_id"][:5].to_list()
    wanted = [first, second, late, other, *calm]
    return Flagged(frame.filter(pl.col("transaction_id").is_in(wanted)), card, first, second, late)


def _store(url: str, frame: pl.DataFrame) -> None:
    with PostgresSink(url) as sink:
        sink.write(ScoredBatch(frame, ()))


@pytest.fixture
def flagged(database: str) -> Flagged:
    """The migrated database with the first batch stored: every transaction but the late one."""
    migrate(database)
    data = _flagged()
    _store(database, data.frame.filter(pl.col("transaction_id") != data.late))
    return data


@contextmanager
def _serving(url: str, tmp_path: Path) -> Iterator[str]:
    """The dashboard as `fraudstream run` starts it, reading `url`, on a free port; its URL."""
    settings = load_settings(postgres={"url": url}, stack={"data_dir": tmp_path})
    port = free_port()
    log = tmp_path / "dashboard.log"
    process = start_dashboard(settings, port, log)
    served = dashboard_url("127.0.0.1", port)
    try:
        assert wait_healthy(process, served, 60), log.read_text()
        yield served
    finally:
        assert stop_dashboard(process) == 0, log.read_text()


@contextmanager
def _chromium(tmp_path: Path) -> Iterator[Page]:
    assert CHROMIUM.exists(), (
        "no /usr/bin/chromium: install the Debian package `chromium` "
        "(`apt-get install chromium`; `python dev.py test` does it when run as root)"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile", executable_path=CHROMIUM, headless=True,
            args=FLAGS, viewport={"width": 1600, "height": 2400},
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.set_default_timeout(WAIT_MS)
            expect.set_options(timeout=WAIT_MS)
            yield page
        finally:
            browser.close()


@pytest.fixture
def served(flagged: Flagged, database: str, tmp_path: Path) -> Iterator[str]:
    with _serving(database, tmp_path) as url:
        yield url


def test_an_analyst_works_a_case_in_chromium_and_sql_has_every_change(
    served: str, flagged: Flagged, database: str, tmp_path: Path
) -> None:
    case_id = sql_value(
        database, "SELECT id FROM cases WHERE card_ref = %(card)s AND status = 'open'",
        card=flagged.card,
    )  # fmt: skip
    assert sql_value(database, "SELECT count(*) FROM cases") == 2
    with _chromium(tmp_path) as page:
        page.goto(f"{served}/cases")
        _open_case(page, _queue(database), case_id, flagged.card)
        _comment_needs_a_name_then_lands(page, case_id)
        _store(database, flagged.frame.filter(pl.col("transaction_id") == flagged.late))
        _close_meets_the_late_transaction(page, flagged)
        _close(page, flagged, case_id)
        page.get_by_role("heading", name="Cases", exact=True).scroll_into_view_if_needed()
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=SCREENSHOT, full_page=True)
        print(f"cases screenshot: {SCREENSHOT}")
    _assert_stored(database, flagged, case_id)
    assert SCREENSHOT.stat().st_size > 30_000


def test_an_unreachable_database_gets_an_error_box_not_a_traceback(tmp_path: Path) -> None:
    url = f"postgresql://fraud:s3cret-pw@127.0.0.1:{free_port()}/fraud"
    with _serving(url, tmp_path) as served, _chromium(tmp_path) as page:
        page.goto(f"{served}/cases")
        error = page.get_by_test_id("stAlertContentError")
        expect(error).to_contain_text("Cannot read the database")
        expect(error).to_contain_text("127.0.0.1")
        text = error.text_content() or ""
        assert page.get_by_test_id("stException").count() == 0
    assert "s3cret-pw" not in text


def _queue(url: str) -> list[str]:
    """The open cases as the queue should offer them: the highest score first."""
    rows = sql_rows(
        url,
        "SELECT id, card_ref, max_score, transactions FROM cases WHERE status = 'open'"
        " ORDER BY max_score DESC, id",
    )
    return [f"#{id_} · {card} · score {score:.3f} · {n} transactions · open"
            for id_, card, score, n in rows]  # fmt: skip


def _open_case(page: Page, queue: list[str], case_id: int, card: str) -> None:
    """Choose the case in "Open a case" (its options are the queue's) and see it open."""
    expect(page.get_by_role("heading", name="Cases")).to_be_visible()
    page.get_by_test_id("stSelectbox").filter(has_text="Open a case").click()
    options = page.get_by_role("option")
    expect(options).to_have_text(queue)
    options.filter(has_text=re.compile(rf"^#{case_id} · {card} ")).click()
    expect(page.get_by_role("heading", name=f"Case #{case_id}")).to_be_visible()
    expect(page.get_by_text(f"Card {card} · open")).to_be_visible()


def _comment_needs_a_name_then_lands(page: Page, case_id: int) -> None:
    """Without a name the comment is refused (and kept in its box); with one it is added."""
    page.get_by_role("textbox", name="Add a comment").fill(COMMENT)
    page.get_by_role("button", name="Add comment").click()
    expect(page.get_by_text("Type your name in the sidebar")).to_be_visible()
    expect(page.get_by_role("textbox", name="Add a comment")).to_have_value(COMMENT)
    name = page.get_by_role("textbox", name="Your name", exact=True)
    name.fill(ANALYST)
    name.press("Enter")
    expect(page.get_by_text(f"Your changes are recorded as {ACTOR}.")).to_be_visible()
    page.get_by_role("button", name="Add comment").click()
    expect(page.get_by_text(f"Comment added to case #{case_id}.")).to_be_visible()
    expect(page.get_by_test_id("stText").filter(has_text=COMMENT)).to_be_visible()
    expect(page.get_by_role("textbox", name="Add a comment")).to_have_value("")


def _verdict(page: Page, transaction_id: str, verdict: str) -> None:
    group = page.get_by_test_id("stRadio").filter(has_text=transaction_id)
    group.get_by_text(verdict, exact=True).click()
    expect(group.get_by_role("radio", name=verdict, exact=True)).to_be_checked()


def _close_meets_the_late_transaction(page: Page, flagged: Flagged) -> None:
    """Verdicts for the two transactions shown, the card to the deny list, Close: refused, as
    a third transaction joined the case meanwhile; the page names it and shows it."""
    _verdict(page, flagged.first, "fraud")
    _verdict(page, flagged.second, "legitimate")
    page.get_by_text("Put the card on the deny list").click()
    page.get_by_role("textbox", name="Deny-list reason").fill(DENY_REASON)
    page.get_by_role("button", name="Close case").click()
    expect(page.get_by_text(re.compile(r"Not closed: transaction has joined"))).to_contain_text(
        flagged.late
    )
    expect(page.get_by_test_id("stRadio").filter(has_text=flagged.late)).to_be_visible()


def _close(page: Page, flagged: Flagged, case_id: int) -> None:
    _verdict(page, flagged.late, "legitimate")
    page.get_by_role("button", name="Close case").click()
    success = f"Case #{case_id} closed as mixed: 1 fraud, 2 legitimate."
    expect(page.get_by_text(success)).to_contain_text(f"Card {flagged.card} is on the deny list.")
    expect(page.get_by_text(f"Card {flagged.card} · closed as mixed by {ACTOR}")).to_be_visible()
    expect(page.get_by_role("heading", name="Close the case")).to_have_count(0)  # run finished


def _assert_stored(url: str, flagged: Flagged, case_id: int) -> None:
    labels = sql_rows(
        url,
        "SELECT transaction_id, is_fraud, labelled_by, case_id, source FROM labels"
        " ORDER BY transaction_id",
    )
    assert labels == sorted([
        (flagged.first, True, ACTOR, case_id, "case"),
        (flagged.second, False, ACTOR, case_id, "case"),
        (flagged.late, False, ACTOR, case_id, "case"),
    ])  # fmt: skip
    case = sql_rows(
        url, "SELECT status, resolution, closed_by, transactions FROM cases WHERE id = %(id)s",
        id=case_id,
    )  # fmt: skip
    assert case == [("closed", "mixed", ACTOR, 3)]
    audit = sql_rows(
        url,
        "SELECT action, details ->> 'resolution' FROM audit_log WHERE actor = %(actor)s"
        " AND entity_type = 'case' AND entity_id = %(id)s ORDER BY id",
        actor=ACTOR, id=str(case_id),
    )  # fmt: skip
    assert audit == [("case_comment", None), ("case_close", "mixed")]
    comments = sql_rows(url, "SELECT case_id, author, body FROM case_comments ORDER BY id")
    assert comments == [(case_id, ACTOR, COMMENT)]
    denied = sql_rows(
        url,
        "SELECT value, reason, created_by, expires_at FROM list_entries"
        " WHERE list = 'deny' AND entity = 'card' AND removed_at IS NULL",
    )
    assert denied == [(flagged.card, DENY_REASON, ACTOR, None)]


def test_a_database_without_the_case_tables_gets_help(database: str, tmp_path: Path) -> None:
    with _serving(database, tmp_path) as served, _chromium(tmp_path) as page:
        page.goto(f"{served}/cases")
        expect(page.get_by_test_id("stAlertContentInfo")).to_contain_text("No cases yet")
        expect(page.get_by_role("combobox", name="Open a case")).to_have_count(0)
        assert page.get_by_test_id("stException").count() == 0
