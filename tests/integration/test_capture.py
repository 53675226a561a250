"""`fraudstream capture` on real servers: a `payments` table's inserts into Kafka, scored by
workers into PostgreSQL, through kills of the capture and a crash of the database."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from capture_helpers import (
    INSERT_RANGE,
    PAYMENTS,
    CaptureProcess,
    capture_settings,
    drop_slots,
    read_topic,
)
from pipeline_helpers import TestPipeline, fresh_pipeline, wait_for
from typer.testing import CliRunner

from fraudstream.adapters.cdc import CaptureError
from fraudstream.adapters.cdc_positions import PositionStore
from fraudstream.cli import app
from fraudstream.config import Settings
from fraudstream.runners.capture import Capture
from fraudstream.runners.local import worker_environment
from fraudstream.stack import Endpoints, Stack

TOTAL = 10_000
PER_TRANSACTION = 100
BAD_ROWS = {
    30: "('bad-amount', now(), -5, 'card-1', 'm-1', 'EUR')",
    60: "('bad-currency', now(), 5, 'card-1', 'm-1', 'XXQ')",
}
"""Transaction number -> a row the core rejects, inserted with that transaction's rows."""
KILL_CAPTURE_AT = (0.15, 0.4, 0.7)
RESTART_DATABASE_AT = 0.55
"""Fractions of the rows captured (as the capture stored them) at each crash."""


class Inserter(threading.Thread):
    """A core banking system: 10 000 payments in transactions of 100, some updated and
    deleted later, going on through a database restart."""

    def __init__(self, url: str, pause_s: float) -> None:
        super().__init__(name="inserter", daemon=True)
        self._url = url
        self._pause_s = pause_s
        self.updates = 0
        self.deletes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for number, first in enumerate(range(1, TOTAL + 1, PER_TRANSACTION)):
                self._retrying(number, first, first + PER_TRANSACTION - 1)
                time.sleep(self._pause_s)
        except BaseException as error:  # reported to the test, not lost in a thread
            self.error = error

    def _retrying(self, number: int, first: int, last: int) -> None:
        deadline = time.monotonic() + 90
        while True:
            try:
                with psycopg.connect(self._url, connect_timeout=2) as connection:
                    self._transaction(connection, number, first, last)
                return
            except psycopg.OperationalError:  # the database is restarting: the same again
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _transaction(
        self, connection: psycopg.Connection[tuple[object, ...]], number: int, first: int, last: int
    ) -> None:
        connection.execute(INSERT_RANGE, (first, last))
        if number in BAD_ROWS:
            connection.execute(
                "INSERT INTO payments (payment_ref, booked_at, amount, card_token, merchant,"
                f" currency) VALUES {BAD_ROWS[number]} ON CONFLICT DO NOTHING"
            )
        if number % 10 == 5:  # correct three earlier payments, cancel one
            refs = [f"p-{first - offset}" for offset in (1, 2, 3)]
            connection.execute(
                "UPDATE payments SET amount = amount + 1000, status = 'corrected'"
                " WHERE payment_ref = ANY(%s)",
                (refs,),
            )
            connection.execute("DELETE FROM payments WHERE payment_ref = %s", (f"p-{first - 4}",))
        connection.commit()
        if number % 10 == 5:
            self.updates += 3
            self.deletes += 1


def stored_progress(url: str) -> int:
    """Rows the capture has stored as captured; 0 while the database is away."""
    try:
        with psycopg.connect(url, connect_timeout=2) as connection:
            row = connection.execute("SELECT rows_captured FROM capture_positions").fetchone()
    except psycopg.Error:
        return 0
    return 0 if row is None else int(str(row[0]))


