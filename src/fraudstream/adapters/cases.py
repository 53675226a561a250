"""Cases: the analyst's unit of review, in PostgreSQL (`cases`, `case_transactions`,
`case_comments`), and the verdicts that become `labels`.

A flagged transaction opens a case for its card, or joins the card's open case: at most one case
per card is open (a partial unique index says so). The PostgreSQL sink does this in the same
database transaction as the decision (`attach_flagged`), so a stored flag always has its case,
and a replayed batch attaches nothing twice. Analysts list and filter cases, assign them,
comment, and close them with a verdict (fraud / legitimate) for every transaction in the case;
closing writes the verdicts to `labels` (who, when, which case), can put the card on the deny
list, and is audited, all in one database transaction. A later flag on the card opens a new case.

Locking: every change to a case first locks its row (`SELECT ... FOR UPDATE`), and the sink
locks the card's open case (`INSERT ... ON CONFLICT DO UPDATE`) before attaching to it, so a
case cannot gain a transaction while it is being closed: the flag waits, then finds the case
closed and opens a new one.

A case stores its aggregates (count, max score, highest action, amount, last event time), kept
up by the sink as transactions join, so the queue is an index scan rather than a join.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, get_args

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow, class_row

from fraudstream.adapters.api_keys import audit
from fraudstream.adapters.lists import ListError, add_entry
from fraudstream.core.errors import FraudstreamError

_Connection = psycopg.Connection[TupleRow]
_Cursor = psycopg.Cursor[TupleRow]

CaseStatus = Literal["open", "closed"]
Verdict = Literal["fraud", "legitimate"]


class CaseError(FraudstreamError):
    """A case change that cannot be made. `kind` says how the API answers it: `invalid` (422,
    `field` names the culprit), `not_found` (404) or `conflict` (409: the case is closed, or
    transactions joined it since the analyst looked, and `missing` lists them)."""

    def __init__(
        self,
        message: str,
        kind: Literal["invalid", "not_found", "conflict"] = "invalid",
        field: str | None = None,
        missing: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field
        self.missing = missing


@dataclass(frozen=True, slots=True)
class CaseSummary:
    """One row of the queue."""

    id: int
    card_ref: str
    status: CaseStatus
    assignee: str | None
    transactions: int
    max_score: float
    highest_action: str
    total_amount: float
    """The sum of the stored amounts, whatever their currencies."""
    opened_at: datetime
    updated_at: datetime
    last_event_time: datetime
    closed_at: datetime | None
    closed_by: str | None
    resolution: str | None
    """`fraud`, `legitimate` or `mixed` once closed."""


@dataclass(frozen=True, slots=True)
class CaseTransaction:
    """A transaction of a case, with its stored decision and its verdict once given."""

    transaction_id: str
    event_time: datetime
    amount: float
    currency: str | None
    merchant_id: str | None
    country: str | None
    score: float
    action: str
    rules_fired: list[str]
    reasons: list[str]
    verdict: Verdict | None
    labelled_by: str | None
    labelled_at: datetime | None


@dataclass(frozen=True, slots=True)
class CaseComment:
    id: int
    author: str
    body: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CaseDetail:
    summary: CaseSummary
    transactions: list[CaseTransaction]
    comments: list[CaseComment]


@dataclass(frozen=True, slots=True)
class CaseFilter:
    status: CaseStatus | None = "open"
    assignee: str | None = None
    """An analyst's name, or `""` for unassigned cases only."""
    card_ref: str | None = None
    min_score: float | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class DenyCard:
    """Put the case's card on the deny list when closing (in the same transaction)."""

    reason: str
    expires_at: datetime | None = None


# --- attaching flagged transactions (the sink's side) -------------------------------------

_ACTIONS: Final = sql.SQL("ARRAY['approve', 'review', 'decline']")
"""Actions by rank: a case's `highest_action` is the highest of its transactions'."""

