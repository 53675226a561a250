"""`fraudstream run`, the main job: the whole pipeline on this machine, watched live.

Embedded stack up (or the servers the settings name), topics and schema created, N worker
processes scoring into PostgreSQL (and a Delta Lake history of the decisions), the alert
dispatcher delivering the flagged ones (by default to the `alerts` topic), the Streamlit
dashboard (a child process reading PostgreSQL), the generator publishing a labelled stream at
a target rate, and a live view of what is stored: produced, scored, flagged, dead-lettered,
tx/s, event→decision latency and recall per fraud scenario (the ground truth never leaves this
process). Ends on Ctrl-C, after `duration`, or once every produced message is accounted for;
then everything it started is stopped, the dashboard first.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass

import polars as pl
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from fraudstream.adapters.delta import DEFAULT_TABLE_DIR
from fraudstream.adapters.pipeline_stats import (
    LATENCY_WINDOW_S,
    PipelineStats,
    StoredFigures,
    clear_pipeline_tables,
)
from fraudstream.cli_dashboard import dashboard_url, start_dashboard, stop_dashboard
from fraudstream.config import Settings
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.runners.alerts import AlertDispatcher
from fraudstream.runners.local import ProducerThread, WorkerProcesses
from fraudstream.runners.replay import scenario_report
from fraudstream.runners.serve import prepare_pipeline
from fraudstream.stack import Stack, running_stack_settings
from fraudstream.stack.process import free_port
from fraudstream.views import scenario_table

REFRESH_S = 0.5


@dataclass(frozen=True)
class RunOptions:
    transactions: int
    seed: int
    rate: float
    workers: int
    duration: float | None
    dashboard: bool = True
    dashboard_port: int | None = None
    """None: any free port."""


@dataclass
class _Progress:
    started: float
    produced: int = 0
    figures: StoredFigures | None = None
    rate: float = 0.0
    _last: tuple[float, int] = (0.0, 0)

    def update(self, produced: int, figures: StoredFigures) -> None:
        now = time.monotonic()
        last_time, last_scored = self._last
        if last_time and now > last_time:
            instant = (figures.scored - last_scored) / (now - last_time)
            self.rate = instant if not self.rate else 0.6 * self.rate + 0.4 * instant
        self._last = (now, figures.scored)
        self.produced, self.figures = produced, figures


def run_pipeline(
    settings: Settings, options: RunOptions, console: Console, stop: threading.Event
) -> int:
    """Run until stopped, finished or out of time; returns the process exit code."""
    stack = Stack(settings)
    with console.status("starting the embedded servers…"):
        stack.start()
    workers: WorkerProcesses | None = None
    producer: ProducerThread | None = None
    alerts: threading.Thread | None = None
    alerts_stop = threading.Event()
    dashboard: subprocess.Popen[bytes] | None = None
    try:
        settings = running_stack_settings(settings)
        endpoints = stack.endpoints()
        settings = with_history(settings, "kafka" in endpoints.embedded, console)
        with console.status("creating topics and schema…"):
            prepare_pipeline(settings)
            if "postgres" in endpoints.embedded:
                clear_pipeline_tables(endpoints.postgres_url)  # the demo's scratch database
        if options.dashboard:
            dashboard = _start_dashboard(settings, options.dashboard_port, console)
        with console.status(f"simulating {options.transactions:,} labelled transactions…"):
            stream = generate(
                GeneratorConfig(seed=options.seed, n_transactions=options.transactions)
            )
        workers = WorkerProcesses(settings, options.workers, settings.stack.data_dir / "logs")
        workers.start()
        alerts = _start_dispatcher(settings, alerts_stop)
        with console.status(f"waiting for {options.workers} workers to join the group…"):
            if not workers.wait_assigned(60):
                console.print("[red]workers did not all get partitions: see their logs[/red]")
                return 1
        producer = ProducerThread(
            endpoints.kafka,
            settings.kafka.transactions_topic,
            stream.transactions,
            options.rate,
            settings.kafka.linger_ms,
        )
        producer.start()
        progress = _watch(
            options, stream.labels, producer, workers, endpoints.postgres_url, console, stop
        )
        return 0 if producer.error is None and progress else 1
    finally:
        with console.status("stopping workers and servers…"):
            if dashboard is not None:
                stop_dashboard(dashboard)
            if producer is not None:
                producer.stop()
                producer.join(timeout=30)
            codes = workers.stop() if workers is not None else []
            alerts_stop.set()
            if alerts is not None:
                alerts.join(timeout=30)
            stack.stop()
        console.print(f"workers exited with {codes}; nothing embedded is left running")


def _start_dashboard(
    settings: Settings, port: int | None, console: Console
) -> subprocess.Popen[bytes]:
    """The dashboard server, on `port` or any free one; its URL printed before the live view
    (it is up a few seconds later), its output in the logs beside the workers'."""
    port = port or free_port()
    log = settings.stack.data_dir / "logs" / "dashboard.log"
    process = start_dashboard(settings, port, log)
    console.print(f"dashboard: {dashboard_url('127.0.0.1', port)} (log: {log})")
    return process


