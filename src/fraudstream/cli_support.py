"""What the command modules share: the console, settings, engines and option parsing."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from fraudstream.config import Settings, load_settings
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.errors import FraudstreamError
from fraudstream.core.features import FeatureConfig
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset

console = Console()


def engine_for(rules: Path | None, config: FeatureConfig) -> Engine:
    """An engine with the ruleset file's rules, or the shipped ones."""
    text = rules.read_text() if rules else load_default_ruleset_text()
    return Engine(compile_ruleset(parse_ruleset(text), available_columns(config)))


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except FraudstreamError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None


def pair(item: str) -> tuple[str, str]:
    """`engine_column=dataset_column` from a `--map` option."""
    name, separator, source = item.partition("=")
    if not separator or not name or not source:
        raise FraudstreamError(f"--map {item!r}: expected engine_column=dataset_column")
    return name.strip(), source.strip()


def database_url(settings: Settings) -> str:
    """The pipeline database: from the settings, else the embedded stack running here."""
    from fraudstream.stack import running_database_url  # noqa: PLC0415

    return running_database_url(settings)