_OPEN_CASES: Final = sql.SQL(
    "INSERT INTO cases (card_ref, last_event_time)"
    " SELECT t.card_ref, max(t.event_time) FROM transactions t"
    " WHERE t.transaction_id = ANY(%s) AND t.is_flagged AND t.card_ref IS NOT NULL"
    " AND NOT EXISTS (SELECT FROM case_transactions c WHERE c.transaction_id = t.transaction_id)"
    " GROUP BY t.card_ref ORDER BY t.card_ref"
    " ON CONFLICT (card_ref) WHERE status = 'open' DO UPDATE SET updated_at = now()"
    " RETURNING id, card_ref"
)
"""The open case of every card with a flagged transaction not in a case yet: opened, or
locked as it is (`DO UPDATE` locks it; should a close commit first, PostgreSQL finds no
conflict any more and opens a new case). Cards in order, so concurrent sinks do not deadlock."""

_ATTACH: Final = sql.SQL(
    "WITH attached AS ("
    " INSERT INTO case_transactions (case_id, transaction_id)"
    " SELECT c.id, t.transaction_id FROM transactions t"
    " JOIN unnest(%s::bigint[], %s::text[]) AS c (id, card_ref) ON c.card_ref = t.card_ref"
    " WHERE t.transaction_id = ANY(%s) AND t.is_flagged ORDER BY t.transaction_id"
    " ON CONFLICT (transaction_id) DO NOTHING RETURNING case_id, transaction_id"
    "), added AS ("
    " SELECT a.case_id, count(*) AS n, max(t.score) AS max_score, sum(t.amount) AS amount,"
    " max(array_position({actions}, t.action)) AS action_rank, max(t.event_time) AS last_event"
    " FROM attached a JOIN transactions t USING (transaction_id) GROUP BY a.case_id"
    ") UPDATE cases SET transactions = cases.transactions + added.n,"
    " max_score = CASE WHEN cases.transactions = 0 THEN added.max_score"
    " ELSE greatest(cases.max_score, added.max_score) END,"
    " highest_action = ({actions})[CASE WHEN cases.transactions = 0 THEN added.action_rank"
    " ELSE greatest(array_position({actions}, cases.highest_action), added.action_rank) END],"
    " total_amount = cases.total_amount + added.amount,"
    " last_event_time = greatest(cases.last_event_time, added.last_event), updated_at = now()"
    " FROM added WHERE cases.id = added.case_id"
).format(actions=_ACTIONS)
"""Attach the flagged transactions to their card's case (locked by `_OPEN_CASES`) and add them
to its aggregates: only those really attached, so nothing is attached or counted twice."""


def attach_flagged(cursor: _Cursor, transaction_ids: list[str]) -> None:
    """In the sink's transaction, after the batch's decisions are stored: open or extend the
    card's open case for every flagged transaction among `transaction_ids` not in a case yet.

    What counts is the stored row (`transactions`, as first written), not the batch's copy:
    a replayed batch finds its transactions attached already and attaches nothing. Flagged
    transactions without a `card_ref` (identified by their customer only) get no case. Two
    statements whatever the batch size, none when `transaction_ids` is empty.
    """
    if not transaction_ids:
        return
    opened = cursor.execute(_OPEN_CASES, (transaction_ids,)).fetchall()
    if not opened:
        return
    case_ids = [case_id for case_id, _ in opened]
    cards = [card_ref for _, card_ref in opened]
    cursor.execute(_ATTACH, (case_ids, cards, transaction_ids))


# --- the analysts' side -------------------------------------------------------------------

_MAX_ASSIGNEE: Final = 128
_MAX_COMMENT: Final = 10_000
_MAX_LIMIT: Final = 1000
_VERDICTS: Final[tuple[str, ...]] = get_args(Verdict)
_STATUSES: Final[tuple[str, ...]] = get_args(CaseStatus)

_SUMMARY: Final = sql.SQL(
    "SELECT id, card_ref, status, assignee, transactions, max_score, highest_action,"
    " total_amount, opened_at, updated_at, last_event_time, closed_at, closed_by, resolution"
    " FROM cases"
)
_LOCK: Final = sql.SQL("{} WHERE id = %s FOR UPDATE").format(_SUMMARY)
_ONE: Final = sql.SQL("{} WHERE id = %s").format(_SUMMARY)
_QUEUE_ORDER: Final = sql.SQL("max_score DESC, id")
_NEWEST_ORDER: Final = sql.SQL("opened_at DESC, id DESC")

