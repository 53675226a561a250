"""The dispatcher's side of the `alerts` outbox: claim a channel, read what is due, record outcomes.

One dispatcher at a time serves a channel: it holds a session-level advisory lock named after
the channel, so a second dispatcher (a standby, or one started by mistake) waits instead of
sending the same alerts. Every outcome is committed as soon as it is known; that an alert was
delivered is recorded right after the server accepted it, so a restarted dispatcher resends
nothing recorded as delivered. (A crash in the instant between the two can repeat that one
message; it carries the same alert ids, for the receiver to recognise.)
"""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta
from typing import Final

import psycopg
from psycopg.rows import TupleRow

from fraudstream.ports import Alert

Connection = psycopg.Connection[TupleRow]

_LOCK_CLASS: Final = 0x66726164  # 'frad': the alert dispatchers' lock space

_DUE: Final = """
SELECT a.id, a.route, a.channel, a.transaction_id, a.card_ref, t.card_last4, t.customer_id,
       t.merchant_id, t.country, t.amount, t.currency, a.action, a.severity, a.score,
       t.rules_fired, t.reasons, a.event_time, a.created_at, a.attempts
FROM alerts a JOIN transactions t USING (transaction_id)
WHERE a.channel = %s AND a.status = 'pending' AND a.next_attempt_at <= now()
ORDER BY a.event_time, a.id
LIMIT %s
"""

_KEPT_BEFORE: Final = """
SELECT id FROM alerts
WHERE route = %(route)s AND card_ref = %(card)s AND status <> 'suppressed'
  AND (status = 'delivered' OR attempts > 0)
  AND event_time > %(since)s AND (event_time, id) < (%(at)s, %(id)s)
ORDER BY event_time DESC, id DESC
LIMIT 1
"""

_SUPPRESS: Final = """
UPDATE alerts SET status = 'suppressed', duplicate_of = %s
WHERE id = %s AND status = 'pending'
"""

_DELIVERED: Final = """
UPDATE alerts SET status = 'delivered', delivered_at = now(), delivery_id = %s,
       attempts = attempts + 1, last_error = NULL
WHERE id = ANY(%s) AND status = 'pending'
RETURNING id, attempts
"""

_FAILED: Final = """
UPDATE alerts SET attempts = attempts + 1, last_error = %s,
       next_attempt_at = now() + make_interval(
           secs => least(%s * power(2, least(attempts, 30)), %s))
WHERE id = ANY(%s) AND status = 'pending'
RETURNING id, attempts
"""

_ATTEMPT: Final = """
INSERT INTO alert_attempts
    (alert_id, channel, attempt, started_at, finished_at, outcome, delivery_id, error)
SELECT id, %s::text, attempt, %s::timestamptz, now(), %s::text, %s::text, %s::text
FROM unnest(%s::bigint[], %s::int[]) AS a(id, attempt)
"""


def lock_key(channel: str) -> int:
    """A stable 32-bit key for `channel` (never Python's `hash()`, which differs per process)."""
    return zlib.crc32(channel.encode()) - (1 << 31)


def try_claim_channel(connection: Connection, channel: str) -> bool:
    """Take the channel's advisory lock for this session; False while another holds it."""
    row = connection.execute(
        "SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_CLASS, lock_key(channel))
    ).fetchone()
    return bool(row and row[0])


def due_alerts(connection: Connection, channel: str, limit: int) -> list[Alert]:
    """Pending alerts of `channel` whose next attempt is due, oldest event first."""
    rows = connection.execute(_DUE, (channel, limit)).fetchall()
    return [
        Alert(
            *row[:14],  # type: ignore[arg-type]
            rules_fired=tuple(row[14] or ()),
            reasons=tuple(row[15] or ()),
            event_time=row[16],
            created_at=row[17],
            attempts=row[18],
        )
        for row in rows
    ]


def kept_before(connection: Connection, alert: Alert, window: timedelta) -> int | None:
    """The id of an alert for the same card and route, inside `window` before `alert`, that was
    kept (delivered, or tried): `alert` repeats it."""
    if alert.card_ref is None or window <= timedelta(0):
        return None
    row = connection.execute(
        _KEPT_BEFORE,
        {
            "route": alert.route,
            "card": alert.card_ref,
            "since": alert.event_time - window,
            "at": alert.event_time,
            "id": alert.id,
        },
    ).fetchone()
    return None if row is None else int(row[0])


def suppress(connection: Connection, duplicates: list[tuple[int, int]]) -> None:
    """Mark `(alert, duplicate_of)` pairs as suppressed, in one transaction."""
    if not duplicates:
        return
    with connection.transaction(), connection.cursor() as cursor:
        cursor.executemany(_SUPPRESS, [(original, alert) for alert, original in duplicates])


def record_delivered(
    connection: Connection, channel: str, ids: list[int], delivery_id: str, started: datetime
) -> None:
    with connection.transaction(), connection.cursor() as cursor:
        updated = cursor.execute(_DELIVERED, (delivery_id, ids)).fetchall()
        _log_attempts(cursor, channel, updated, started, "delivered", delivery_id, None)


def record_failed(
    connection: Connection,
    channel: str,
    ids: list[int],
    error: str,
    started: datetime,
    backoff: tuple[float, float],
) -> None:
    """Count a failed try and schedule the next: `backoff` = (base, cap) seconds, doubling
    with each attempt."""
    base, cap = backoff
    with connection.transaction(), connection.cursor() as cursor:
        updated = cursor.execute(_FAILED, (error[:2000], base, cap, ids)).fetchall()
        _log_attempts(cursor, channel, updated, started, "failed", None, error[:2000])


def _log_attempts(
    cursor: psycopg.Cursor[TupleRow],
    channel: str,
    updated: list[TupleRow],
    started: datetime,
    outcome: str,
    delivery_id: str | None,
    error: str | None,
) -> None:
    if not updated:
        return
    ids = [row[0] for row in updated]
    attempts = [row[1] for row in updated]
    cursor.execute(_ATTEMPT, (channel, started, outcome, delivery_id, error, ids, attempts))