def test_capture_killed_three_times_and_a_database_crash_lose_and_double_nothing(
    stack: Stack, endpoints: Endpoints, tmp_path: Path
) -> None:
    postgres = stack.postgres
    assert postgres is not None, "the test stack embeds PostgreSQL"
    with fresh_pipeline(endpoints, tmp_path, state="memory") as pipeline:
        url = pipeline.postgres_url
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(PAYMENTS)
        settings = capture_settings(pipeline.settings, max_batch_rows=500)
        capture = CaptureProcess(settings, pipeline.log_dir / "capture.log")
        workers = pipeline.workers(1)
        inserter = Inserter(url, pause_s=0.1)

        def progress_past(fraction: float, mark: int) -> int:
            """Wait until the capture stored `fraction` of the rows, and more than `mark`
            (so the process running now has confirmed rows itself); returns the progress."""
            wait_for(
                lambda: stored_progress(url) >= max(fraction * TOTAL, mark + 1),
                90,
                f"{fraction:.0%} of the rows captured",
            )
            return stored_progress(url)

        try:
            capture.start()
            workers.start()
            wait_for(lambda: _slot_exists(url, settings.capture.slot_name), 60, "the slot")
            inserter.start()
            mark = 0
            for number, fraction in enumerate(KILL_CAPTURE_AT):
                mark = progress_past(fraction, mark)
                capture.kill()
                capture.start()
                if number == 1:
                    mark = progress_past(RESTART_DATABASE_AT, mark)
                    postgres.kill()  # a crash: the slot restarts from its last checkpoint
                    postgres.start(60)
            inserter.join(120)
            assert inserter.error is None and not inserter.is_alive()
            wait_for(lambda: pipeline.count("transactions") >= TOTAL, 120, "every row scored")
            wait_for(lambda: stored_progress(url) >= TOTAL, 30, "the capture's last batch")
        finally:
            code = capture.stop()
            worker_codes = workers.stop()
            drop_slots(url)
        assert code == 0, "SIGTERM: finish the transaction in hand, acknowledge, exit 0"
        assert worker_codes == [0]
        _check_stored(pipeline, inserter)
        log = capture.log.read_text()
    assert log.count("streaming public.payments from") >= len(KILL_CAPTURE_AT) + 2
    assert "starting again" in log, "the database crash should have been noticed and survived"


def _check_stored(pipeline: TestPipeline, inserter: Inserter) -> None:
    rows = pipeline.query("SELECT transaction_id, amount FROM transactions")
    stored = {str(transaction_id): amount for transaction_id, amount in rows}
    expected = {f"p-{i}": (i % 700) + 0.25 for i in range(1, TOTAL + 1)}
    assert stored == expected, "each payment once, as inserted (updates ignored)"
    letters = pipeline.query(
        "SELECT topic, field, error, convert_from(raw, 'UTF8') FROM dead_letters ORDER BY field"
    )
    assert [(topic, field) for topic, field, _, _ in letters] == [
        ("postgres:public.payments", "amount"),
        ("postgres:public.payments", "currency"),
    ]
    assert ">= 0.0" in str(letters[0][2]) and "XXQ" in str(letters[1][2])
    assert json.loads(str(letters[0][3]))["transaction_id"] == "bad-amount"
    [counters] = pipeline.query(
        "SELECT rows_captured, rows_rejected, updates, deletes FROM capture_positions"
    )
    captured, rejected, updates, deletes = (int(str(value)) for value in counters)
    assert (captured, rejected) == (TOTAL, len(BAD_ROWS)), "each row counted once, crashes or not"
    assert updates >= inserter.updates == 30 and deletes >= inserter.deletes == 10


def _slot_exists(url: str, slot: str) -> bool:
    with psycopg.connect(url) as connection:
        found = connection.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    return found is not None