def _start_dispatcher(settings: Settings, stop: threading.Event) -> threading.Thread:
    """The alert dispatcher, in a thread of this process (it mostly waits on I/O)."""
    dispatcher = AlertDispatcher(settings)
    thread = threading.Thread(target=dispatcher.run, args=(stop,), name="alerts", daemon=True)
    thread.start()
    return thread


def with_history(settings: Settings, fresh_log: bool, console: Console) -> Settings:
    """Settings whose workers write the Delta history: to `history.delta_path` when set, else
    to `stack.data_dir/history/decisions`. A fresh log (the embedded broker's) numbers its
    offsets from 0 again, which the table's versions would take as written already (see
    `adapters/delta.py`); so with one, that default table is started over, like the scratch
    database."""
    history = settings.history
    if history.delta_path is not None:
        if fresh_log:
            console.print(
                "[yellow]history.delta_path with the embedded broker: its offsets start over "
                "every run, so give each run a new table[/yellow]"
            )
        return settings
    path = (settings.stack.data_dir / DEFAULT_TABLE_DIR).resolve()
    if fresh_log:
        shutil.rmtree(path, ignore_errors=True)
    console.print(f"decision history: Delta table {path}")
    return settings.model_copy(
        update={"history": history.model_copy(update={"delta_path": str(path)})}
    )


def _watch(
    options: RunOptions,
    labels: pl.DataFrame,
    producer: ProducerThread,
    workers: WorkerProcesses,
    postgres_url: str,
    console: Console,
    stop: threading.Event,
) -> bool:
    """The live view; returns whether every produced message was accounted for."""
    stats = PipelineStats(postgres_url)
    progress = _Progress(started=time.monotonic())
    deadline = None if options.duration is None else progress.started + options.duration
    finished = False
    try:
        with Live(console=console, refresh_per_second=4) as live:
            while not stop.is_set():
                progress.update(producer.report.sent, stats.figures())
                recall = _recall(labels, stats.flagged_ids(), progress.produced)
                live.update(
                    Group(
                        _figures_table(progress, options, workers),
                        scenario_table(recall, "Detection so far against the ground truth"),
                    )
                )
                finished = _all_accounted(progress, producer)
                if finished or producer.error or (deadline and time.monotonic() > deadline):
                    break
                if not workers.alive():
                    console.print("[red]every worker has exited: see the logs[/red]")
                    break
                stop.wait(REFRESH_S)
    finally:
        stats.close()
    if producer.error is not None:
        console.print(f"[red]producer failed:[/red] {producer.error}")
    return finished


def _all_accounted(progress: _Progress, producer: ProducerThread) -> bool:
    figures = progress.figures
    if producer.is_alive() or figures is None:
        return False
    return figures.scored + figures.dead_letters >= progress.produced


def _recall(labels: pl.DataFrame, flagged: list[str], produced: int) -> pl.DataFrame:
    """Recall per scenario among the transactions produced so far (labels are in stream order)."""
    sent = labels.head(produced)
    flags = pl.DataFrame({"transaction_id": flagged}, schema={"transaction_id": pl.String})
    decisions = sent.select("transaction_id").with_columns(
        is_flagged=pl.col("transaction_id").is_in(flags.get_column("transaction_id"))
    )
    return scenario_report(decisions, sent)


def _figures_table(progress: _Progress, options: RunOptions, workers: WorkerProcesses) -> Table:
    figures = progress.figures
    table = Table(title=f"fraudstream — {workers.alive()} workers scoring the transactions topic")
    columns = (
        "produced",
        "scored",
        "flagged",
        "dead letters",
        "alerts sent",
        "tx/s",
        "p50 latency",
        "p99 latency",
    )
    for column in columns:
        table.add_column(column, justify="right")
    if figures is None:
        return table
    table.add_row(
        f"{progress.produced:,} / {options.transactions:,}",
        f"{figures.scored:,}",
        f"{figures.flagged:,}",
        f"{figures.dead_letters:,}",
        f"{figures.alerts_delivered:,}",
        f"{progress.rate:,.0f}",
        _ms(figures.latency_p50_s),
        _ms(figures.latency_p99_s),
    )
    table.caption = f"latency: event published → decided, over the last {LATENCY_WINDOW_S} s"
    return table


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"
