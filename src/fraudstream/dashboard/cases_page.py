"""The analysts' case queue and case page: the dashboard's "Cases" page (`app.py` serves it
beside the live page through `st.navigation`).

Who is working: the dashboard has no login, so it cannot know. The analyst types their name once
in the sidebar ("Your name", kept for the browser session), and every change made on this page is
recorded as `dashboard:<name>`: in `audit_log`, as the author of a comment, as who labelled a
transaction. That name is only what was typed: anyone who can open the dashboard can type any
name, so the record says who the analyst said they were, not who proved it. Where that matters,
serve the dashboard to analysts only behind an authenticating proxy, or work cases through the
API, whose keys are authenticated. Until a name is set, every change is refused with a message
saying so (reading needs no name).

The queue lists cases (open ones by default, the highest score first) with filters in the
sidebar; choosing one (a row of the table, or the "Open a case" box) shows it below: its summary,
its transactions with their stored decisions and verdicts, its comments, who it is assigned to,
and closing it with a verdict for every transaction, optionally deny-listing the card.

Reads and changes go through `adapters.cases.CaseStore`, on the database the live page reads.
Changes run in widget callbacks, before Streamlit reruns the script, so the page drawn next reads
the case as the change left it; the outcome (done, or why not) is kept in the session for that
run. A refused change (`CaseError`), an unreachable database or one without the tables gets a
message, never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from typing import Any, Final, Literal, TypeVar

import polars as pl
import psycopg
import streamlit as st

from fraudstream.adapters.cases import (
    CaseComment,
    CaseDetail,
    CaseError,
    CaseFilter,
    CaseStatus,
    CaseStore,
    CaseSummary,
    CaseTransaction,
    DenyCard,
    Verdict,
)
from fraudstream.adapters.postgres import _unavailable
from fraudstream.config import load_settings
from fraudstream.core.errors import FraudstreamError
from fraudstream.stack import running_database_url

ACTOR_PREFIX: Final = "dashboard:"
NAME_KEY: Final = "cases_name"
OPEN_KEY: Final = "cases_open"
CURRENT_KEY: Final = "cases_current"
QUEUE_KEY: Final = "cases_queue"
FLASH_KEY: Final = "cases_flash"
NAME_MAX: Final = 64
ASSIGNEE_MAX: Final = 128
COMMENT_MAX: Final = 5000
REASON_MAX: Final = 1000
QUEUE_LIMIT: Final = 200
STATUSES: Final[dict[str, CaseStatus | None]] = {"Open": "open", "Closed": "closed", "All": None}
ANYONE: Final = "Anyone"
UNASSIGNED: Final = "Unassigned"
MINE: Final = "Mine"
NAMED: Final = "A name…"
VERDICTS: Final[tuple[Verdict, ...]] = ("fraud", "legitimate")
EACH: Final = "(none: I choose each)"
NAME_NEEDED: Final = (
    'Type your name in the sidebar ("Your name") first: the dashboard has no login, so every '
    "change is recorded under the name you give, and none is made without one."
)
NO_TABLES: Final = (
    "No cases yet: the database has no case tables. The pipeline creates them when it first "
    "starts (`fraudstream run`, or `fraudstream stack` and `fraudstream worker`)."
)
TIME_FORMAT: Final = "YYYY-MM-DD HH:mm:ss"
_MARKUP: Final = re.compile(r"[\\`*\[\]<>~$]|(?<![^\W_])_|_(?![^\W_])")
"""What starts inline Markdown (labels have no other kind; captions and messages get stored
text mid-line only): `_` only at a word's edge, as inside a word (`tx_0001`) it is plain."""
_SCORE: Final = st.column_config.NumberColumn(format="%.3f")
_AMOUNT: Final = st.column_config.NumberColumn(format="%.2f")
_TIME: Final = st.column_config.DatetimeColumn(format=TIME_FORMAT, timezone="UTC")
_QUEUE_COLUMNS: Final = {
    "max score": _SCORE, "total amount": _AMOUNT, "opened": _TIME, "last event": _TIME,
}  # fmt: skip
T = TypeVar("T")
Flash = tuple[Literal["success", "error"], str]