def test_snapshot_then_stream_updates_emitted_deletes_ignored_bad_rows_dead_lettered(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    with fresh_pipeline(endpoints, tmp_path) as pipeline:
        url = pipeline.postgres_url
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(PAYMENTS)
            connection.execute(INSERT_RANGE, (1, 300))
            connection.execute(
                "INSERT INTO payments (payment_ref, booked_at, amount, card_token)"
                " VALUES ('too-much', now(), 20000000, 'card-1')"
            )
        settings = capture_settings(pipeline.settings, on_update="emit")
        store = PositionStore(url)
        capture = Capture(settings, snapshot=True)
        stop = threading.Event()
        runner = threading.Thread(target=capture.run, args=(stop,), daemon=True)
        try:
            runner.start()
            wait_for(lambda: _snapshot_done(store, settings.capture.slot_name), 60, "snapshot")
            _change_the_table(url)
            wait_for(lambda: capture.totals.rows_captured >= 300 + 200 + 10 + 1, 60, "the stream")
        finally:
            stop.set()
            runner.join(30)
            if runner.is_alive() or capture.totals.rows_captured < 511:
                drop_slots(url)  # a failure: let the database go anyway
        assert not runner.is_alive()
        totals = capture.totals
        assert (totals.rows_captured, totals.rows_rejected) == (511, 2)
        assert (totals.updates, totals.deletes, totals.truncates) == (10, 5, 1)

        messages = read_topic(endpoints.kafka, settings.kafka.transactions_topic, 511)
        values = [json.loads(message.value() or b"") for message in messages]
        seen = Counter(value["transaction_id"] for value in values)
        assert len(values) == 511 and len(seen) == 501
        assert {ref for ref, count in seen.items() if count == 2} == {
            f"p-{i}" for i in range(1, 11)
        }
        corrected = [v["amount"] for v in values if v["transaction_id"] == "p-3"]
        assert corrected == [3.25, 1003.25], "the new row version follows the first"
        keys = {(message.key() or b"").decode() for message in messages}
        assert keys == {value["card_ref"] for value in values}, "keyed by card"

        letters = pipeline.query("SELECT topic, field FROM dead_letters ORDER BY topic")
        assert letters == [
            ("postgres:public.payments", "card_ref"),
            ("postgres:public.payments:snapshot", "amount"),
        ]
        dead = read_topic(endpoints.kafka, settings.kafka.dead_letters_topic, 2)
        fields = sorted(str(dict(m.headers() or []).get("field")) for m in dead)
        assert fields == ["b'amount'", "b'card_ref'"]
        assert all(b"4111" not in (m.value() or b"") for m in dead), "card numbers are masked"
        _status_and_remove(settings, url)
        store.close()


def _snapshot_done(store: PositionStore, slot: str) -> bool:
    position = store.load(slot)
    return position is not None and position.snapshot == "done"


def _change_the_table(url: str) -> None:
    """200 new rows in four transactions, a full card number, 10 updates, 5 deletes, a row
    under a replication origin (an Origin message), and a truncate."""
    with psycopg.connect(url, autocommit=True) as connection:
        for first in range(301, 501, 50):
            connection.execute(INSERT_RANGE, (first, first + 49))
        connection.execute(
            "INSERT INTO payments (payment_ref, booked_at, amount, card_token)"
            " VALUES ('leaked', now(), 10, '4111111111111111')"
        )
        connection.execute(
            "UPDATE payments SET amount = amount + 1000 WHERE payment_ref = ANY(%s)",
            ([f"p-{i}" for i in range(1, 11)],),
        )
        connection.execute("DELETE FROM payments WHERE id BETWEEN 20 AND 24")
        connection.execute("SELECT pg_replication_origin_create('test_origin')")
        with connection.transaction():
            connection.execute("SELECT pg_replication_origin_session_setup('test_origin')")
            connection.execute("SELECT pg_replication_origin_xact_setup('0/AB', now())")
            connection.execute(
                "INSERT INTO payments (payment_ref, booked_at, amount, card_token)"
                " VALUES ('origin-1', now(), 3, 'card-77')"
            )
            connection.execute("SELECT pg_replication_origin_session_reset()")
        connection.execute("SELECT pg_replication_origin_drop('test_origin')")
        connection.execute("TRUNCATE payments")


def _status_and_remove(settings: Settings, url: str) -> None:
    environment = worker_environment(settings)
    runner = CliRunner()
    status = runner.invoke(app, ["capture", "status"], env=environment)
    assert status.exit_code == 0, status.output
    slot = environment["FRAUDSTREAM_CAPTURE__SLOT"]
    shown = " ".join(status.output.split())
    assert f"{slot} * │ no" in shown and "retained WAL" in shown
    assert "snapshot done; 9 transactions, 511 rows captured, 2 rejected, 10 updates" in shown

    removed = runner.invoke(app, ["capture", "remove", "--yes"], env=environment)
    assert removed.exit_code == 0, removed.output
    assert "dropped" in removed.output and "forgotten" in removed.output
    with psycopg.connect(url) as connection:
        assert not _slot_exists(url, slot)
        publication = connection.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (slot,))
        assert publication.fetchone() is None
        assert connection.execute("SELECT count(*) FROM capture_positions").fetchone() == (0,)