_TRANSACTIONS: Final = (
    "SELECT t.transaction_id, t.event_time, t.amount, t.currency, t.merchant_id, t.country,"
    " t.score, t.action, t.rules_fired, t.reasons,"
    " CASE WHEN l.is_fraud THEN 'fraud' WHEN NOT l.is_fraud THEN 'legitimate' END AS verdict,"
    " l.labelled_by, l.labelled_at"
    " FROM case_transactions c JOIN transactions t USING (transaction_id)"
    " LEFT JOIN labels l USING (transaction_id)"
    " WHERE c.case_id = %s ORDER BY t.event_time, t.transaction_id"
)
_COMMENTS: Final = (
    "SELECT id, author, body, created_at FROM case_comments WHERE case_id = %s"
    " ORDER BY created_at, id"
)
_ADD_COMMENT: Final = (
    "INSERT INTO case_comments (case_id, author, body) VALUES (%s, %s, %s)"
    " RETURNING id, author, body, created_at"
)
_TOUCH: Final = "UPDATE cases SET updated_at = now() WHERE id = %s"
_ASSIGN: Final = "UPDATE cases SET assignee = %s, updated_at = now() WHERE id = %s"
_CASE_IDS: Final = "SELECT transaction_id FROM case_transactions WHERE case_id = %s"
_LABEL: Final = (
    "INSERT INTO labels (transaction_id, is_fraud, source, labelled_by, case_id, labelled_at)"
    " SELECT v.transaction_id, v.is_fraud, 'case', %s, %s, now()"
    " FROM unnest(%s::text[], %s::boolean[]) AS v (transaction_id, is_fraud)"
    " ORDER BY v.transaction_id"
    " ON CONFLICT (transaction_id) DO UPDATE SET is_fraud = excluded.is_fraud,"
    " source = excluded.source, labelled_by = excluded.labelled_by,"
    " case_id = excluded.case_id, labelled_at = excluded.labelled_at"
)
_CLOSE: Final = (
    "UPDATE cases SET status = 'closed', closed_at = now(), closed_by = %s, resolution = %s,"
    " updated_at = now() WHERE id = %s"
)


def _text(value: str, field: str, max_length: int) -> str:
    """`value` trimmed; `CaseError` (invalid, `field`) if empty, too long or holding NUL."""
    text = value.strip()
    if not text:
        raise CaseError(f"{field}: must not be empty", field=field)
    if "\x00" in text:
        raise CaseError(f"{field}: must not contain NUL characters", field=field)
    if len(text) > max_length:
        raise CaseError(f"{field}: must be at most {max_length} characters", field=field)
    return text


def _checked_verdicts(verdicts: dict[str, Verdict]) -> dict[str, bool]:
    """transaction id -> is_fraud; `CaseError` (invalid, `verdicts`) for any other verdict."""
    wrong = sorted(tid for tid, verdict in verdicts.items() if verdict not in _VERDICTS)
    if wrong:
        raise CaseError(
            f"verdicts: {', '.join(wrong)}: expected one of {', '.join(_VERDICTS)}",
            field="verdicts",
        )
    return {tid: verdict == "fraud" for tid, verdict in verdicts.items()}


def _resolution(is_fraud: dict[str, bool]) -> str:
    if all(is_fraud.values()):
        return "fraud"
    return "mixed" if any(is_fraud.values()) else "legitimate"


def _locked(connection: _Connection, case_id: int) -> CaseSummary:
    """The case, its row locked until the transaction ends; `CaseError` (not_found)."""
    with connection.cursor(row_factory=class_row(CaseSummary)) as cursor:
        summary = cursor.execute(_LOCK, (case_id,)).fetchone()
    if summary is None:
        raise CaseError(f"no case {case_id}", kind="not_found")
    return summary