class Refused(FraudstreamError):  # noqa: N818 - reads as what it is
    """A change the page turns down before asking the store (no verdict, no reason, ...)."""


@st.cache_resource(show_spinner=False)
def _store(url: str) -> CaseStore:
    return CaseStore(url)


def plain(text: str) -> str:
    """`text` to show as it is where Streamlit reads Markdown (labels, captions)."""
    return _MARKUP.sub(lambda found: "\\" + found.group(), text)


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# --- who is working -------------------------------------------------------------------------


def analyst() -> str | None:
    """The name typed in the sidebar, whitespace tidied; None when there is none fit to record."""
    name = " ".join(str(st.session_state.get(NAME_KEY) or "").split())
    if not name or len(name) > NAME_MAX or not name.isprintable():
        return None
    return name


def _identity() -> str | None:
    bar = st.sidebar
    bar.text_input(
        "Your name", key=NAME_KEY, max_chars=NAME_MAX, persist_state="session",
        placeholder="as your colleagues know you",
        help="The dashboard has no login: your changes are recorded under this name.",
    )  # fmt: skip
    name = analyst()
    if name is not None:
        bar.caption(f"Your changes are recorded as **{plain(ACTOR_PREFIX + name)}**.")
    elif str(st.session_state.get(NAME_KEY) or "").strip():
        bar.error(f"That name cannot be recorded: up to {NAME_MAX} printable characters.")
    else:
        bar.warning("Type your name to work cases: changes are refused until it is set.")
    return name


# --- the queue ------------------------------------------------------------------------------


def _filters(name: str | None) -> CaseFilter | None:
    """The queue's filters, from the sidebar; None when "Mine" is asked for without a name."""
    bar = st.sidebar
    bar.header("Queue")
    status = bar.radio(
        "Status", list(STATUSES), key="cases_status", horizontal=True, persist_state="session"
    )
    who = bar.selectbox(
        "Assignee", (ANYONE, UNASSIGNED, MINE, NAMED), key="cases_who", persist_state="session"
    )
    named = ""
    if who == NAMED:
        named = bar.text_input("Assignee's name", key="cases_who_name", persist_state="session")
    minimum = bar.number_input(
        "Minimum score", min_value=0.0, max_value=1.0, value=0.0, step=0.05, format="%.2f",
        key="cases_min_score", persist_state="session",
    )  # fmt: skip
    card = bar.text_input(
        "Card reference", key="cases_card", placeholder="tok_…", persist_state="session"
    ).strip()
    bar.button("Refresh", key="cases_refresh", help="Read the queue and the case again.")
    if who == MINE and name is None:
        st.info("Type your name in the sidebar to see the cases assigned to you.")
        return None
    assignee = {ANYONE: None, UNASSIGNED: "", MINE: name, NAMED: named.strip() or None}[who]
    return CaseFilter(
        status=STATUSES[status or "Open"], assignee=assignee, card_ref=card or None,
        min_score=minimum or None, limit=QUEUE_LIMIT,
    )  # fmt: skip


def _queue_row(case: CaseSummary) -> dict[str, object]:
    return {
        "id": case.id, "card": case.card_ref, "status": case.status,
        "transactions": case.transactions, "max score": case.max_score,
        "highest action": case.highest_action, "total amount": case.total_amount,
        "assignee": case.assignee, "opened": case.opened_at,
        "last event": case.last_event_time, "resolution": case.resolution,
    }  # fmt: skip


