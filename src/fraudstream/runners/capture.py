"""`fraudstream capture run`: a PostgreSQL table's inserted rows, by logical replication, into
the transactions topic (see `DESIGN.md`, "Capture from PostgreSQL is logical replication").

Every session (a connection to the source, started again after any failure with capped
backoff) first makes sure of the setup, all of it idempotent: topics and migrations, the table
and its column mapping, the publication, the slot and the stored position; with a snapshot
requested (or one left unfinished) it takes the initial snapshot; then it streams from the
stored position (`capture_stream.StreamReader`).

Snapshot: the slot is created exporting a snapshot, the position is stored at the slot's
consistent point as `pending`, the rows that snapshot sees are produced and confirmed, and the
position becomes `done`; the stream then starts at that very point, so each row is in the
snapshot or in the stream. A snapshot cut short (crash, stop) cannot be resumed - its exported
snapshot is gone - so the next start drops the slot and takes a new one (rows already produced
are produced again; the transaction id absorbs them downstream). Its dead letters are keyed
(`postgres:<table>:snapshot`, row ordinal, consistent point).

A configuration the capture cannot serve (no such table, a mapped column missing, updates to
emit without a replica identity, a slot dropped behind its back) raises `CaptureError`: the
process exits and says what to change, instead of retrying forever.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Final

import psycopg
import psycopg2
from confluent_kafka import KafkaException

from fraudstream.adapters.cdc import CaptureError, CaptureSource, SourceTable, TableInfo
from fraudstream.adapters.cdc_positions import Position, PositionStore, Progress
from fraudstream.adapters.kafka import DeliveryError
from fraudstream.adapters.kafka_sinks import DeadLetterTopicSink
from fraudstream.adapters.pg_values import format_lsn
from fraudstream.adapters.postgres import PostgresSink
from fraudstream.config import Settings
from fraudstream.ports import SinkUnavailable
from fraudstream.runners.capture_rows import Captured, RowMapper
from fraudstream.runners.capture_stream import (
    Confirmed,
    Delivery,
    StreamOptions,
    StreamReader,
)
from fraudstream.runners.serve import kafka_client, postgres_url, prepare_pipeline

log = logging.getLogger("fraudstream.capture")

RETRYABLE: Final = (
    psycopg2.Error, psycopg.Error, SinkUnavailable, DeliveryError, KafkaException, OSError,
)  # fmt: skip
"""Failures of a server or the network: the session starts again from the stored position."""
STATUS_INTERVAL_S: Final = 10.0
_FIRST_BACKOFF_S: Final = 0.2
_SNAPSHOT_BATCH: Final = 2000


def source_of(settings: Settings) -> CaptureSource:
    """The capture's table, slot and publication on its source database."""
    capture = settings.capture
    configured = capture.source_url
    url = postgres_url(settings) if configured is None else configured.get_secret_value()
    return CaptureSource(
        url,
        SourceTable.parse(capture.qualified_table),
        capture.slot_name,
        capture.publication_name,
    )