def _require_open(summary: CaseSummary, doing: str) -> None:
    if summary.status != "open":
        raise CaseError(f"case {summary.id} is {summary.status}: cannot {doing} it", "conflict")


def _summary(connection: _Connection, case_id: int) -> CaseSummary | None:
    with connection.cursor(row_factory=class_row(CaseSummary)) as cursor:
        return cursor.execute(_ONE, (case_id,)).fetchone()


def _detail(connection: _Connection, case_id: int) -> CaseDetail | None:
    summary = _summary(connection, case_id)
    if summary is None:
        return None
    with connection.cursor(row_factory=class_row(CaseTransaction)) as cursor:
        transactions = cursor.execute(_TRANSACTIONS, (case_id,)).fetchall()
    with connection.cursor(row_factory=class_row(CaseComment)) as cursor:
        comments = cursor.execute(_COMMENTS, (case_id,)).fetchall()
    return CaseDetail(summary, transactions, comments)


def _add_comment(connection: _Connection, case_id: int, author: str, body: str) -> CaseComment:
    with connection.cursor(row_factory=class_row(CaseComment)) as cursor:
        comment = cursor.execute(_ADD_COMMENT, (case_id, author, body)).fetchone()
    assert comment is not None
    return comment


def _check_covers(connection: _Connection, case_id: int, verdicts: dict[str, bool]) -> None:
    """The verdicts name exactly the case's transactions: unknown ids are invalid, missing ones
    a conflict (they joined the case after the analyst looked)."""
    rows = connection.execute(_CASE_IDS, (case_id,)).fetchall()
    in_case = {str(tid) for (tid,) in rows}
    unknown = sorted(verdicts.keys() - in_case)
    if unknown:
        shown = ", ".join(unknown[:10])
        raise CaseError(f"verdicts: not transactions of case {case_id}: {shown}", field="verdicts")
    missing = tuple(sorted(in_case - verdicts.keys()))
    if missing:
        raise CaseError(
            f"case {case_id} has {len(missing)} transaction(s) without a verdict",
            kind="conflict",
            field="verdicts",
            missing=missing,
        )
    if not verdicts:
        raise CaseError(f"case {case_id} has no transactions to give verdicts", field="verdicts")


def _label_and_close(
    connection: _Connection, actor: str, case_id: int, is_fraud: dict[str, bool]
) -> str:
    """Write the verdicts to `labels` (replacing any earlier label) and close the case with
    their resolution, which is returned."""
    ids = sorted(is_fraud)
    connection.execute(_LABEL, (actor, case_id, ids, [is_fraud[tid] for tid in ids]))
    resolution = _resolution(is_fraud)
    connection.execute(_CLOSE, (actor, resolution, case_id))
    return resolution


def _deny(connection: _Connection, actor: str, card_ref: str, deny: DenyCard) -> int:
    """Deny-list the card in the caller's transaction; the entry's id."""
    try:
        entry, _ = add_entry(
            connection, actor, "deny", "card", card_ref, deny.reason, deny.expires_at
        )
    except ListError as error:
        raise CaseError(f"deny_card: {error}", field="deny_card") from None
    return entry.id


def _queue_query(wanted: CaseFilter) -> tuple[sql.Composed, list[object]]:
    """The `cases` query for a filter, and its parameters; `CaseError` names a wrong field."""
    if wanted.status is not None and wanted.status not in _STATUSES:
        raise CaseError(f"status {wanted.status!r}: expected one of {_STATUSES}", field="status")
    if not 1 <= wanted.limit <= _MAX_LIMIT:
        raise CaseError(f"limit: must be 1 to {_MAX_LIMIT}", field="limit")
    if wanted.min_score is not None and not math.isfinite(wanted.min_score):
        raise CaseError("min_score: must be a finite number", field="min_score")
    conditions: list[sql.Composable] = [sql.SQL("TRUE")]
    parameters: list[object] = []
    for column, value in (("status", wanted.status), ("card_ref", wanted.card_ref)):
        if value is not None:
            conditions.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            parameters.append(value)
    assignee = None if wanted.assignee is None else wanted.assignee.strip()
    if assignee == "":
        conditions.append(sql.SQL("assignee IS NULL"))
    elif assignee is not None:
        conditions.append(sql.SQL("assignee = %s"))
        parameters.append(assignee)
    if wanted.min_score is not None:
        conditions.append(sql.SQL("max_score >= %s"))
        parameters.append(wanted.min_score)
    order = _QUEUE_ORDER if wanted.status == "open" else _NEWEST_ORDER
    query = sql.SQL("{} WHERE {} ORDER BY {} LIMIT %s").format(
        _SUMMARY, sql.SQL(" AND ").join(conditions), order
    )
    return query, [*parameters, wanted.limit]


