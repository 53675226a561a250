"""Each rule's measured figures, from the stored decisions and the labels analysts give.

* Hit rate: the share of transactions decided since the rule's window start on which it fired
  (`rules_fired` for a live rule, `shadow_rules_fired` for a shadow one). The window starts at
  the later of `now - window` and the rule's last change, so a rule edited or put in shadow a
  minute ago is measured over that minute, not diluted by traffic it never saw.
* Precision and recall: over the labels given in the label window (by when they were given):
  precision is the share of the rule's labelled hits that were fraud, recall the share of the
  labelled fraud it fired on (live or in shadow). Case verdicts land in `labels`, so every
  closed case moves these figures. They cover every version of a rule id, and only labelled
  transactions: flags are what analysts review, so recall is measured among the fraud that was
  confirmed (by a case or a chargeback), not among fraud nobody found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

_Connection = psycopg.Connection[TupleRow]
_LABELLED: Final = (
    "SELECT r.rule_id, count(*) FILTER (WHERE l.is_fraud), count(*) FILTER (WHERE NOT l.is_fraud)"
    " FROM labels l JOIN transactions t USING (transaction_id)"
    " CROSS JOIN LATERAL unnest(t.rules_fired || t.shadow_rules_fired) AS r(rule_id)"
    " WHERE l.labelled_at >= %s GROUP BY r.rule_id"
)
_LABELLED_FRAUD: Final = (
    "SELECT count(*) FILTER (WHERE l.is_fraud) FROM labels l"
    " JOIN transactions t USING (transaction_id) WHERE l.labelled_at >= %s"
)


@dataclass(frozen=True, slots=True)
class RuleWindow:
    """Which rule to measure, from when, and whether it runs in shadow."""

    rule_id: str
    since: datetime
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class RuleFigures:
    """A rule's measured figures (see the module docstring)."""

    since: datetime
    decided: int
    hits: int
    hit_rate: float | None
    fraud_hits: int
    legitimate_hits: int
    precision: float | None
    recall: float | None


def rule_figures(
    connection: _Connection, windows: Sequence[RuleWindow], labelled_since: datetime
) -> dict[str, RuleFigures]:
    """Figures per rule id; two scans of the decisions (hit rates in one, labels in one)."""
    if not windows:
        return {}
    counts = _hit_counts(connection, windows)
    labelled = {
        rule_id: (int(fraud), int(legitimate))
        for rule_id, fraud, legitimate in connection.execute(
            _LABELLED, (labelled_since,)
        ).fetchall()
    }
    fraud_row = connection.execute(_LABELLED_FRAUD, (labelled_since,)).fetchone()
    labelled_fraud = int(fraud_row[0]) if fraud_row else 0
    figures = {}
    for window, (decided, hits) in zip(windows, counts, strict=True):
        fraud, legitimate = labelled.get(window.rule_id, (0, 0))
        figures[window.rule_id] = RuleFigures(
            since=window.since,
            decided=decided,
            hits=hits,
            hit_rate=hits / decided if decided else None,
            fraud_hits=fraud,
            legitimate_hits=legitimate,
            precision=fraud / (fraud + legitimate) if fraud + legitimate else None,
            recall=fraud / labelled_fraud if labelled_fraud else None,
        )
    return figures


def _hit_counts(connection: _Connection, windows: Sequence[RuleWindow]) -> list[tuple[int, int]]:
    """(decided, hits) per window, counted in one scan of the decisions since the earliest."""
    aggregates = []
    parameters: list[object] = []
    for window in windows:
        column = sql.Identifier("shadow_rules_fired" if window.shadow else "rules_fired")
        aggregates.append(sql.SQL("count(*) FILTER (WHERE decided_at >= %s)"))
        aggregates.append(
            sql.SQL("count(*) FILTER (WHERE decided_at >= %s AND %s = ANY({}))").format(column)
        )
        parameters += [window.since, window.since, window.rule_id]
    query = sql.SQL("SELECT {} FROM transactions WHERE decided_at >= %s").format(
        sql.SQL(", ").join(aggregates)
    )
    earliest = min(window.since for window in windows)
    row = connection.execute(query, [*parameters, earliest]).fetchone()
    assert row is not None  # an aggregate without GROUP BY always answers one row
    return [(int(row[2 * k]), int(row[2 * k + 1])) for k in range(len(windows))]