def _queue(store: CaseStore, url: str, wanted: CaseFilter) -> list[CaseSummary] | None:
    """The queue's table; its cases, or None having said why there are none to show."""
    read = _read(url, lambda: store.cases(wanted))
    if read is None:
        return None
    (cases,) = read
    if not cases:
        st.info("No cases match these filters.")
        return cases
    columns = ["id", "card", "transactions", "max score", "highest action", "total amount",
               "assignee", "opened", "last event"]  # fmt: skip
    if wanted.status != "open":
        columns[1:1] = ["status", "resolution"]
    st.dataframe(
        pl.DataFrame([_queue_row(case) for case in cases]), hide_index=True, key=QUEUE_KEY,
        column_order=columns, on_select=partial(_picked, [case.id for case in cases]),
        selection_mode="single-row", placeholder="-", column_config=_QUEUE_COLUMNS,
    )  # fmt: skip
    more = " (the first ones: narrow the filters for others)" if len(cases) >= wanted.limit else ""
    count = "1 case" if len(cases) == 1 else f"{len(cases):,} cases"
    st.caption(f"{count}{more}. Select a row, or choose below, to open a case.")
    return cases


def _picked(ids: list[int]) -> None:
    """A row of the queue selected: open its case."""
    rows = st.session_state[QUEUE_KEY].selection.rows
    if rows:
        st.session_state[CURRENT_KEY] = ids[rows[0]]


def _chosen() -> None:
    st.session_state[CURRENT_KEY] = st.session_state.get(OPEN_KEY)


def _picker(cases: Sequence[CaseSummary]) -> int | None:
    """The case to show: chosen in the queue or here, and kept (in the session, as the box
    forgets its choice when its options change) while filters or a change move it out of the
    queue: a case just closed stays on the page."""
    by_id = {case.id: case for case in cases}
    ids = list(by_id)
    current = st.session_state.get(CURRENT_KEY)
    if isinstance(current, int) and current not in by_id:
        ids.append(current)
    st.session_state[OPEN_KEY] = current
    chosen: int | None = st.selectbox(
        "Open a case", ids, index=None, key=OPEN_KEY, placeholder="Choose a case",
        format_func=lambda case_id: _case_choice(by_id.get(case_id), case_id), on_change=_chosen,
    )  # fmt: skip
    return chosen


def _case_choice(case: CaseSummary | None, case_id: int) -> str:
    if case is None:
        return f"#{case_id} (not in the queue as filtered)"
    return (
        f"#{case.id} · {case.card_ref} · score {case.max_score:.3f} · "
        f"{case.transactions} transactions · {case.status}"
    )


# --- one case -------------------------------------------------------------------------------


def _case(store: CaseStore, url: str, case_id: int) -> None:
    read = _read(url, lambda: store.case(case_id))
    if read is None:
        return
    (detail,) = read
    if detail is None:
        st.warning(f"There is no case #{case_id}.")
        return
    _summary(detail.summary, {row.currency for row in detail.transactions})
    _transactions(detail.transactions)
    _comments(store, url, detail)
    if detail.summary.status == "open":
        _assignment(store, url, detail.summary)
        _closing(store, url, detail)


def _summary(case: CaseSummary, currencies: set[str | None]) -> None:
    st.header(f"Case #{case.id}", divider="gray")
    card = case.card_ref.replace("`", "")  # a stored token, shown in a code span
    state = f"**{case.status}**"
    if case.status == "closed":
        who = plain(case.closed_by or "?")
        state += f" as **{case.resolution or '?'}** by {who}, {_when(case.closed_at)}"
    st.markdown(f"Card `{card}` · {state}")
    columns = st.columns(5)
    columns[0].metric("Transactions", f"{case.transactions:,}")
    columns[1].metric("Max score", f"{case.max_score:.3f}")
    columns[2].metric("Highest action", plain(case.highest_action))
    (currency,) = currencies if len(currencies) == 1 else (None,)
    total = f"{case.total_amount:,.2f} {currency or ''}".strip()
    mixed = "in mixed currencies: a plain sum of the amounts" if len(currencies) > 1 else None
    columns[3].metric("Total amount", plain(total), help=mixed)
    columns[4].metric("Assignee", plain(case.assignee or "nobody"))
    st.caption(
        f"Opened {_when(case.opened_at)} · last event {_when(case.last_event_time)} · "
        f"last change {_when(case.updated_at)}"
    )