class CaseStore:
    """Cases of one database. Every change is one transaction with its audit row."""

    def __init__(self, url: str) -> None:
        self._url = url

    def _connect(self) -> _Connection:
        return psycopg.connect(self._url, autocommit=True, connect_timeout=5)

    def cases(self, wanted: CaseFilter) -> list[CaseSummary]:
        """The queue: highest score first among open cases, newest first otherwise."""
        query, parameters = _queue_query(wanted)
        with (
            self._connect() as connection,
            connection.cursor(row_factory=class_row(CaseSummary)) as cursor,
        ):
            return cursor.execute(query, parameters).fetchall()

    def case(self, case_id: int) -> CaseDetail | None:
        """The case with its transactions (oldest first) and comments, read in one snapshot."""
        with self._connect() as connection, connection.transaction():
            connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return _detail(connection, case_id)

    def assign(self, actor: str, case_id: int, assignee: str | None) -> CaseSummary:
        """Assign an open case (None: unassign)."""
        name = None if assignee is None else _text(assignee, "assignee", _MAX_ASSIGNEE)
        with self._connect() as connection, connection.transaction():
            before = _locked(connection, case_id)
            _require_open(before, "assign")
            connection.execute(_ASSIGN, (name, case_id))
            details: dict[str, object] = {"assignee": name, "previous": before.assignee}
            audit(connection, actor, "case_assign", ("case", str(case_id)), details)
            after = _summary(connection, case_id)
        assert after is not None
        return after

    def comment(self, actor: str, case_id: int, body: str) -> CaseComment:
        """A comment on a case, open or closed (a note may come after the verdict)."""
        text = _text(body, "body", _MAX_COMMENT)
        with self._connect() as connection, connection.transaction():
            _locked(connection, case_id)
            comment = _add_comment(connection, case_id, actor, text)
            connection.execute(_TOUCH, (case_id,))
            details: dict[str, object] = {"comment_id": comment.id, "body": text}
            audit(connection, actor, "case_comment", ("case", str(case_id)), details)
        return comment

    def close(
        self,
        actor: str,
        case_id: int,
        verdicts: dict[str, Verdict],
        comment: str | None = None,
        deny_card: DenyCard | None = None,
    ) -> CaseDetail:
        """Close an open case with a verdict for each of its transactions (exactly those):
        labels written with who and when, the card deny-listed if asked, audited.

        A blank `comment` is no comment. All or nothing: any error (a verdict missing, a
        deny-list reason refused) leaves the case open and no label written.
        """
        is_fraud = _checked_verdicts(verdicts)
        blank = comment is None or not comment.strip()
        note = None if blank else _text(comment or "", "comment", _MAX_COMMENT)
        with self._connect() as connection, connection.transaction():
            summary = _locked(connection, case_id)
            _require_open(summary, "close")
            _check_covers(connection, case_id, is_fraud)
            resolution = _label_and_close(connection, actor, case_id, is_fraud)
            details: dict[str, object] = {"resolution": resolution, "verdicts": dict(verdicts)}
            if note is not None:
                details["comment_id"] = _add_comment(connection, case_id, actor, note).id
            if deny_card is not None:
                details["deny_list_entry"] = _deny(connection, actor, summary.card_ref, deny_card)
            audit(connection, actor, "case_close", ("case", str(case_id)), details)
            detail = _detail(connection, case_id)
        assert detail is not None
        return detail
