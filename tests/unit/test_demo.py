"""The README's main job, small: simulate, score, report per scenario."""

from __future__ import annotations

from typer.testing import CliRunner

from fraudstream.cli import app


def test_demo_scores_a_stream_and_reports_recall_per_scenario() -> None:
    result = CliRunner().invoke(app, ["demo", "--transactions", "20000", "--seed", "3"])
    assert result.exit_code == 0, result.output
    for scenario in ("velocity_attack", "card_testing", "large_amount", "impossible_travel"):
        assert scenario in result.output
    assert "tx/s" in result.output and "precision" in result.output


def test_rules_check_names_the_bad_rule(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n  - {id: broken_one, description: x, expression: 'amont > 5', score: 10}\n"
    )
    result = CliRunner().invoke(app, ["rules", "check", str(path)])
    assert result.exit_code == 2
    assert "broken_one" in result.output and "amount" in result.output
