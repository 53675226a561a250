"""Commands for models and their evidence: backtest, train, and the `models` registry."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from fraudstream.cli_support import console, database_url, engine_for, pair, settings_or_exit
from fraudstream.core.errors import FraudstreamError
from fraudstream.core.features import FeatureConfig

if TYPE_CHECKING:
    from fraudstream.adapters.model_registry import ModelRegistry
    from fraudstream.config import Settings
    from fraudstream.ml.artifact import Kind
    from fraudstream.ml.backtest import History
    from fraudstream.ml.train import TimeSplit

models_app = typer.Typer(help="Register, activate and list trained models.", no_args_is_help=True)

MapOption = Annotated[
    list[str] | None,
    typer.Option("--map", help="engine_column=dataset_column, e.g. customer_id=CUSTOMER_ID."),
]
LabelOption = Annotated[str, typer.Option(help="The dataset's fraud label column.")]
RulesOption = Annotated[Path | None, typer.Option(help="Ruleset YAML (default: shipped).")]
TrainUntilOption = Annotated[
    datetime | None, typer.Option(help="End of the training window (event time, UTC).")
]
TrainShareOption = Annotated[
    float, typer.Option(min=0.05, max=0.95, help="Else: train on this share of the time span.")
]
GapOption = Annotated[
    float, typer.Option(min=0, help="Label delay: days between training and evaluation.")
]
AlertRateOption = Annotated[float, typer.Option(help="Share of transactions alerted.")]
SeedOption = Annotated[int, typer.Option(help="Training seed (same seed, same model).")]


def backtest(
    path: Annotated[Path, typer.Argument(help="Labelled history, .csv or .parquet.")],
    column: MapOption = None,
    label: LabelOption = "is_fraud",
    scenario: Annotated[str, typer.Option(help="Fraud scenario column, if any.")] = "scenario",
    rules: RulesOption = None,
    k: Annotated[int, typer.Option(help="Cards investigators can check per day.")] = 100,
    alert_rate: AlertRateOption = 0.01,
    train_until: TrainUntilOption = None,
    train_share: TrainShareOption = 0.6,
    gap_days: GapOption = 7.0,
    kind: Annotated[
        list[str] | None,
        typer.Option("--model", help="Train and compare: isolation_forest, gradient_boosting."),
    ] = None,
    score_with: Annotated[
        Path | None, typer.Option(help="A trained model file to score the history with.")
    ] = None,
    seed: SeedOption = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON.")
    ] = None,
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Write the report as HTML.")
    ] = None,
) -> None:
    """Replay a labelled history through the engine; report ranking, alerting and rule figures.
    With --model, also train on the earlier window and compare on the later one."""
    from fraudstream.ml.backtest import backtest as run_backtest  # noqa: PLC0415 (sklearn)

    config = FeatureConfig()
    try:
        engine = engine_for(rules, config)
        history = _read(path, column, label, scenario)
        kinds = _kinds(kind or [])
        split = _split(history, train_until, train_share, gap_days) if kinds else None
        if score_with is not None:
            engine.model = _load_file(score_with, settings_or_exit()).scorer
    except FraudstreamError as error:
        console.print(f"[red]rejected:[/red] {error}")
        raise typer.Exit(2) from None
    with console.status(f"replaying {history.transactions.height:,} transactions…"):
        report = run_backtest(
            history, engine, config, k=k, alert_rate=alert_rate, split=split, kinds=kinds, seed=seed
        )
    from fraudstream.views import backtest_tables  # noqa: PLC0415

    console.print(backtest_tables(report))
    if json_out is not None:
        json_out.write_text(report.to_json())
    if html_out is not None:
        html_out.write_text(report.to_html())


def train(
    path: Annotated[
        Path | None, typer.Argument(help="Labelled .csv/.parquet; omitted: the pipeline database.")
    ] = None,
    kind: Annotated[
        str, typer.Option("--model", help="isolation_forest or gradient_boosting.")
    ] = "gradient_boosting",
    column: MapOption = None,
    label: LabelOption = "is_fraud",
    rules: RulesOption = None,
    train_until: TrainUntilOption = None,
    train_share: TrainShareOption = 0.7,
    gap_days: GapOption = 7.0,
    alert_rate: AlertRateOption = 0.01,
    seed: SeedOption = 0,
    out: Annotated[Path, typer.Option(help="Folder for the model file.")] = Path("models"),
    register: Annotated[bool, typer.Option(help="Store it in the `models` table.")] = False,
    activate: Annotated[
        str | None, typer.Option(help="Then make it `live` or `shadow` (implies --register).")
    ] = None,
) -> None:
    """Train a model on the features the stream computes, evaluate it on a later window (after
    the label-delay gap), write a signed model file, optionally register and activate it."""
    from fraudstream.ml.artifact import dump_artifact  # noqa: PLC0415
    from fraudstream.ml.backtest import backtest as run_backtest  # noqa: PLC0415

    settings = settings_or_exit()
    config = FeatureConfig()
    try:
        engine = engine_for(rules, config)
        kinds = _kinds([kind])
        history = _read(path, column, label, None) if path else _from_database(settings)
        split = _split(history, train_until, train_share, gap_days)
        if activate is not None and activate not in ("live", "shadow"):
            raise FraudstreamError(f"--activate {activate!r}: expected live or shadow")
    except FraudstreamError as error:
        console.print(f"[red]rejected:[/red] {error}")
        raise typer.Exit(2) from None
    with console.status(f"replaying {history.transactions.height:,} transactions and training…"):
        report = run_backtest(
            history, engine, config, alert_rate=alert_rate, split=split, kinds=kinds, seed=seed
        )
    comparison = report.comparison
    assert comparison is not None
    from fraudstream.views import comparison_table  # noqa: PLC0415

    console.print(comparison_table(comparison))
    scorer = comparison.models[kinds[0]]
    metadata: dict[str, Any] = {
        "kind": kinds[0],
        "trained_at": datetime.now(UTC).isoformat(),
        "source": str(path) if path else "database",
        "training": {**comparison.as_dict(), **comparison.training[kinds[0]], "seed": seed},
        "ruleset_version": engine.ruleset.version,
    }
    data = dump_artifact(scorer, metadata, _key(settings))
    out.mkdir(parents=True, exist_ok=True)
    file = out / f"{scorer.version}.fsmodel"
    file.write_bytes(data)
    console.print(f"model {scorer.version} written to {file}")
    if register or activate:
        _register(_registry(settings), data, file, activate, _key(settings))


@models_app.command("register")
def models_register(
    file: Annotated[Path, typer.Argument(help="A model file written by `fraudstream train`.")],
    activate: Annotated[str | None, typer.Option(help="Then make it `live` or `shadow`.")] = None,
) -> None:
    """Verify a model file and store it in the `models` table."""
    settings = settings_or_exit()
    try:
        _register(_registry(settings), file.read_bytes(), file, activate, _key(settings))
    except (FraudstreamError, OSError) as error:
        console.print(f"[red]rejected:[/red] {error}")
        raise typer.Exit(2) from None


@models_app.command("activate")
def models_activate(
    version: Annotated[str, typer.Argument(help="A registered model version.")],
    shadow: Annotated[bool, typer.Option(help="Run it in shadow, not live.")] = False,
) -> None:
    """Make a registered model live (or shadow); workers switch within their poll interval."""
    registry = _registry(settings_or_exit())
    try:
        registry.activate(version, "shadow" if shadow else "live")
    except FraudstreamError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    console.print(f"{version} is now {'shadow' if shadow else 'live'}")


@models_app.command("retire")
def models_retire(
    role: Annotated[str, typer.Argument(help="live or shadow.")],
) -> None:
    """Stop serving a role: no live model (rules alone decide), or no shadow."""
    if role not in ("live", "shadow"):
        console.print(f"[red]role {role!r}: expected live or shadow[/red]")
        raise typer.Exit(2)
    version = _registry(settings_or_exit()).retire(role)  # type: ignore[arg-type]
    console.print(f"retired {version or 'nothing'} from {role}")


@models_app.command("list")
def models_list() -> None:
    """The registered models, their roles and evaluation figures."""
    table = Table(title="Registered models")
    for header in ("version", "kind", "role", "registered", "trained until", "AP (eval)"):
        table.add_column(header)
    for model in _registry(settings_or_exit()).models():
        training = model.metadata.get("training", {})
        variants = {row["variant"]: row for row in training.get("variants", [])}
        ap = variants.get(model.kind, {}).get("average_precision")
        table.add_row(
            model.version, model.kind, model.role or "", f"{model.registered_at:%Y-%m-%d %H:%M}",
            str(training.get("train_end", ""))[:16], "" if ap is None else f"{ap:.3f}",
        )  # fmt: skip
    console.print(table)


def _register(
    registry: ModelRegistry, data: bytes, file: Path, activate: str | None, key: bytes
) -> None:
    from fraudstream.ml.artifact import load_artifact  # noqa: PLC0415

    artifact = load_artifact(data, key, str(file))
    sha = hashlib.sha256(data).hexdigest()
    fresh = registry.register(artifact.version, artifact.kind, data, sha, artifact.metadata)
    console.print(f"{artifact.version} {'registered' if fresh else 'was already registered'}")
    if activate:
        registry.activate(artifact.version, "shadow" if activate == "shadow" else "live")
        console.print(f"{artifact.version} is now {activate}")


def _read(path: Path, column: list[str] | None, label: str, scenario: str | None) -> History:
    from fraudstream.ml.backtest import read_history  # noqa: PLC0415

    mapping = dict(pair(item) for item in column or [])
    return read_history(path, mapping, label, scenario)


def _from_database(settings: Settings) -> History:
    from fraudstream.adapters.labels import labelled_history  # noqa: PLC0415
    from fraudstream.ml.backtest import History  # noqa: PLC0415

    transactions, labels = labelled_history(database_url(settings))
    return History(transactions, labels)


def _kinds(names: list[str]) -> tuple[Kind, ...]:
    from fraudstream.ml.artifact import KINDS  # noqa: PLC0415

    unknown = [name for name in names if name not in KINDS]
    if unknown:
        raise FraudstreamError(f"--model {unknown[0]!r}: expected one of {', '.join(KINDS)}")
    return tuple(name for name in KINDS if name in names)


def _split(history: History, until: datetime | None, share: float, gap_days: float) -> TimeSplit:
    from fraudstream.ml.train import TimeSplit, fraction_split  # noqa: PLC0415

    gap = timedelta(days=gap_days)
    if until is None:
        return fraction_split(history.transactions.get_column("timestamp"), share, gap)
    return TimeSplit(until if until.tzinfo else until.replace(tzinfo=UTC), gap)


def _registry(settings: Settings) -> ModelRegistry:
    from fraudstream.adapters.model_registry import ModelRegistry  # noqa: PLC0415

    try:
        return ModelRegistry(database_url(settings))
    except FraudstreamError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None


def _key(settings: Settings) -> bytes:
    from fraudstream.runners.serve import model_signing_key  # noqa: PLC0415

    return model_signing_key(settings)


def _load_file(path: Path, settings: Settings) -> Any:
    from fraudstream.ml.artifact import load_artifact  # noqa: PLC0415

    return load_artifact(path.read_bytes(), _key(settings), str(path))