class Capture:
    """Streams the configured table into Kafka until stopped (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        snapshot: bool | None = None,
        on_confirmed: Confirmed | None = None,
    ) -> None:
        capture = settings.capture
        self._settings = settings
        self._source = source_of(settings)
        self._positions = PositionStore(postgres_url(settings))
        self._mapper = RowMapper(capture.columns, capture.id_prefix)
        kafka = kafka_client(settings)
        self._delivery = Delivery(
            kafka,
            settings.kafka.transactions_topic,
            settings.kafka.linger_ms,
            [
                PostgresSink(postgres_url(settings)),
                DeadLetterTopicSink(kafka, settings.kafka.dead_letters_topic),
            ],
        )
        self._snapshot = capture.snapshot if snapshot is None else snapshot
        self._on_confirmed = on_confirmed
        self._prepared = False
        self.totals = Progress()
        self.sessions = 0

    @property
    def source_name(self) -> str:
        return f"postgres:{self._source.table}"

    def run(self, stop: threading.Event) -> Progress:
        """Capture until `stop` is set; returns what this process captured."""
        backoff = _FIRST_BACKOFF_S
        try:
            while not stop.is_set():
                try:
                    before = self.totals.transactions
                    self._session(stop)
                except RETRYABLE as error:
                    self._delivery.discard()
                    if self.totals.transactions > before:
                        backoff = _FIRST_BACKOFF_S
                    log.warning("%s; starting again in %.1f s", _reason(error), backoff)
                    if stop.wait(backoff):
                        break
                    backoff = min(2 * backoff, self._settings.capture.retry_backoff_max_s)
        finally:
            self.close()
        return self.totals

    def close(self) -> None:
        """Let go of the producer and the connections (what was produced is flushed)."""
        self._delivery.close()
        self._positions.close()

    def prepare(self, stop: threading.Event | None = None) -> Position | None:
        """Topics, schema, publication, slot and position ready, and the snapshot taken when
        one is due; returns the position to stream from (None: `stop` cut the snapshot
        short, and the next start takes it again)."""
        if not self._prepared:
            prepare_pipeline(self._settings)
            self._prepared = True
        info = self._checked_table()
        publish = ("insert", "update", "delete", "truncate") if info.has_identity else (
            "insert", "truncate",
        )  # fmt: skip
        self._source.ensure_publication(publish)
        if not self._ensure_slot(info, stop or threading.Event()):
            return None
        return self._positions.load(self._source.slot)

    def _session(self, stop: threading.Event) -> None:
        position = self.prepare(stop)
        if position is None:
            return  # stopped during the snapshot: it is taken again on the next start
        stream = self._source.open_stream(position.lsn, STATUS_INTERVAL_S)
        self.sessions += 1
        log.info(
            "streaming %s from %s (slot %s, publication %s)", self._source.table,
            format_lsn(position.lsn), self._source.slot, self._source.publication,
        )  # fmt: skip
        capture = self._settings.capture
        options = StreamOptions(
            slot=self._source.slot,
            source=self.source_name,
            on_update=capture.on_update,
            max_batch_rows=capture.max_batch_rows,
            max_wait_s=capture.max_wait_ms / 1000,
        )
        reader = StreamReader(
            stream, self._mapper, self._delivery, self._positions, options, self._confirmed
        )
        try:
            reader.run(stop)
        finally:
            stream.close()

    def _confirmed(self, lsn: int, progress: Progress) -> None:
        self.totals.add(progress)
        if self._on_confirmed is not None:
            self._on_confirmed(lsn, progress)

    def _checked_table(self) -> TableInfo:
        info = self._source.describe()
        missing = self._mapper.plan(info.relation).missing
        if missing:
            columns = self._settings.capture.columns
            raise CaptureError(
                f"capture.columns: table {self._source.table} has no column "
                + ", ".join(f"{columns[field]!r} (for {field})" for field in missing)
            )
        if self._settings.capture.on_update == "emit" and not info.has_identity:
            raise CaptureError(
                f"capture.on_update = emit: table {self._source.table} needs a primary key or "
                "REPLICA IDENTITY FULL, or PostgreSQL would refuse its updates once published"
            )
        return info

    def _ensure_slot(self, info: TableInfo, stop: threading.Event) -> bool:
        """The slot and its stored position exist (snapshot taken if due); False if `stop`
        cut a snapshot short."""
        slot = self._source.slot
        position = self._positions.load(slot)
        state = self._source.slot_state()
        found = None if state is None else (state.slot_type, state.plugin, state.database)
        if found not in (None, ("logical", "pgoutput", info.database)):
            raise CaptureError(
                f"capture.slot: {slot} exists, but is not a pgoutput slot of database "
                f"{info.database} (type, plugin, database: {found})"
            )
        pending = position is not None and position.snapshot == "pending"
        redo = position is None or position.snapshot != "done" or state is None
        wanted = self._snapshot and redo
        if pending or wanted:
            done = self._take_snapshot(info, stop)
            self._snapshot = not done
            return done
        if state is None:
            if position is not None:
                raise CaptureError(
                    f"slot {slot} is gone although changes up to {format_lsn(position.lsn)} "
                    "were captured: changes since may be lost. Run `fraudstream capture run "
                    "--snapshot` to capture the table again, or `fraudstream capture remove`."
                )
            with self._source.create_slot(export_snapshot=False) as (lsn, _):
                self._positions.start(slot, str(self._source.table), lsn, "none")
            log.info("created slot %s at %s", slot, format_lsn(lsn))
        elif position is None:
            lsn = state.confirmed_flush_lsn or 0
            self._positions.start(slot, str(self._source.table), lsn, "none")
        if self._snapshot:
            log.info("snapshot of slot %s already taken: streaming on", slot)
            self._snapshot = False
        return True

    def _take_snapshot(self, info: TableInfo, stop: threading.Event) -> bool:
        """A new slot exporting a snapshot, and that snapshot's rows produced and confirmed."""
        if self._source.drop_slot():
            log.info("dropped slot %s to take a new snapshot", self._source.slot)
        with self._source.create_slot(export_snapshot=True) as (lsn, snapshot):
            assert snapshot is not None
            self._positions.start(self._source.slot, str(self._source.table), lsn, "pending")
            log.info("snapshot of %s as of %s", self._source.table, format_lsn(lsn))
            progress = self._produce_snapshot(info, snapshot, lsn, stop)
        if progress is None:
            return False
        self._delivery.confirm()
        self._positions.advance(self._source.slot, lsn, progress, snapshot="done")
        self._confirmed(lsn, progress)
        log.info("snapshot done: %s rows, %s rejected", progress.rows_captured,
                 progress.rows_rejected)  # fmt: skip
        return True

    def _produce_snapshot(
        self, info: TableInfo, snapshot: str, lsn: int, stop: threading.Event
    ) -> Progress | None:
        plan = self._mapper.plan(info.relation)
        source = f"{self.source_name}:snapshot"
        progress = Progress()
        ordinal = 0
        now = datetime.now(UTC)
        with self._source.snapshot_rows(snapshot, info.relation, _SNAPSHOT_BATCH) as chunks:
            for rows in chunks:
                if stop.is_set():
                    return None
                for values in rows:
                    record = self._mapper.record(plan, values)
                    result = self._mapper.map(record, (source, ordinal, lsn), now)
                    ordinal += 1
                    if isinstance(result, Captured):
                        self._delivery.send(result)
                        progress.rows_captured += 1
                    else:
                        self._delivery.reject(result)
                        progress.rows_rejected += 1
        return progress


def _reason(error: BaseException) -> str:
    """The first line of an error: names the server, never a password or a row."""
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first}"


def run_capture(settings: Settings, stop: threading.Event, snapshot: bool | None) -> Progress:
    """Capture until `stop`; logs what was captured."""
    capture = Capture(settings, snapshot=snapshot)
    started = time.monotonic()
    totals = capture.run(stop)
    log.info(
        "stopped after %.0f s: %s transactions, %s rows captured, %s rejected, %s updates, "
        "%s deletes, %s truncates", time.monotonic() - started, totals.transactions,
        totals.rows_captured, totals.rows_rejected, totals.updates, totals.deletes,
        totals.truncates,
    )  # fmt: skip
    return totals