def _transaction_row(row: CaseTransaction) -> dict[str, object]:
    return {
        "time": row.event_time, "transaction": row.transaction_id, "amount": row.amount,
        "currency": row.currency, "merchant": row.merchant_id, "country": row.country,
        "score": row.score, "action": row.action, "verdict": row.verdict,
        "labelled by": row.labelled_by, "rules fired": ", ".join(row.rules_fired),
        "reasons": "; ".join(row.reasons),
    }  # fmt: skip


def _transactions(rows: Sequence[CaseTransaction]) -> None:
    st.subheader("Transactions")
    if not rows:
        st.caption("No transactions.")
        return
    st.dataframe(
        pl.DataFrame([_transaction_row(row) for row in rows]), hide_index=True, placeholder="-",
        key="cases_transactions", column_config={"time": _TIME, "amount": _AMOUNT, "score": _SCORE},
    )  # fmt: skip


def _comments(store: CaseStore, url: str, detail: CaseDetail) -> None:
    st.subheader("Comments")
    ordered = sorted(detail.comments, key=lambda comment: (comment.created_at, comment.id))
    if not ordered:
        st.caption("No comments yet.")
    for comment in ordered:
        _comment(comment)
    case_id = detail.summary.id
    with st.form(f"cases_comment_form_{case_id}", border=False):
        st.text_area("Add a comment", key=f"cases_comment_{case_id}", max_chars=COMMENT_MAX)
        st.form_submit_button("Add comment", on_click=_add_comment, args=(store, url, case_id))


def _comment(comment: CaseComment) -> None:
    with st.container(border=True):
        st.caption(f"{plain(comment.author)} · {_when(comment.created_at)}")
        st.text(comment.body)


def _assignment(store: CaseStore, url: str, case: CaseSummary) -> None:
    st.subheader("Assignment")
    whom = plain(case.assignee) if case.assignee else "nobody"
    st.caption(f"Assigned to {whom}.")
    mine, nobody, other = st.columns([1, 1, 3], vertical_alignment="bottom")
    mine.button("Assign to me", on_click=_assign, args=(store, url, case.id, MINE))
    nobody.button(
        "Unassign", on_click=_assign, args=(store, url, case.id, UNASSIGNED),
        disabled=case.assignee is None,
    )  # fmt: skip
    with other.form(f"cases_assign_form_{case.id}", border=False):
        st.text_input("Assign to", key=f"cases_assign_to_{case.id}", max_chars=ASSIGNEE_MAX)
        st.form_submit_button("Assign", on_click=_assign, args=(store, url, case.id, NAMED))


def _verdict_key(case_id: int, transaction_id: str) -> str:
    return f"cases_verdict_{case_id}_{transaction_id}"


def _closing(store: CaseStore, url: str, detail: CaseDetail) -> None:
    case = detail.summary
    st.subheader("Close the case")
    with st.form(f"cases_close_form_{case.id}"):
        st.caption(
            "A verdict for every transaction: none is chosen for you. The verdicts become "
            "labels (the models learn from them), recorded with your name."
        )
        for row in detail.transactions:
            st.radio(
                _verdict_label(row), VERDICTS, index=None, horizontal=True,
                key=_verdict_key(case.id, row.transaction_id),
            )  # fmt: skip
        st.selectbox(
            "Verdict for the rest", (EACH, *VERDICTS), key=f"cases_rest_{case.id}",
            help="Given to every transaction above left without one; by default none is.",
        )  # fmt: skip
        st.text_area("Closing comment (optional)", key=f"cases_close_comment_{case.id}",
                     max_chars=COMMENT_MAX)  # fmt: skip
        st.checkbox("Put the card on the deny list", key=f"cases_deny_{case.id}")
        st.text_input("Deny-list reason", key=f"cases_deny_reason_{case.id}",
                      max_chars=REASON_MAX, placeholder="needed to deny-list the card")  # fmt: skip
        st.date_input(
            "Deny-listed until (optional; 00:00 UTC that day)", value=None,
            min_value=date.today() + timedelta(days=1), key=f"cases_deny_until_{case.id}",
        )  # fmt: skip
        ids = [row.transaction_id for row in detail.transactions]
        st.form_submit_button(
            "Close case", type="primary", on_click=_close, args=(store, url, case, ids)
        )


