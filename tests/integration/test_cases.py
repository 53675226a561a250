"""Analyst cases on the embedded PostgreSQL: opened by the sink with the flags, queued, assigned,
commented on and closed with verdicts that become labels, all audited and all-or-nothing.

Batches are scored by the real engine, then their `card_ref`, `score` or `action` are set where a
test needs cards or scores of its own (the sink stores what the frame says).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString

import polars as pl
import psycopg
import pytest
from psycopg import sql

from fraudstream.adapters.cases import (
    CaseError,
    CaseFilter,
    CaseStore,
    DenyCard,
    Verdict,
)
from fraudstream.adapters.labels import labelled_history, store_labels
from fraudstream.adapters.postgres import APPLICATION_NAME, PostgresSink, migrate
from fraudstream.adapters.postgres_schema import load_migrations
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.ports import ScoredBatch

DECIDED_AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def scored() -> pl.DataFrame:
    """3 000 transactions scored by the engine with the shipped rules (about 400 flagged)."""
    config = FeatureConfig()
    engine = Engine(
        compile_ruleset(parse_ruleset(load_default_ruleset_text()), available_columns(config))
    )
    stream = generate(GeneratorConfig(seed=5, n_transactions=3000))
    decisions = engine.process(stream.transactions, FeatureState(config))
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    return decisions.frame.with_columns(
        kafka_partition=(index % 3).cast(pl.Int32),
        kafka_offset=index,
        ingested_at=pl.col("timestamp") + timedelta(seconds=1),
        decided_at=pl.lit(DECIDED_AT, pl.Datetime("us", "UTC")),
    )


class Rows:
    """Hands out scored rows not used before in the test, on the card the test names."""

    def __init__(self, scored: pl.DataFrame) -> None:
        self._pools = {flag: scored.filter(pl.col("is_flagged") == flag) for flag in (True, False)}
        self._used = {True: 0, False: 0}

    def _take(self, flagged: bool, card: str | None, n: int) -> pl.DataFrame:
        start, self._used[flagged] = self._used[flagged], self._used[flagged] + n
        rows = self._pools[flagged].slice(start, n)
        assert rows.height == n, "the scored pool ran out of rows"
        return rows.with_columns(card_ref=pl.lit(card, pl.String))

    def flagged(
        self,
        card: str | None,
        n: int,
        *,
        scores: list[float] | None = None,
        actions: list[str] | None = None,
    ) -> pl.DataFrame:
        rows = self._take(True, card, n)
        if scores is not None:
            rows = rows.with_columns(score=pl.Series(scores, dtype=pl.Float64))
        if actions is not None:
            rows = rows.with_columns(action=pl.Series(actions, dtype=pl.String))
        return rows

    def approved(self, card: str | None, n: int) -> pl.DataFrame:
        return self._take(False, card, n)


@pytest.fixture
def rows(scored: pl.DataFrame) -> Rows:
    return Rows(scored)


@pytest.fixture
def url(database: str) -> str:
    assert migrate(database) == [migration.version for migration in load_migrations()]
    return database


@pytest.fixture
def store(url: str) -> CaseStore:
    return CaseStore(url)


def _write(url: str, *frames: pl.DataFrame) -> None:
    with PostgresSink(url) as sink:
        for frame in frames:
            sink.write(ScoredBatch(frame, ()))


def _query(url: str, query: LiteralString, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return connection.execute(query, params).fetchall()


def _cases(url: str) -> dict[str, list[tuple[int, str]]]:
    """card_ref -> its cases' (id, status), oldest first."""
    found: dict[str, list[tuple[int, str]]] = {}
    for case_id, card, status in _query(url, "SELECT id, card_ref, status FROM cases ORDER BY id"):
        found.setdefault(card, []).append((case_id, status))
    return found


def _members(url: str, case_id: int) -> set[str]:
    rows = _query(
        url, "SELECT transaction_id FROM case_transactions WHERE case_id = %s", (case_id,)
    )
    return {tid for (tid,) in rows}


