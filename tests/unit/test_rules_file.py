"""Hot reload of a rules file: a good edit swaps the ruleset, a bad one keeps the previous."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import polars as pl
import pytest

from fraudstream.adapters.rules_file import ReloadResult, RulesFile
from fraudstream.core.errors import RuleError
from fraudstream.core.features.config import FeatureConfig
from fraudstream.core.rules import engine_columns, load_default_ruleset_text

CONFIG = FeatureConfig()
COLUMNS = engine_columns(CONFIG.names, CONFIG.boolean_features, CONFIG.count_features)


def ruleset_text(version: str, *rules: tuple[str, str]) -> str:
    lines = [f"version: {version!r}\n", "rules:\n"]
    for rule_id, expression in rules:
        lines += [
            f"  - id: {rule_id}\n",
            "    description: test rule\n",
            f"    expression: {expression}\n",
            "    score: 20\n",
        ]
    return "".join(lines)


V1 = ruleset_text("v1", ("large_amount", "amount > 9000"))
V2 = ruleset_text("v2", ("large_amount", "amount > 5000"), ("velocity", "tx_count_by_card_10m > 5"))


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(V1, encoding="utf-8")
    return path


def test_loads_at_construction(rules_path: Path) -> None:
    rules = RulesFile(rules_path, COLUMNS)
    assert rules.version == "v1"
    assert rules.current.version == "v1"
    assert rules.path == rules_path
    assert [rule.id for rule in rules.current.rules] == ["large_amount"]


def test_poll_without_change(rules_path: Path) -> None:
    rules = RulesFile(rules_path, COLUMNS)
    before = rules.current
    result = rules.poll()
    assert result == ReloadResult(reloaded=False, version="v1")
    assert not result.failed
    assert rules.current is before


def test_modified_file_is_reloaded(rules_path: Path) -> None:
    rules = RulesFile(rules_path, COLUMNS)
    rules_path.write_text(V2, encoding="utf-8")
    result = rules.poll()
    assert result.reloaded
    assert result.version == "v2"
    assert result.previous_version == "v1"
    assert result.error is None
    assert rules.current.version == "v2"
    hits = rules.current.evaluate(pl.DataFrame({"amount": [6000.0], "tx_count_by_card_10m": [1]}))
    assert hits.to_dicts() == [{"large_amount": True, "velocity": False}]
    assert rules.poll() == ReloadResult(reloaded=False, version="v2")


def test_same_size_quick_rewrite_is_noticed(rules_path: Path) -> None:
    rules = RulesFile(rules_path, COLUMNS)
    same_size = V1.replace("9000", "8000").replace("v1", "v9")
    assert len(same_size) == len(V1)
    rules_path.write_text(same_size, encoding="utf-8")
    assert rules.poll().version == "v9"


def test_atomic_replace_is_noticed(rules_path: Path, tmp_path: Path) -> None:
    rules = RulesFile(rules_path, COLUMNS)
    staging = tmp_path / "rules.yaml.tmp"
    staging.write_text(V2, encoding="utf-8")
    os.replace(staging, rules_path)
    assert rules.poll().reloaded
    assert rules.current.version == "v2"


def test_touch_without_content_change_does_not_reload(rules_path: Path) -> None:
    rules = RulesFile(rules_path, COLUMNS)
    before = rules.current
    rules_path.write_text(V1, encoding="utf-8")
    os.utime(rules_path, None)
    result = rules.poll()
    assert not result.reloaded
    assert not result.failed
    assert rules.current is before


def test_broken_file_keeps_previous_then_fix_reloads(
    rules_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = RulesFile(rules_path, COLUMNS)
    previous = rules.current
    broken = ruleset_text("v2", ("large_amount", "amount > 1"), ("typo_rule", "amont > 100"))
    rules_path.write_text(broken, encoding="utf-8")

    with caplog.at_level(logging.ERROR, logger="fraudstream.adapters.rules_file"):
        result = rules.poll()
        again = rules.poll()

    assert not result.reloaded
    assert result.failed
    assert result.version == "v1"
    assert isinstance(result.error, RuleError)
    assert result.error.rule_id == "typo_rule"
    assert "unknown column 'amont'" in result.error.reason
    assert "did you mean 'amount'?" in result.error.reason
    assert rules.current is previous
    assert not again.reloaded
    assert rules.current is previous
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "typo_rule" in errors[0].getMessage()

    fixed = ruleset_text("v3", ("large_amount", "amount > 1"), ("typo_rule", "amount > 100"))
    rules_path.write_text(fixed, encoding="utf-8")
    result = rules.poll()
    assert result.reloaded
    assert result.version == "v3"
    assert result.previous_version == "v1"
    assert rules.current.version == "v3"


def test_invalid_yaml_keeps_previous(rules_path: Path) -> None:
    rules = RulesFile(rules_path, COLUMNS)
    rules_path.write_text("rules: [\n  - id: x\n", encoding="utf-8")
    result = rules.poll()
    assert result.failed
    assert result.error is not None
    assert result.error.rule_id is None
    assert "invalid YAML" in result.error.reason
    assert rules.current.version == "v1"


def test_injection_in_file_is_rejected_and_previous_kept(rules_path: Path) -> None:
    rules = RulesFile(rules_path, COLUMNS)
    rules_path.write_text(
        ruleset_text("v2", ("sneaky", '"amount > 1; DROP TABLE transactions"')), encoding="utf-8"
    )
    result = rules.poll()
    assert result.error is not None
    assert result.error.rule_id == "sneaky"
    assert rules.current.version == "v1"


def test_missing_file_keeps_previous(rules_path: Path) -> None:
    rules = RulesFile(rules_path, COLUMNS)
    rules_path.unlink()
    result = rules.poll()
    assert result.failed
    assert rules.current.version == "v1"
    rules_path.write_text(V2, encoding="utf-8")
    assert rules.poll().reloaded
    assert rules.current.version == "v2"


def test_bad_file_at_construction_raises(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(ruleset_text("v1", ("not_boolean", "amount * 2")), encoding="utf-8")
    with pytest.raises(RuleError) as caught:
        RulesFile(path, COLUMNS)
    assert caught.value.rule_id == "not_boolean"
    assert "must be boolean, got Float64" in caught.value.reason


def test_missing_file_at_construction_raises(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="cannot read rules file"):
        RulesFile(tmp_path / "nope.yaml", COLUMNS)


def test_non_utf8_file_at_construction_raises(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_bytes(b"version: '\xff'\nrules: []\n")
    with pytest.raises(RuleError, match="not UTF-8"):
        RulesFile(path, COLUMNS)


def test_default_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(load_default_ruleset_text(), encoding="utf-8")
    rules = RulesFile(path, COLUMNS)
    assert "large_amount" in {rule.id for rule in rules.current.rules}
