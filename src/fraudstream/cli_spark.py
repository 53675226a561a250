"""`fraudstream spark`: scoring as a Spark Structured Streaming query (`runners/spark_job.py`)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from fraudstream.cli_support import settings_or_exit
from fraudstream.config import Settings
from fraudstream.core.errors import FraudstreamError

if TYPE_CHECKING:
    from fraudstream.runners.spark_job import BatchSinks

log = logging.getLogger("fraudstream.spark")
_PROGRESS_EVERY_S = 5.0


def spark(
    master: Annotated[
        str | None, typer.Option(help="Spark master URL (default: spark.master, local[*]).")
    ] = None,
    available_now: Annotated[
        bool,
        typer.Option(
            "--available-now", help="Score what the topic holds now, then stop (a batch job)."
        ),
    ] = False,
    source: Annotated[
        Literal["python", "kafka"] | None,
        typer.Option(help="python: the project's Kafka source; kafka: Spark's (needs its jar)."),
    ] = None,
    checkpoint: Annotated[
        str | None, typer.Option(help="Checkpoint location (offsets and state).")
    ] = None,
    max_offsets_per_trigger: Annotated[
        int | None, typer.Option(min=1, help="Most messages per micro-batch.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many seconds.")
    ] = None,
) -> None:
    """Score the transactions topic with Spark until Ctrl-C / SIGTERM (or, with
    --available-now, until the backlog is scored); a restart resumes from the checkpoint."""
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    from fraudstream.runners.serve import prepare_pipeline  # noqa: PLC0415
    from fraudstream.stack import running_stack_settings  # noqa: PLC0415

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)
    overrides = {
        "master": master,
        "source": source,
        "checkpoint_dir": checkpoint,
        "max_offsets_per_trigger": max_offsets_per_trigger,
    }
    settings = _with_spark(running_stack_settings(settings_or_exit()), overrides)
    try:
        prepare_pipeline(settings)
        code = _run(settings, stopping, available_now=available_now, duration=duration)
    except FraudstreamError as error:
        log.error("%s", error)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _with_spark(settings: Settings, overrides: dict[str, object]) -> Settings:
    given = {key: value for key, value in overrides.items() if value is not None}
    return settings.model_copy(update={"spark": settings.spark.model_copy(update=given)})


def _run(
    settings: Settings, stopping: threading.Event, *, available_now: bool, duration: float | None
) -> int:
    """Run the query until it ends, fails, is stopped, or `duration` passes; 0 unless it failed."""
    from fraudstream.runners.spark_job import (  # noqa: PLC0415 - Spark loads only here
        BatchSinks,
        checkpoint_location,
        spark_session,
        start_query,
    )

    started = time.monotonic()
    session = spark_session(settings)
    log.info("Spark session up in %.1f s (%s)", time.monotonic() - started, settings.spark.master)
    sinks = BatchSinks(settings, stopping)
    try:
        query = start_query(session, settings, sinks, available_now=available_now)
        log.info("query running; checkpoint %s", checkpoint_location(settings))
        deadline = None if duration is None else time.monotonic() + duration
        reported = 0.0
        while query.isActive and not stopping.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            stopping.wait(0.5)
            if time.monotonic() - reported >= _PROGRESS_EVERY_S:
                reported = time.monotonic()
                log.info("%s", _progress(sinks))
        if query.isActive:
            query.stop()
        failure = query.exception()
    finally:
        sinks.close()
        session.stop()
    log.info("stopped: %s", _progress(sinks))
    if failure is not None:
        log.error("the query failed: %s", failure)
        return 1
    return 0


def _progress(sinks: BatchSinks) -> str:
    totals = sinks.totals
    return (
        f"{totals.batches} batches, {totals.scored} scored, {totals.flagged} flagged,"
        f" {totals.dead_letters} dead letters"
    )