def _verdict_label(row: CaseTransaction) -> str:
    money = f"{row.amount:,.2f} {row.currency or ''}".strip()
    return plain(f"{row.transaction_id} · {money} · score {row.score:.3f} · {row.action}")


# --- changes (widget callbacks) --------------------------------------------------------------


def _change(url: str, make: Callable[[str, str], str]) -> None:
    """Run `make(actor, name)` for the analyst and keep its message, or why it was not done,
    for the run that follows."""
    name = analyst()
    if name is None:
        _flash("error", NAME_NEEDED)
        return
    try:
        _flash("success", make(ACTOR_PREFIX + name, name))
    except (psycopg.Error, FraudstreamError) as error:
        _flash("error", _explain(error, url))


def _add_comment(store: CaseStore, url: str, case_id: int) -> None:
    key = f"cases_comment_{case_id}"

    def make(actor: str, _name: str) -> str:
        body = str(st.session_state.get(key) or "").strip()
        if not body:
            raise Refused("Type a comment first.")
        store.comment(actor, case_id, body)
        st.session_state[key] = ""  # kept when refused, so nothing typed is lost
        return f"Comment added to case #{case_id}."

    _change(url, make)


def _assign(store: CaseStore, url: str, case_id: int, whom: str) -> None:
    def make(actor: str, name: str) -> str:
        assignee = name if whom == MINE else None
        if whom == NAMED:
            assignee = _typed_assignee(case_id)
        store.assign(actor, case_id, assignee)
        return f"Case #{case_id} " + (f"assigned to {assignee}." if assignee else "unassigned.")

    _change(url, make)


def _typed_assignee(case_id: int) -> str:
    typed = " ".join(str(st.session_state.get(f"cases_assign_to_{case_id}") or "").split())
    if not typed:
        raise Refused('Type the name to assign the case to in "Assign to".')
    return typed


def _close(store: CaseStore, url: str, case: CaseSummary, ids: list[str]) -> None:
    """Close `case` with the verdicts given for `ids`, the transactions the analyst saw."""

    def make(actor: str, _name: str) -> str:
        verdicts = _verdicts(case.id, ids)
        deny = _deny_card(case.id)
        note = str(st.session_state.get(f"cases_close_comment_{case.id}") or "").strip()
        closed = store.close(actor, case.id, verdicts, note or None, deny)
        return _closed_message(closed.summary, verdicts, deny)

    _change(url, make)


def _verdicts(case_id: int, ids: list[str]) -> dict[str, Verdict]:
    rest = st.session_state.get(f"cases_rest_{case_id}")
    fallback: Verdict | None = rest if rest in VERDICTS else None
    chosen = {tid: st.session_state.get(_verdict_key(case_id, tid)) or fallback for tid in ids}
    blank = [tid for tid, verdict in chosen.items() if verdict is None]
    if blank:
        shown = ", ".join(blank[:5]) + (f" and {len(blank) - 5} more" if len(blank) > 5 else "")
        has = "has" if len(blank) == 1 else "have"
        raise Refused(f"Not closed: give every transaction a verdict ({shown} {has} none).")
    return {tid: verdict for tid, verdict in chosen.items() if verdict is not None}


def _deny_card(case_id: int) -> DenyCard | None:
    state = st.session_state
    wanted = bool(state.get(f"cases_deny_{case_id}"))
    reason = " ".join(str(state.get(f"cases_deny_reason_{case_id}") or "").split())
    if not wanted:
        if reason:
            raise Refused(
                "Not closed: a deny-list reason is given but “Put the card on the deny list” "
                "is not ticked. Tick it, or clear the reason."
            )
        return None
    if not reason:
        raise Refused("Not closed: say why the card goes on the deny list (Deny-list reason).")
    until: date | None = state.get(f"cases_deny_until_{case_id}")
    expires = None if until is None else datetime.combine(until, time.min, tzinfo=UTC)
    return DenyCard(reason, expires)


