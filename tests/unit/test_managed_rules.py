"""Shadow rules in the engine, and managed rules merged with the rules file."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from fraudstream.core.decision_record import records
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.errors import RuleError
from fraudstream.core.events import Transaction, to_frame
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import Rule, RulesetSpec, compile_ruleset, parse_ruleset
from fraudstream.core.rules.managed import ManagedRule, compile_merged, merged_spec, status_of

T0 = datetime(2026, 1, 5, 12, tzinfo=UTC)
COLUMNS = available_columns(FeatureConfig())
FILE = parse_ruleset(
    """
version: file-1
rules:
  - {id: big, description: "", expression: amount > 1000, score: 40, action: review}
  - {id: huge, description: "", expression: amount > 5000, score: 60, action: decline}
  - {id: dormant, description: "", expression: amount > 1, score: 10, enabled: false}
"""
)


def _batch(*amounts: float) -> object:
    return to_frame(
        [
            Transaction(
                transaction_id=f"t{i}",
                timestamp=T0 + timedelta(minutes=i),
                amount=a,
                card_ref=f"c{i}",
            )
            for i, a in enumerate(amounts)
        ]
    )


def _rule(rule_id: str, expression: str, **fields: object) -> Rule:
    return Rule(id=rule_id, description="", expression=expression, score=50, **fields)  # type: ignore[arg-type]


def _managed(rule_id: str, expression: str, status: str) -> ManagedRule:
    return ManagedRule(_rule(rule_id, expression), status)  # type: ignore[arg-type]


def test_shadow_rules_are_recorded_per_row_and_never_move_the_decision() -> None:
    with_shadow = RulesetSpec(
        version="s",
        rules=(*FILE.rules, _rule("round", "amount % 100 = 0", shadow=True),
               _rule("tiny", "amount < 5", shadow=True, action="decline")),
    )  # fmt: skip
    batch = _batch(3.0, 1200.0, 300.0, 7.5, 6000.0)
    plain = Engine(compile_ruleset(FILE, COLUMNS)).process(batch, FeatureState())  # type: ignore[arg-type]
    shadowed = Engine(compile_ruleset(with_shadow, COLUMNS)).process(batch, FeatureState())  # type: ignore[arg-type]

    assert shadowed.shadow_rules_fired.rows() == [["tiny"], ["round"], ["round"], [], ["round"]]
    np.testing.assert_array_equal(shadowed.score, plain.score)
    np.testing.assert_array_equal(shadowed.action_rank, plain.action_rank)
    assert shadowed.rules_fired.rows() == plain.rules_fired.rows()
    assert shadowed.rule_ids == ("big", "huge"), "shadow rules are not live columns"
    frame = shadowed.frame
    assert frame.get_column("shadow_rules_fired").to_list() == shadowed.shadow_rules_fired.rows()
    assert frame.get_column("reasons").to_list() == plain.frame.get_column("reasons").to_list()
    carried = records(shadowed, T0)
    assert [r.shadow_rules_fired for r in carried] == shadowed.shadow_rules_fired.rows()
    assert plain.frame.get_column("shadow_rules_fired").to_list() == [[]] * 5


def test_a_shadow_rule_is_parsed_from_yaml_and_hashed_only_when_set() -> None:
    spec = parse_ruleset(
        "rules:\n  - {id: sh, description: '', expression: amount > 1, score: 1, shadow: true}\n"
    )
    assert spec.shadow_rules == spec.rules and spec.enabled_rules == ()
    assert "shadow" not in _rule("xx", "amount > 1").canonical(), "old versions hash the same"
    with pytest.raises(RuleError, match="shadow must be true or false"):
        _rule("xx", "amount > 1", shadow="yes")


def test_managed_rules_replace_file_rules_except_drafts_and_disabled_ones_switch_them_off() -> None:
    managed = [
        _managed("big", "amount > 2000", "enabled"),      # replaces the file's big
        _managed("huge", "amount > 1", "draft"),          # a draft: the file's huge stays
        _managed("dormant", "amount > 1", "shadow"),          # the file's disabled rule, in shadow
        _managed("zz_new", "amount > 3", "enabled"),      # new ones after the file's, by id
        _managed("aa_new", "amount > 4", "disabled"),
        _managed("draft_only", "amount > 5", "draft"),    # never in force
    ]  # fmt: skip
    merged = merged_spec(FILE, managed, revision=7)
    assert merged.version == "file-1+rules.7"
    assert [r.id for r in merged.rules] == ["big", "huge", "dormant", "aa_new", "zz_new"]
    assert {r.id: status_of(r) for r in merged.rules} == {
        "big": "enabled", "huge": "enabled", "dormant": "shadow", "aa_new": "disabled",
        "zz_new": "enabled",
    }  # fmt: skip
    assert merged.rule("big").expression == "amount > 2000"
    assert merged.rule("huge").expression == "amount > 5000"
    assert merged_spec(FILE, [_managed("xx", "amount > 1", "draft")], 3) is FILE


def test_a_managed_rule_that_no_longer_compiles_is_left_out_not_the_ruleset() -> None:
    dropped: list[RuleError] = []
    managed = [_managed("gone", "amount > 1 AND column_removed > 2", "enabled"),
               _managed("fine", "amount > 10", "enabled")]  # fmt: skip
    compiled = compile_merged(FILE, managed, 2, COLUMNS, dropped.append)
    assert compiled.rule_ids == ("big", "huge", "fine")
    assert [e.rule_id for e in dropped] == ["gone"]
    broken_file = RulesetSpec(version="b", rules=(replace(FILE.rules[0], expression="nope > 1"),))
    with pytest.raises(RuleError, match="'big'"):
        compile_merged(broken_file, managed[1:], 2, COLUMNS)
