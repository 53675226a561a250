"""`fraudstream` command line: run, worker, demo, generate, stack, produce, rules; backtest,
train and models live in `cli_models`, alerts in `cli_alerts`, history in `cli_history`,
report in `cli_report`, dashboard in `cli_dashboard`."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit, urlunsplit

import typer
from rich.live import Live
from rich.table import Table

from fraudstream.cli_alerts import alerts_app
from fraudstream.cli_api import api_app
from fraudstream.cli_capture import capture_app
from fraudstream.cli_dashboard import dashboard
from fraudstream.cli_history import history_app
from fraudstream.cli_lists import lists_app
from fraudstream.cli_models import backtest, models_app, train
from fraudstream.cli_report import report
from fraudstream.cli_spark import spark
from fraudstream.cli_support import console, engine_for, settings_or_exit
from fraudstream.core.engine import Decisions, available_columns
from fraudstream.core.errors import FraudstreamError
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import compile_ruleset, parse_ruleset
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.generator.output import write_jsonl, write_labels, write_parquet
from fraudstream.runners.replay import ReplayProgress, replay, scenario_report
from fraudstream.views import scenario_table

if TYPE_CHECKING:
    from fraudstream.stack import Endpoints

app = typer.Typer(help="Real-time payment fraud scoring.", no_args_is_help=True)
rules_app = typer.Typer(help="Check and inspect rulesets.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


def _live_table(progress: ReplayProgress, total: int) -> Table:
    table = Table(title="fraudstream — scoring a labelled stream", expand=False)
    for column in ("processed", "tx/s (engine)", "approve", "review", "decline", "flagged"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{progress.processed:,} / {total:,}",
        f"{progress.rate:,.0f}",
        f"{progress.actions['approve']:,}",
        f"{progress.actions['review']:,}",
        f"{progress.actions['decline']:,}",
        f"{progress.flagged:,}",
    )
    return table


@app.command()
def demo(
    transactions: Annotated[int, typer.Option(help="How many transactions to simulate.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Simulation seed (same seed, same stream).")] = 7,
    batch_size: Annotated[int, typer.Option(help="Micro-batch size.")] = 1000,
    rules: Annotated[Path | None, typer.Option(help="Ruleset YAML (default: shipped).")] = None,
) -> None:
    """Generate a labelled stream, score it in event-time order, show live and final figures."""
    config = FeatureConfig()
    try:
        engine = engine_for(rules, config)
    except FraudstreamError as error:
        console.print(f"[red]ruleset rejected:[/red] {error}")
        raise typer.Exit(2) from None
    with console.status("simulating the card population and its transactions…"):
        stream = generate(GeneratorConfig(seed=seed, n_transactions=transactions))
    total = stream.transactions.height
    console.print(f"generated {total:,} transactions, ruleset {engine.ruleset.version}")
    state = FeatureState(config)
    with Live(_live_table(ReplayProgress(), total), console=console, refresh_per_second=8) as live:

        def show(progress: ReplayProgress, _: Decisions) -> None:
            live.update(_live_table(progress, total))

        decisions, progress = replay(stream.transactions, engine, state, batch_size, show)
    report = scenario_report(decisions, stream.labels)
    console.print(scenario_table(report, "Detection against the ground truth"))
    stats = state.stats()
    console.print(
        f"throughput {progress.rate:,.0f} tx/s (engine time {progress.elapsed_s:.2f} s) · "
        f"state {stats.memory_bytes / 1e6:.1f} MB for {stats.entities['card']:,} live cards · "
        f"late events {stats.late_events} · replays {stats.replayed_events}"
    )


@app.command("generate")
def generate_command(
    out: Annotated[Path, typer.Argument(help="Output file: .jsonl or .parquet")],
    transactions: Annotated[int, typer.Option()] = 100_000,
    seed: Annotated[int, typer.Option()] = 7,
) -> None:
    """Write a labelled stream to JSON lines (events only) or Parquet (events with labels)."""
    stream = generate(GeneratorConfig(seed=seed, n_transactions=transactions))
    if out.suffix == ".parquet":
        write_parquet(stream, out)
    else:
        write_jsonl(stream, out)
        write_labels(stream, out.with_suffix(".labels.parquet"))
    console.print(f"wrote {stream.transactions.height:,} transactions to {out}")


@app.command("stack")
def stack_command(
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")
    ] = None,
) -> None:
    """Start the embedded servers the settings leave unset, show where they are, keep them up."""
    from fraudstream.stack import Stack  # noqa: PLC0415 - the pipeline extras, only when used

    settings = settings_or_exit()
    stack = Stack(settings)
    stopping = _stop_on_signals()
    with console.status("starting the embedded servers…"):
        endpoints = stack.start()
    try:
        table = Table(title=f"fraudstream stack ({settings.stack.data_dir})")
        for column in ("server", "address", "where"):
            table.add_column(column)
        table.add_row("kafka", endpoints.kafka["bootstrap.servers"], _where("kafka", endpoints))
        for name, url in (("postgres", endpoints.postgres_url), ("redis", endpoints.redis_url)):
            table.add_row(name, _hide_password(url), _where(name, endpoints))
        console.print(table)
        console.print(f"other commands of this project find it through {stack.endpoints_file}")
        stopping.wait(duration)
    finally:
        with console.status("stopping…"):
            stack.stop()
        console.print("stopped: nothing embedded is left running")


@app.command()
def produce(
    transactions: Annotated[int, typer.Option(help="How many transactions to simulate.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Simulation seed.")] = 7,
    rate: Annotated[float, typer.Option(help="Target tx/s; 0 = as fast as possible.")] = 2_000,
) -> None:
    """Publish a simulated stream to the transactions topic, keyed by card, delivery checked."""
    from fraudstream.adapters.kafka import TransactionProducer, ensure_topics  # noqa: PLC0415
    from fraudstream.stack import running_stack_settings  # noqa: PLC0415

    settings = running_stack_settings(settings_or_exit())
    kafka = settings.kafka
    if kafka.bootstrap_servers is None:
        console.print(
            "[red]no Kafka:[/red] run `fraudstream stack` in this project, "
            "or set FRAUDSTREAM_KAFKA__BOOTSTRAP_SERVERS"
        )
        raise typer.Exit(2)
    client = kafka.client_config(kafka.bootstrap_servers)
    ensure_topics(client, [kafka.transactions_topic], kafka.partitions)
    stream = generate(GeneratorConfig(seed=seed, n_transactions=transactions))
    with console.status(f"publishing {stream.transactions.height:,} transactions…"):
        producer = TransactionProducer(client, kafka.transactions_topic, kafka.linger_ms)
        report = producer.publish(stream.transactions, rate=rate or None)
    console.print(
        f"delivered {report.sent:,} transactions to {kafka.transactions_topic} "
        f"in {report.elapsed_s:.1f} s ({report.rate:,.0f} tx/s)"
    )


@app.command()
def run(
    transactions: Annotated[int, typer.Option(help="How many transactions to simulate.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Simulation seed.")] = 7,
    rate: Annotated[float, typer.Option(help="Target tx/s; 0 = as fast as possible.")] = 5_000,
    workers: Annotated[int, typer.Option(min=1, help="Scoring worker processes.")] = 1,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: when done).")
    ] = None,
    with_dashboard: Annotated[
        bool, typer.Option("--dashboard/--no-dashboard", help="Serve the live dashboard too.")
    ] = True,
    dashboard_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Dashboard port (default: a free one).")
    ] = None,
) -> None:
    """The main job: stack, topics, schema, N workers, the generator producing, a live view
    in the terminal and the dashboard in the browser."""
    from fraudstream.pipeline_view import RunOptions, run_pipeline  # noqa: PLC0415

    options = RunOptions(
        transactions, seed, rate, workers, duration, with_dashboard, dashboard_port
    )
    code = run_pipeline(settings_or_exit(), options, console, _stop_on_signals())
    raise typer.Exit(code)


@app.command()
def worker(
    name: Annotated[str, typer.Option(help="How this worker signs its log lines.")] = "worker",
) -> None:
    """Score the transactions topic in the worker group until SIGTERM or Ctrl-C, then finish
    the batch in hand, commit and exit 0."""
    stopping = _stop_on_signals()  # first: a SIGTERM while the imports run is a clean stop too
    from fraudstream.runners.serve import serve  # noqa: PLC0415
    from fraudstream.stack import running_stack_settings  # noqa: PLC0415

    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s"
    )
    settings = running_stack_settings(settings_or_exit())
    try:
        totals = serve(settings, stopping, name)
    except FraudstreamError as error:
        logging.getLogger("fraudstream.worker").error("%s", error)
        raise typer.Exit(2) from None
    logging.getLogger("fraudstream.worker").info("stopped cleanly: %s", totals)


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so a stop is a clean shutdown, not a traceback."""
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    return stopping


def _where(name: str, endpoints: Endpoints) -> str:
    return "embedded" if name in endpoints.embedded else "external"


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


@rules_app.command("check")
def rules_check(path: Annotated[Path, typer.Argument(help="Ruleset YAML file")]) -> None:
    """Validate a ruleset file; exit 2 with the culprit named when it is bad."""
    try:
        spec = parse_ruleset(path.read_text())
        ruleset = compile_ruleset(spec, available_columns(FeatureConfig()))
    except FraudstreamError as error:
        console.print(f"[red]rejected:[/red] {error}")
        raise typer.Exit(2) from None
    console.print(f"ok: version {ruleset.version}, {len(ruleset.rules)} enabled rules")


app.command()(backtest)
app.command()(train)
app.command()(report)
app.add_typer(models_app, name="models")
app.add_typer(alerts_app, name="alerts")
app.add_typer(history_app, name="history")
app.add_typer(capture_app, name="capture")
app.add_typer(api_app, name="api")
app.add_typer(lists_app, name="lists")
app.command()(dashboard)
app.command()(spark)