def _closed_message(case: CaseSummary, verdicts: dict[str, Verdict], deny: DenyCard | None) -> str:
    fraud = sum(verdict == "fraud" for verdict in verdicts.values())
    message = (
        f"Case #{case.id} closed as {case.resolution or 'closed'}: {fraud} fraud, "
        f"{len(verdicts) - fraud} legitimate."
    )
    if deny is not None:
        until = "" if deny.expires_at is None else f" until {_when(deny.expires_at)}"
        message += f" Card {case.card_ref} is on the deny list{until}."
    return message


# --- messages -------------------------------------------------------------------------------


def _explain(error: psycopg.Error | FraudstreamError, url: str) -> str:
    """What to tell the analyst about an error of the store or the database."""
    if isinstance(error, Refused):
        return str(error)
    if isinstance(error, CaseError):
        return _refusal(error)
    if isinstance(error, psycopg.errors.UndefinedTable):
        return NO_TABLES
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return f"Cannot reach the database: {_unavailable(url, error)}. Nothing was changed."
    if isinstance(error, psycopg.DataError):
        return f"Not saved: a value cannot be stored ({_first_line(error)})."
    return f"Not done: {_first_line(error)}"


def _refusal(error: CaseError) -> str:
    if error.kind == "not_found":
        return f"Not found: {error}. It may have been removed; choose another case."
    if error.kind == "conflict" and error.missing:
        count = len(error.missing)
        joined = "transaction has" if count == 1 else f"{count} transactions have"
        return (
            f"Not closed: {joined} joined this case since you opened it: "
            f"{', '.join(error.missing)}. The case is reloaded below with them: give "
            "them a verdict too and close again."
        )
    if error.kind == "conflict":
        return f"Not done, the case has changed: {error}. It is reloaded below."
    culprit = f" ({error.field})" if error.field else ""
    return f"Not done: {error}{culprit}."


def _flash(kind: Literal["success", "error"], text: str) -> None:
    flashes: list[Flash] = st.session_state.setdefault(FLASH_KEY, [])
    flashes.append((kind, text))


def _show_flashes() -> None:
    shown: dict[str, Callable[[str], Any]] = {"success": st.success, "error": st.error}
    for kind, text in st.session_state.pop(FLASH_KEY, []):
        shown[kind](plain(text))  # names, ids and the store's words: shown as they are


def _read(url: str, reader: Callable[[], T]) -> tuple[T] | None:
    """`(reader(),)`, or None having shown why there is nothing: the empty state's help for a
    database without the case tables, an error box otherwise."""
    try:
        return (reader(),)
    except psycopg.errors.UndefinedTable:
        st.info(NO_TABLES)
    except (psycopg.OperationalError, psycopg.InterfaceError) as error:
        reason = plain(str(_unavailable(url, error)))
        st.error(f"Cannot read the database: {reason}. Try again in a moment.")
    except (psycopg.Error, FraudstreamError) as error:
        st.error(plain(_explain(error, url)))
    return None


def main() -> None:
    """The page: the analyst's name and the queue's filters in the sidebar, the queue, then
    the case chosen."""
    st.set_page_config(page_title="fraudstream — cases", page_icon="🛡️", layout="wide")
    st.title("Cases")
    try:
        url = running_database_url(load_settings())
    except FraudstreamError as error:
        st.error(str(error))
        return
    store = _store(url)
    name = _identity()
    wanted = _filters(name)
    _show_flashes()
    cases = [] if wanted is None else _queue(store, url, wanted)
    if cases is None:
        return
    case_id = _picker(cases)
    if case_id is not None:
        _case(store, url, case_id)