def _count(url: str, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
    with psycopg.connect(url) as connection:
        row = connection.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _ids(frame: pl.DataFrame) -> set[str]:
    return set(frame.get_column("transaction_id").to_list())


def _audit(url: str) -> list[tuple[Any, ...]]:
    return _query(
        url,
        "SELECT actor, action, entity_type, entity_id, details FROM audit_log ORDER BY id",
    )


def _open_case(url: str, rows: Rows, card: str, n: int = 3, **kwargs: Any) -> tuple[int, set[str]]:
    """Write `n` flags of `card`; the case they opened and their ids."""
    flags = rows.flagged(card, n, **kwargs)
    _write(url, flags)
    [(case_id, status)] = _cases(url)[card]
    assert status == "open"
    return case_id, _ids(flags)


def _all(verdict: Verdict, ids: set[str]) -> dict[str, Verdict]:
    return dict.fromkeys(ids, verdict)


# --- the schema ---------------------------------------------------------------------------


def test_the_migration_comments_its_tables_and_allows_one_open_case_per_card(url: str) -> None:
    comments = _query(
        url,
        "SELECT relname, obj_description(oid, 'pg_class') FROM pg_class WHERE relname = ANY(%s)",
        (["cases", "case_transactions", "case_comments"],),
    )
    assert len(comments) == 3
    assert all(comment for _, comment in comments)
    with psycopg.connect(url, autocommit=True) as connection:
        insert = "INSERT INTO cases (card_ref, last_event_time, status) VALUES (%s, now(), %s)"
        connection.execute(insert, ("card-x", "open"))
        with pytest.raises(psycopg.errors.UniqueViolation):
            connection.execute(insert, ("card-x", "open"))
        with pytest.raises(psycopg.errors.CheckViolation):  # closed needs who, when and how
            connection.execute(insert, ("card-x", "closed"))


# --- the sink opens and extends cases -----------------------------------------------------


def test_flags_of_one_card_open_one_case_and_later_flags_join_it(
    url: str, rows: Rows, store: CaseStore
) -> None:
    first = pl.concat(
        [
            rows.flagged("card-a", 3, actions=["review", "decline", "review"]),
            rows.approved("card-a", 4),
        ]
    )
    _write(url, first)
    [(case_id, _)] = _cases(url)["card-a"]
    flagged_first = _ids(first.filter("is_flagged"))
    assert _members(url, case_id) == flagged_first  # the approved ones are not in the case

    earliest = first["timestamp"].min()
    assert isinstance(earliest, datetime)
    later = rows.flagged("card-a", 2, actions=["review", "review"]).with_columns(
        timestamp=pl.lit(earliest - timedelta(hours=1))  # arrived late: older events
    )
    _write(url, later)
    assert _cases(url) == {"card-a": [(case_id, "open")]}
    assert _members(url, case_id) == flagged_first | _ids(later)

    both = pl.concat([first.filter("is_flagged"), later])
    detail = store.case(case_id)
    assert detail is not None
    summary = detail.summary
    assert summary.transactions == 5
    assert summary.max_score == both["score"].max()
    assert summary.total_amount == pytest.approx(both["amount"].sum())
    assert summary.last_event_time == both["timestamp"].max()
    assert summary.highest_action == "decline"  # from the first batch, whatever came later
    assert (summary.status, summary.assignee, summary.closed_at) == ("open", None, None)
    assert [t.transaction_id for t in detail.transactions] == both.sort(
        "timestamp", "transaction_id"
    )["transaction_id"].to_list()
    first_row = both.sort("timestamp", "transaction_id").row(0, named=True)
    shown = detail.transactions[0]
    assert (shown.score, shown.action, shown.amount) == (
        first_row["score"],
        first_row["action"],
        first_row["amount"],
    )
    assert shown.rules_fired == first_row["rules_fired"]
    assert (shown.verdict, shown.labelled_by, shown.labelled_at) == (None, None, None)


def test_approved_transactions_and_flags_without_a_card_open_no_case(url: str, rows: Rows) -> None:
    _write(url, rows.approved("card-b", 20), rows.flagged(None, 3))
    assert _query(url, "SELECT count(*) FROM transactions WHERE is_flagged") == [(3,)]
    assert _cases(url) == {}
    assert _query(url, "SELECT count(*) FROM case_transactions") == [(0,)]


def test_what_counts_is_the_stored_decision_not_a_replay_scored_otherwise(
    url: str, rows: Rows
) -> None:
    approved = rows.approved("card-a", 2)
    _write(url, approved)
    rescored = approved.with_columns(is_flagged=pl.lit(True), action=pl.lit("review"))
    _write(url, rescored)  # the same transactions, flagged this time: stored as approved
    assert _cases(url) == {}
    new_flag = rows.flagged("card-a", 1)
    _write(url, pl.concat([rescored, new_flag]))
    [(case_id, _)] = _cases(url)["card-a"]
    assert _members(url, case_id) == _ids(new_flag)
    assert _query(url, "SELECT transactions FROM cases") == [(1,)]


def test_two_cards_get_a_case_each(url: str, rows: Rows) -> None:
    a, b = rows.flagged("card-a", 2), rows.flagged("card-b", 3)
    _write(url, pl.concat([a, b]))
    found = _cases(url)
    assert set(found) == {"card-a", "card-b"}
    [(case_a, _)], [(case_b, _)] = found["card-a"], found["card-b"]
    assert case_a != case_b
    assert _members(url, case_a) == _ids(a)
    assert _members(url, case_b) == _ids(b)


def test_a_whole_scored_stream_gives_one_case_per_flagged_card_with_its_aggregates(
    url: str, scored: pl.DataFrame
) -> None:
    _write(url, scored.slice(1500), scored.slice(0, 1500))  # later events first
    expected = (
        scored.filter(pl.col("is_flagged") & pl.col("card_ref").is_not_null())
        .group_by("card_ref")
        .agg(
            pl.len().cast(pl.Int64).alias("n"),
            pl.col("score").max(),
            (pl.col("action") == "decline").any().alias("declined"),
            pl.col("amount").sum(),
            pl.col("timestamp").max(),
        )
    )
    stored = _query(
        url,
        "SELECT card_ref, transactions, max_score, highest_action, total_amount, last_event_time"
        " FROM cases WHERE status = 'open'",
    )
    assert len(stored) == expected.height > 10
    by_card = {row["card_ref"]: row for row in expected.iter_rows(named=True)}
    for card, n, max_score, action, amount, last_event in stored:
        want = by_card[card]
        assert (n, max_score, last_event) == (want["n"], want["score"], want["timestamp"])
        assert action == ("decline" if want["declined"] else "review")
        assert amount == pytest.approx(want["amount"])


def test_a_replayed_or_overlapping_batch_attaches_nothing_twice(url: str, rows: Rows) -> None:
    first = pl.concat([rows.flagged("card-a", 3), rows.flagged("card-b", 2), rows.approved("x", 5)])
    _write(url, first)
    _write(url, first)  # the same batch again: the merge path
    overlapping = pl.concat([first.head(4), rows.flagged("card-a", 2)])
    _write(url, overlapping)
    found = _cases(url)
    assert set(found) == {"card-a", "card-b"}
    [(case_a, _)], [(case_b, _)] = found["card-a"], found["card-b"]
    in_a = _ids(first.filter(card_ref="card-a")) | _ids(overlapping.tail(2))
    assert _members(url, case_a) == in_a
    assert _members(url, case_b) == _ids(first.filter(card_ref="card-b"))
    assert _query(url, "SELECT count(*) FROM case_transactions") == [(7,)]
    counts = _query(url, "SELECT card_ref, transactions FROM cases ORDER BY card_ref")
    assert counts == [("card-a", 5), ("card-b", 2)]


def test_concurrent_sinks_flagging_the_same_cards_share_one_case_per_card(
    url: str, rows: Rows
) -> None:
    cards = [f"card-{i:02d}" for i in range(20)]
    orders = [cards, cards[::-1]] * 2
    batches = [pl.concat([rows.flagged(card, 1) for card in order]) for order in orders]
    start = threading.Barrier(len(batches))

    def write(frame: pl.DataFrame) -> None:
        with PostgresSink(url) as sink:
            start.wait()
            sink.write(ScoredBatch(frame, ()))

    with ThreadPoolExecutor(len(batches)) as pool:
        for future in [pool.submit(write, batch) for batch in batches]:
            future.result()
    found = _cases(url)
    assert sorted(found) == cards
    assert all(len(cases) == 1 for cases in found.values())
    assert _query(url, "SELECT count(*) FROM case_transactions") == [(80,)]
    assert _query(url, "SELECT DISTINCT transactions FROM cases") == [(4,)]


def test_a_flag_waiting_on_a_case_being_closed_opens_a_new_case(url: str, rows: Rows) -> None:
    case_id, first = _open_case(url, rows, "card-a", 2)
    late = rows.flagged("card-a", 1)
    with psycopg.connect(url) as closer:  # a close in progress: the case row locked
        closer.execute("SELECT id FROM cases WHERE id = %s FOR UPDATE", (case_id,))
        writer = threading.Thread(target=_write, args=(url, late))
        writer.start()
        _wait_for_lock_wait(url)
        closer.execute(
            "UPDATE cases SET status = 'closed', closed_at = now(), closed_by = 'someone',"
            " resolution = 'fraud' WHERE id = %s",
            (case_id,),
        )
        closer.commit()
        writer.join(30)
    assert not writer.is_alive()
    [(old, closed), (new, still_open)] = _cases(url)["card-a"]
    assert (closed, still_open) == ("closed", "open")
    assert old == case_id
    assert _members(url, case_id) == first
    assert _members(url, new) == _ids(late)


def _wait_for_lock_wait(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        waiting = _query(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND wait_event_type = 'Lock'",
            (APPLICATION_NAME,),
        )
        if waiting == [(1,)]:
            return
        time.sleep(0.05)
    raise AssertionError("the sink never waited for the case's lock")


# --- closing --------------------------------------------------------------------------------


def test_closing_writes_labels_with_who_and_which_case_and_audits(
    url: str, rows: Rows, store: CaseStore
) -> None:
    case_id, ids = _open_case(url, rows, "card-a", 3)
    _write(url, rows.flagged("card-z", 1))  # another card's case stays as it is
    fraud, *legit = sorted(ids)
    verdicts: dict[str, Verdict] = {fraud: "fraud", **_all("legitimate", set(legit))}
    detail = store.close("alice", case_id, verdicts, comment="  called the cardholder  ")

    labels = _query(
        url,
        "SELECT transaction_id, is_fraud, source, labelled_by, case_id, labelled_at IS NOT NULL"
        " FROM labels ORDER BY transaction_id",
    )
    assert labels == [(tid, tid == fraud, "case", "alice", case_id, True) for tid in sorted(ids)]
    summary = detail.summary
    assert (summary.status, summary.resolution, summary.closed_by) == ("closed", "mixed", "alice")
    assert summary.closed_at is not None
    assert {t.transaction_id: t.verdict for t in detail.transactions} == verdicts
    assert {t.labelled_by for t in detail.transactions} == {"alice"}
    assert [(c.author, c.body) for c in detail.comments] == [("alice", "called the cardholder")]
    [(actor, action, entity_type, entity_id, details)] = _audit(url)
    assert (actor, action, entity_type, entity_id) == ("alice", "case_close", "case", str(case_id))
    assert details["resolution"] == "mixed"
    assert details["verdicts"] == verdicts
    assert details["comment_id"] == detail.comments[0].id
    other = _query(url, "SELECT status FROM cases WHERE card_ref = 'card-z'")
    assert other == [("open",)]
    assert _query(url, "SELECT count(*) FROM list_entries") == [(0,)]  # none asked for


@pytest.mark.parametrize(
    ("verdict", "resolution"), [("fraud", "fraud"), ("legitimate", "legitimate")]
)
def test_a_unanimous_verdict_is_the_resolution(
    url: str, rows: Rows, store: CaseStore, verdict: Verdict, resolution: str
) -> None:
    case_id, ids = _open_case(url, rows, "card-a", 2)
    closed = store.close("bob", case_id, _all(verdict, ids))
    assert closed.summary.resolution == resolution
    fraud = _query(url, "SELECT DISTINCT is_fraud FROM labels")
    assert fraud == [(verdict == "fraud",)]


def test_closing_with_deny_card_lists_the_card_in_the_same_transaction(
    url: str, rows: Rows, store: CaseStore
) -> None:
    case_id, ids = _open_case(url, rows, "card-a", 2)
    [(revision,)] = _query(url, "SELECT revision FROM revisions WHERE name = 'lists'")
    expires = datetime.now(UTC) + timedelta(days=90)
    store.close("alice", case_id, _all("fraud", ids), deny_card=DenyCard("stolen card", expires))

    entries = _query(
        url, "SELECT list, entity, value, reason, expires_at, created_by FROM list_entries"
    )
    assert entries == [("deny", "card", "card-a", "stolen card", expires, "alice")]
    assert _query(url, "SELECT revision FROM revisions WHERE name = 'lists'") == [(revision + 1,)]
    actions = [(actor, action, entity_type) for actor, action, entity_type, _, _ in _audit(url)]
    assert actions == [("alice", "list_add", "list_entry"), ("alice", "case_close", "case")]
    [(entry_id,)] = _query(url, "SELECT id FROM list_entries")
    assert _audit(url)[-1][4]["deny_list_entry"] == entry_id


def test_a_refused_deny_card_leaves_the_case_open_and_no_label(
    url: str, rows: Rows, store: CaseStore
) -> None:
    case_id, ids = _open_case(url, rows, "card-a", 2)
    past = datetime.now(UTC) - timedelta(days=1)
    for deny in (DenyCard("   "), DenyCard("stolen", past), DenyCard("bad\x00reason")):
        with pytest.raises(CaseError) as raised:
            store.close("alice", case_id, _all("fraud", ids), comment="fraud", deny_card=deny)
        assert (raised.value.kind, raised.value.field) == ("invalid", "deny_card")
    assert _query(url, "SELECT status, resolution, closed_by FROM cases") == [("open", None, None)]
    for table in ("labels", "list_entries", "audit_log", "case_comments"):
        assert _count(url, table) == 0, table
    assert _query(url, "SELECT revision FROM revisions WHERE name = 'lists'") == [(0,)]


def test_verdicts_must_name_exactly_the_case_transactions(
    url: str, rows: Rows, store: CaseStore
) -> None:
    case_id, ids = _open_case(url, rows, "card-a", 2)
    seen = store.case(case_id)
    assert seen is not None
    looked_at = {t.transaction_id for t in seen.transactions}
    joined = rows.flagged("card-a", 1)  # a flag joins after the analyst looked
    _write(url, joined)
    with pytest.raises(CaseError) as raised:
        store.close("alice", case_id, _all("fraud", looked_at))
    assert raised.value.kind == "conflict"
    assert raised.value.missing == tuple(sorted(_ids(joined)))

    everything = _all("fraud", ids | _ids(joined))
    other = rows.flagged("card-b", 1)
    _write(url, other)
    bad: list[dict[str, Any]] = [
        {**everything, **_all("fraud", _ids(other))},  # another case's transaction
        {**everything, "no-such-transaction": "fraud"},
        {**everything, sorted(ids)[0]: "maybe"},
    ]
    for verdicts in bad:
        with pytest.raises(CaseError) as invalid:
            store.close("alice", case_id, verdicts)
        assert (invalid.value.kind, invalid.value.field) == ("invalid", "verdicts")
    assert _query(url, "SELECT count(*) FROM labels") == [(0,)]
    assert store.close("alice", case_id, everything).summary.transactions == 3


def test_closing_twice_is_a_conflict_and_a_later_flag_opens_a_new_case(
    url: str, rows: Rows, store: CaseStore
) -> None:
    case_id, ids = _open_case(url, rows, "card-a", 2)
    store.close("alice", case_id, _all("legitimate", ids))
    with pytest.raises(CaseError) as raised:
        store.close("bob", case_id, _all("fraud", ids))
    assert raised.value.kind == "conflict"
    assert _query(url, "SELECT DISTINCT labelled_by, is_fraud FROM labels") == [("alice", False)]
    with pytest.raises(CaseError) as assigning:
        store.assign("bob", case_id, "bob")
    assert assigning.value.kind == "conflict"

    later = rows.flagged("card-a", 1)
    _write(url, later)
    [(old, closed), (new, still_open)] = _cases(url)["card-a"]
    assert (closed, still_open) == ("closed", "open")
    assert old == case_id
    assert _members(url, old) == ids
    assert _members(url, new) == _ids(later)
    assert _query(url, "SELECT transactions FROM cases WHERE id = %s", (old,)) == [(2,)]


def test_labels_from_other_sources_still_load_beside_case_verdicts(
    url: str, rows: Rows, store: CaseStore
) -> None:
    case_id, ids = _open_case(url, rows, "card-a", 1)
    store.close("alice", case_id, _all("fraud", ids))
    other = rows.approved("card-b", 2)
    _write(url, other)
    chargebacks = pl.DataFrame({"transaction_id": sorted(_ids(other)), "is_fraud": [True, False]})
    assert store_labels(url, chargebacks, "chargeback") == 2
    stored = _query(
        url, "SELECT transaction_id, is_fraud, source, labelled_by, case_id FROM labels"
    )
    assert sorted(stored) == sorted(
        [(tid, True, "case", "alice", case_id) for tid in ids]
        + [(tid, fraud, "chargeback", None, None) for tid, fraud in chargebacks.iter_rows()]
    )
    _, history = labelled_history(url)
    assert history.filter(pl.col("is_fraud")).height == 2


def test_changes_to_a_missing_case_are_not_found(store: CaseStore) -> None:
    assert store.case(12345) is None
    for change in (
        lambda: store.assign("alice", 12345, "alice"),
        lambda: store.comment("alice", 12345, "hello"),
        lambda: store.close("alice", 12345, {}),
        lambda: store.close("alice", 2**70, {}),
    ):
        with pytest.raises(CaseError) as raised:
            change()
        assert raised.value.kind == "not_found"


# --- assigning and commenting ---------------------------------------------------------------


def test_assign_and_comment_are_audited_and_validated(
    url: str, rows: Rows, store: CaseStore
) -> None:
    case_id, _ = _open_case(url, rows, "card-a")
    assert store.assign("lead", case_id, "  alice  ").assignee == "alice"
    assert store.assign("lead", case_id, None).assignee is None
    comment = store.comment("alice", case_id, " looks like a test charge ")
    assert comment.body == "looks like a test charge"
    assert _audit(url) == [
        ("lead", "case_assign", "case", str(case_id), {"assignee": "alice", "previous": None}),
        ("lead", "case_assign", "case", str(case_id), {"assignee": None, "previous": "alice"}),
        ("alice", "case_comment", "case", str(case_id), {"comment_id": comment.id,
                                                          "body": "looks like a test charge"}),
    ]  # fmt: skip
    detail = store.case(case_id)
    assert detail is not None
    assert detail.comments == [comment]

    refused: list[tuple[Callable[[], object], str]] = [
        (lambda: store.comment("alice", case_id, "  \n "), "body"),
        (lambda: store.comment("alice", case_id, "nul\x00here"), "body"),
        (lambda: store.assign("lead", case_id, "x" * 129), "assignee"),
        (lambda: store.assign("lead", case_id, "a\x00b"), "assignee"),
        (lambda: store.assign("lead", case_id, "   "), "assignee"),
    ]
    for change, field in refused:
        with pytest.raises(CaseError) as raised:
            change()
        assert (raised.value.kind, raised.value.field) == ("invalid", field)
    assert len(_audit(url)) == 3
    assert store.assign("lead", case_id, "y" * 128).assignee == "y" * 128


# --- the queue ------------------------------------------------------------------------------


@pytest.fixture
def queue(url: str, rows: Rows, store: CaseStore) -> dict[str, int]:
    """Four cases: high (alice), middle (bob, closed), low (unassigned), mid-low (bob)."""
    high = rows.flagged("card-high", 2, scores=[0.95, 0.7])
    middle = rows.flagged("card-middle", 1, scores=[0.6])
    low = rows.flagged("card-low", 2, scores=[0.3, 0.2])
    mid_low = rows.flagged("card-mid-low", 1, scores=[0.45])
    for frame in (high, middle, low, mid_low):
        _write(url, frame)
    ids = {card: cases[0][0] for card, cases in _cases(url).items()}
    store.assign("lead", ids["card-high"], "alice")
    store.assign("lead", ids["card-middle"], "bob")
    store.assign("lead", ids["card-mid-low"], "bob")
    store.close("bob", ids["card-middle"], _all("fraud", _ids(middle)))
    return ids


def _queued(store: CaseStore, **wanted: Any) -> list[str]:
    return [case.card_ref for case in store.cases(CaseFilter(**wanted))]


def test_the_queue_filters_and_orders_as_asked(store: CaseStore, queue: dict[str, int]) -> None:
    assert _queued(store) == ["card-high", "card-mid-low", "card-low"]  # open, by score
    assert _queued(store, status="closed") == ["card-middle"]
    newest_first = sorted(queue, key=queue.__getitem__, reverse=True)
    assert _queued(store, status=None) == newest_first
    assert _queued(store, assignee="alice") == ["card-high"]
    assert _queued(store, assignee="bob") == ["card-mid-low"]
    assert _queued(store, assignee="bob", status=None) == ["card-mid-low", "card-middle"]
    assert _queued(store, assignee="") == ["card-low"]
    assert _queued(store, assignee="  ") == ["card-low"]
    assert _queued(store, assignee=" alice ") == ["card-high"]
    assert _queued(store, min_score=0.45) == ["card-high", "card-mid-low"]
    assert _queued(store, min_score=0.5, status=None) == ["card-middle", "card-high"]
    assert _queued(store, card_ref="card-middle") == []  # closed, and the default is open
    assert _queued(store, card_ref="card-middle", status=None) == ["card-middle"]
    assert _queued(store, limit=2) == ["card-high", "card-mid-low"]
    [high] = store.cases(CaseFilter(card_ref="card-high"))
    assert (high.max_score, high.transactions, high.assignee) == (0.95, 2, "alice")


def test_a_wrong_filter_names_its_field(store: CaseStore) -> None:
    wrong: list[tuple[CaseFilter, str]] = [
        (CaseFilter(limit=0), "limit"),
        (CaseFilter(limit=100_000), "limit"),
        (CaseFilter(min_score=float("nan")), "min_score"),
        (CaseFilter(status="pending"), "status"),  # type: ignore[arg-type]
    ]
    for wanted, field in wrong:
        with pytest.raises(CaseError) as raised:
            store.cases(wanted)
        assert (raised.value.kind, raised.value.field) == ("invalid", field)