def test_a_table_without_a_key_is_captured_without_breaking_its_updates(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    with fresh_pipeline(endpoints, tmp_path) as pipeline:
        url = pipeline.postgres_url
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(
                "CREATE TABLE ledger (ref text, booked_at timestamptz, amount numeric, card text)"
            )
        base = capture_settings(pipeline.settings, table="ledger")
        mapping = {"transaction_id": "ref", "timestamp": "booked_at", "card_ref": "card"}
        settings = capture_settings(pipeline.settings, table="ledger", columns=mapping)
        try:
            with pytest.raises(CaptureError, match="payment_ref"):
                _prepare(base)
            emit = capture_settings(pipeline.settings, table="ledger", columns=mapping,
                                    on_update="emit")  # fmt: skip
            with pytest.raises(CaptureError, match="primary key"):
                _prepare(emit)
            _prepare(settings)
            with psycopg.connect(url, autocommit=True) as connection:
                connection.execute("INSERT INTO ledger VALUES ('l-1', now(), 5, 'c-1')")
                updated = connection.execute("UPDATE ledger SET amount = 6").rowcount
                deleted = connection.execute("DELETE FROM ledger").rowcount
                operations = connection.execute(
                    "SELECT pubinsert, pubupdate, pubdelete FROM pg_publication WHERE pubname = %s",
                    (settings.capture.publication_name,),
                ).fetchone()
        finally:
            drop_slots(url)
        assert (updated, deleted) == (1, 1), "the source's own updates and deletes still work"
        assert operations == (True, False, False)


def test_the_embedded_server_takes_replication_connections_from_a_plain_role(
    endpoints: Endpoints,
) -> None:
    """wal_level is logical, and pg_hba lets a non-superuser role with REPLICATION stream."""
    role = "capture_role"
    admin = endpoints.postgres_url
    with psycopg.connect(admin, autocommit=True) as connection:
        assert connection.execute("SHOW wal_level").fetchone() == ("logical",)
        connection.execute(f"DROP ROLE IF EXISTS {role}")
        connection.execute(f"CREATE ROLE {role} LOGIN REPLICATION")
    import psycopg2.extras

    plain = admin.replace("postgres@", f"{role}@", 1)
    replication = psycopg2.connect(
        plain, connection_factory=psycopg2.extras.LogicalReplicationConnection
    )
    try:
        cursor = replication.cursor()
        cursor.execute("CREATE_REPLICATION_SLOT fs_probe TEMPORARY LOGICAL pgoutput")
        assert cursor.fetchone()[0] == "fs_probe"
    finally:
        replication.close()
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"DROP ROLE {role}")


def _prepare(settings: Settings) -> None:
    capture = Capture(settings)
    try:
        capture.prepare()
    finally:
        capture.close()
