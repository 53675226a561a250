"""Rules: YAML parsing and validation, compilation against the engine's columns, evaluation."""

from __future__ import annotations

import re
from typing import Any

import polars as pl
import pytest

from fraudstream.core.errors import RuleError
from fraudstream.core.events import TRANSACTION_SCHEMA
from fraudstream.core.features.config import FeatureConfig
from fraudstream.core.lists import LIST_FEATURES
from fraudstream.core.rules import (
    FIRED_COLUMN,
    CompiledRuleset,
    Rule,
    RulesetSpec,
    compile_ruleset,
    engine_columns,
    fired_ids,
    load_default_ruleset,
    load_default_ruleset_text,
    parse_ruleset,
)

CONFIG = FeatureConfig()
COLUMNS = engine_columns(CONFIG.names, CONFIG.boolean_features, CONFIG.count_features)


def make_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """A frame in the engine's schema; every column a row does not mention is null."""
    data = {name: [row.get(name) for row in rows] for name in COLUMNS}
    return pl.DataFrame(data, schema=COLUMNS)


def one_rule(expression: str, rule_id: str = "my_rule", **extra: Any) -> RulesetSpec:
    rule = Rule(id=rule_id, description="test", expression=expression, score=10, **extra)
    return RulesetSpec(version="t", rules=(rule,))


def compile_one(expression: str, rule_id: str = "my_rule") -> CompiledRuleset:
    return compile_ruleset(one_rule(expression, rule_id), COLUMNS)


def rules_yaml(*rules: str, version: str | None = "v1") -> str:
    head = f"version: {version!r}\n" if version is not None else ""
    return head + "rules:\n" + "".join(rules)


def rule_yaml(rule_id: str, expression: str = "amount > 1", **extra: str) -> str:
    lines = [
        f"  - id: {rule_id}\n",
        "    description: a rule\n",
        f"    expression: {expression}\n",
        "    score: 10\n",
    ]
    lines += [f"    {key}: {value}\n" for key, value in extra.items()]
    return "".join(lines)


# ---------------------------------------------------------------------------------------------
# The column mapping.


def test_engine_columns_types() -> None:
    assert COLUMNS["amount"] == pl.Float64
    assert COLUMNS["card_ref"] == pl.String
    assert COLUMNS["card_present"] == pl.Boolean
    assert COLUMNS["tx_count_by_card_10m"] == pl.Int64
    assert COLUMNS["distinct_cards_by_merchant_10m"] == pl.Int64
    assert COLUMNS["is_new_country_for_card"] == pl.Boolean
    assert COLUMNS["amount_zscore_by_card"] == pl.Float64
    assert COLUMNS["card_on_deny_list"] == pl.Boolean
    everything = set(TRANSACTION_SCHEMA) | set(CONFIG.names) | {"card_present"}
    assert everything | set(LIST_FEATURES) == set(COLUMNS)


# ---------------------------------------------------------------------------------------------
# Parsing.


def test_parse_full_rule() -> None:
    text = rules_yaml(
        rule_yaml(
            "big",
            "amount > 9000",
            action="decline",
            enabled="false",
            version="3",
            severity="critical",
            tags="[amount, simple]",
        )
    )
    spec = parse_ruleset(text)
    assert spec.version == "v1"
    (rule,) = spec.rules
    assert rule == Rule(
        id="big",
        description="a rule",
        expression="amount > 9000",
        score=10.0,
        action="decline",
        enabled=False,
        version=3,
        severity="critical",
        tags=("amount", "simple"),
    )


def test_defaults() -> None:
    (rule,) = parse_ruleset(rules_yaml(rule_yaml("plain"))).rules
    assert (rule.action, rule.enabled, rule.version, rule.severity, rule.tags) == (
        "review",
        True,
        1,
        "medium",
        (),
    )


def test_version_derived_from_content_when_absent() -> None:
    first = parse_ruleset(rules_yaml(rule_yaml("one"), version=None))
    again = parse_ruleset(rules_yaml(rule_yaml("one"), version=None))
    other = parse_ruleset(rules_yaml(rule_yaml("one", "amount > 2"), version=None))
    assert re.fullmatch(r"[0-9a-f]{12}", first.version)
    assert first.version == again.version
    assert first.version != other.version


def test_integer_version_becomes_text() -> None:
    assert parse_ruleset("version: 7\nrules: []\n").version == "7"


@pytest.mark.parametrize(
    ("text", "rule_id", "fragment"),
    [
        ("rules: [\n", None, "invalid YAML"),
        ("", None, "empty"),
        ("- a\n- b\n", None, "top level must be a mapping"),
        ("version: x\n", None, "missing 'rules:'"),
        ("rules: {a: 1}\n", None, "'rules' must be a list"),
        ("rules: []\nextra: 1\n", None, "unknown key 'extra'"),
        ("version: 1.5\nrules: []\n", None, "version must be a string"),
        ("rules:\n  - 42\n", None, "rule #1 must be a mapping"),
        ("rules:\n  - description: x\n", None, "'id' must be a string"),
        ("rules:\n  - id: off\n", None, "quote the id"),
        (rules_yaml(rule_yaml("r_one", colour="red")), "r_one", "unknown key 'colour'"),
        (rules_yaml(rule_yaml("r_one", action="block")), "r_one", "action must be one of"),
        (rules_yaml(rule_yaml("r_one", severity="huge")), "r_one", "severity must be one of"),
        (rules_yaml(rule_yaml("r_one", enabled="'yes'")), "r_one", "enabled must be true or"),
        (rules_yaml(rule_yaml("r_one", version="0")), "r_one", "version must be an integer"),
        (rules_yaml(rule_yaml("r_one", tags="[1, 2]")), "r_one", "tags must be a list"),
        (rules_yaml(rule_yaml("r_one", tags="a")), "r_one", "tags must be a list"),
        (rules_yaml(rule_yaml("Bad-Id")), "Bad-Id", "must match"),
        (rules_yaml(rule_yaml("x")), "x", "must match"),
        (rules_yaml(rule_yaml("r_one"), rule_yaml("r_one")), "r_one", "duplicate rule id"),
        (rules_yaml(rule_yaml("r_one", expression="''")), "r_one", "non-empty string"),
        (
            "rules:\n  - id: r_one\n    description: d\n    expression: amount > 1\n",
            "r_one",
            "missing required key 'score'",
        ),
        (
            "rules:\n  - id: r_one\n    description: d\n    expression: a > 1\n    score: high\n",
            "r_one",
            "score must be a number",
        ),
        (
            "rules:\n  - id: r_one\n    description: d\n    expression: a > 1\n    score: 101\n",
            "r_one",
            "score must be between 0 and 100",
        ),
        (
            "rules:\n  - id: r_one\n    description: d\n    expression: a > 1\n    score: -1\n",
            "r_one",
            "score must be between 0 and 100",
        ),
        (
            "rules:\n  - id: r_one\n    description: d\n    expression: [a]\n    score: 1\n",
            "r_one",
            "expression must be a string",
        ),
        (
            "rules:\n  - id: r_one\n    description: d\n    description: e\n"
            "    expression: a > 1\n    score: 1\n",
            None,
            "duplicate key 'description'",
        ),
    ],
)
def test_parse_errors_name_the_rule(text: str, rule_id: str | None, fragment: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_ruleset(text)
    assert caught.value.rule_id == rule_id
    assert fragment in caught.value.reason
    if rule_id is not None:
        assert repr(rule_id) in str(caught.value)


def test_rule_construction_validates() -> None:
    with pytest.raises(RuleError, match="action"):
        Rule(id="ok_id", description="", expression="amount > 1", score=1, action="nope")  # type: ignore[arg-type]
    with pytest.raises(RuleError, match="duplicate"):
        RulesetSpec(version="v", rules=(one_rule("amount > 1").rules * 2))


def test_yaml_is_not_executed() -> None:
    with pytest.raises(RuleError, match="invalid YAML"):
        parse_ruleset("rules: !!python/object/apply:os.system ['echo hi']\n")


# ---------------------------------------------------------------------------------------------
# Compilation.


def test_compile_keeps_enabled_rules_in_order() -> None:
    spec = parse_ruleset(
        rules_yaml(
            rule_yaml("first", "amount > 1"),
            rule_yaml("disabled_one", "amount > 2", enabled="false"),
            rule_yaml("second", "card_present AND tx_count_by_card_10m > 3"),
        )
    )
    compiled = compile_ruleset(spec, COLUMNS)
    assert compiled.version == "v1"
    assert [rule.id for rule in compiled.rules] == ["first", "second"]
    assert compiled.columns_used == {"amount", "card_present", "tx_count_by_card_10m"}
    assert compiled.spec is spec


def test_parse_error_names_rule() -> None:
    with pytest.raises(RuleError) as caught:
        compile_one("amount >", "broken")
    assert caught.value.rule_id == "broken"
    assert caught.value.reason.startswith("cannot parse expression 'amount >': ")


def test_unknown_column_suggests_closest() -> None:
    with pytest.raises(RuleError) as caught:
        compile_one("tx_count_by_card_10min > 5", "velocity")
    assert caught.value.rule_id == "velocity"
    assert "unknown column 'tx_count_by_card_10min'" in caught.value.reason
    assert "did you mean 'tx_count_by_card_10m'?" in caught.value.reason


def test_unknown_column_without_suggestion() -> None:
    with pytest.raises(RuleError, match=r"unknown column 'zzz'$"):
        compile_one("zzz > 5")


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("amount * 2", "expression must be boolean, got Float64"),
        ("tx_count_by_card_10m + 1", "expression must be boolean, got Int64"),
        ("country", "expression must be boolean, got String"),
        ("amount > 'abc'", "cannot compare string with numeric"),
        ("card_present AND amount", "invalid expression"),
    ],
)
def test_non_boolean_or_ill_typed(expression: str, fragment: str) -> None:
    with pytest.raises(RuleError) as caught:
        compile_one(expression, "typed")
    assert caught.value.rule_id == "typed"
    assert fragment in caught.value.reason


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("amount > 1; DROP TABLE x", "';'"),
        ("__import__('os')", "cannot parse expression"),
        ("__import__('os').system('ls') IS NULL", "cannot parse expression"),
        ("amount > (SELECT 1)", "subquery"),
        ("amount IN (SELECT amount FROM transactions)", "subquery"),
        ("amount > 1 -- AND country = 'US'", "comments"),
        ("amount > 1 /* x */", "comments"),
    ],
)
def test_injection_attempts_rejected(expression: str, fragment: str) -> None:
    with pytest.raises(RuleError) as caught:
        compile_one(expression, "sneaky")
    assert caught.value.rule_id == "sneaky"
    assert fragment in caught.value.reason


def test_quoted_semicolon_and_keyword_are_plain_text() -> None:
    compiled = compile_one("country = 'a;select--b' OR amount > 5")
    hits = compiled.evaluate(make_frame([{"country": "a;select--b"}, {"amount": 6.0}, {}]))
    assert hits["my_rule"].to_list() == [True, True, False]


@pytest.mark.parametrize(
    "expression",
    [
        "amount > avg(amount)",
        "sum(amount) > 100",
        "count(*) > 3",
        "count(*) OVER (PARTITION BY card_ref) > 3",
        "lag(amount) OVER (ORDER BY timestamp) > 1",
        "row_number() OVER () > 1",
    ],
)
def test_batch_dependent_expressions_rejected(expression: str) -> None:
    with pytest.raises(RuleError, match="one transaction at a time"):
        compile_one(expression)


def test_constant_expression_rejected() -> None:
    with pytest.raises(RuleError, match="names no column"):
        compile_one("TRUE")


def test_disabled_rules_are_not_compiled_and_never_fire() -> None:
    spec = parse_ruleset(
        rules_yaml(
            rule_yaml("live", "amount > 1"),
            rule_yaml("disabled_one", "amount > 0", enabled="false"),
            rule_yaml("off_broken", "no_such_column > 0", enabled="false"),
        )
    )
    compiled = compile_ruleset(spec, COLUMNS)
    hits = compiled.evaluate(make_frame([{"amount": 5.0}]))
    assert hits.columns == ["live"]
    assert compiled.fired_ids(hits).to_list() == [["live"]]
    assert [rule.id for rule in spec.rules] == ["live", "disabled_one", "off_broken"]


# ---------------------------------------------------------------------------------------------
# Evaluation.


def test_null_feature_does_not_fire() -> None:
    compiled = compile_one("speed_from_prev_kmh_by_card > 900 OR NOT is_new_country_for_card")
    hits = compiled.evaluate(
        make_frame(
            [{}, {"speed_from_prev_kmh_by_card": 1000.0}, {"is_new_country_for_card": False}]
        )
    )
    assert hits.schema["my_rule"] == pl.Boolean
    assert hits["my_rule"].to_list() == [False, True, True]
    assert hits["my_rule"].null_count() == 0


def test_evaluate_keeps_rows_and_order() -> None:
    spec = parse_ruleset(
        rules_yaml(rule_yaml("even", "amount % 2 = 0"), rule_yaml("big", "amount >= 9000"))
    )
    compiled = compile_ruleset(spec, COLUMNS)
    frame = make_frame([{"amount": float(i)} for i in range(10_000)])
    hits = compiled.evaluate(frame)
    assert hits.columns == ["even", "big"]
    assert hits.height == 10_000
    assert hits["even"].to_list() == [i % 2 == 0 for i in range(10_000)]
    assert hits["big"].sum() == 1000
    assert compiled.evaluate(frame.head(1)).row(0) == (True, False)
    assert compiled.evaluate(frame.head(0)).height == 0


def test_runtime_failure_of_one_rule_does_not_stop_the_others() -> None:
    spec = parse_ruleset(
        rules_yaml(
            rule_yaml("fragile", "CAST(card_ref AS INT) > 5"),
            rule_yaml("sturdy", "amount > 1"),
        )
    )
    compiled = compile_ruleset(spec, COLUMNS)
    frame = make_frame([{"card_ref": "tok_abc", "amount": 2.0}])
    hits, errors = compiled.evaluate_with_errors(frame)
    assert hits.to_dicts() == [{"fragile": False, "sturdy": True}]
    assert set(errors) == {"fragile"}
    assert compiled.evaluate(frame).to_dicts() == [{"fragile": False, "sturdy": True}]


def test_frame_missing_a_used_column() -> None:
    compiled = compile_one("tx_count_by_card_10m > 5", "velocity")
    with pytest.raises(RuleError) as caught:
        compiled.evaluate(pl.DataFrame({"amount": [1.0]}))
    assert caught.value.rule_id == "velocity"
    assert "tx_count_by_card_10m" in caught.value.reason


def test_empty_ruleset() -> None:
    compiled = compile_ruleset(parse_ruleset("version: e\nrules: []\n"), COLUMNS)
    hits = compiled.evaluate(make_frame([{}, {}]))
    assert hits.height == 2
    assert hits.width == 0
    assert compiled.fired_ids(hits).to_list() == [[], []]


def test_fired_ids_small_and_large_batches_agree() -> None:
    hits = pl.DataFrame(
        {
            "a_rule": [True, False, True, None] * 100,
            "b_rule": [True, False, False, True] * 100,
            "c_rule": [False, False, True, True] * 100,
        }
    )
    expected = [["a_rule", "b_rule"], [], ["a_rule", "c_rule"], ["b_rule", "c_rule"]] * 100
    large = fired_ids(hits)
    assert large.dtype == pl.List(pl.String)
    assert large.name == FIRED_COLUMN
    assert large.to_list() == expected
    small = fired_ids(hits.head(4))
    assert small.name == FIRED_COLUMN
    assert small.to_list() == expected[:4]
    assert fired_ids(hits.head(3), ["c_rule", "a_rule"]).to_list() == [
        ["a_rule"],
        [],
        ["c_rule", "a_rule"],
    ]


# ---------------------------------------------------------------------------------------------
# The default ruleset.


def test_default_ruleset_loads_and_compiles() -> None:
    text = load_default_ruleset_text()
    assert "version:" in text
    spec = load_default_ruleset()
    assert spec.version
    compiled = compile_ruleset(spec, COLUMNS)
    assert len(compiled.rules) == len(spec.rules) >= 8
    assert all(rule.description for rule in spec.rules)
    assert compiled.columns_used <= set(COLUMNS)


_DENY_FEATURES = ("card_on_deny_list", "customer_on_deny_list", "device_on_deny_list",
                  "ip_on_deny_list")  # fmt: skip
DEFAULT_CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("large_amount", {"amount": 9500.0}, True),
    ("large_amount", {"amount": 9000.0}, False),
    ("card_velocity_10m", {"tx_count_by_card_10m": 6}, True),
    ("card_velocity_10m", {"tx_count_by_card_10m": 5}, False),
    (
        "impossible_travel",
        {"speed_from_prev_kmh_by_card": 1200.0, "distance_from_prev_km_by_card": 800.0},
        True,
    ),
    (
        "impossible_travel",
        {"speed_from_prev_kmh_by_card": 1200.0, "distance_from_prev_km_by_card": 20.0},
        False,
    ),
    ("impossible_travel", {"distance_from_prev_km_by_card": 800.0}, False),
    ("new_country_high_amount", {"is_new_country_for_card": True, "amount": 800.0}, True),
    ("new_country_high_amount", {"is_new_country_for_card": False, "amount": 800.0}, False),
    ("new_country_high_amount", {"is_new_country_for_card": None, "amount": 800.0}, False),
    (
        "card_testing",
        {"tx_count_by_card_10m": 5, "amount": 1.0, "amount_sum_by_card_10m": 6.0},
        True,
    ),
    (
        "card_testing",
        {"tx_count_by_card_10m": 5, "amount": 1.0, "amount_sum_by_card_10m": 400.0},
        False,
    ),
    ("card_testing", {"tx_count_by_card_10m": 2, "amount": 1.0}, False),
    ("merchant_card_burst", {"distinct_cards_by_merchant_10m": 16}, True),
    ("merchant_card_burst", {"distinct_cards_by_merchant_10m": 15}, False),
    ("terminal_card_burst", {"distinct_cards_by_terminal_10m": 11}, True),
    ("terminal_card_burst", {"distinct_cards_by_terminal_10m": 10}, False),
    ("amount_out_of_profile", {"amount_zscore_by_card": 5.0, "amount": 300.0}, True),
    ("amount_out_of_profile", {"amount_zscore_by_card": 5.0, "amount": 100.0}, False),
    ("amount_out_of_profile", {"amount_zscore_by_card": None, "amount": 300.0}, False),
    (
        "new_device_online_high_amount",
        {"is_new_device_for_card": True, "card_present": False, "amount": 400.0},
        True,
    ),
    (
        "new_device_online_high_amount",
        {"is_new_device_for_card": True, "card_present": True, "amount": 400.0},
        False,
    ),
    (
        "new_device_online_high_amount",
        {"is_new_device_for_card": True, "card_present": None, "amount": 400.0},
        False,
    ),
    (
        "customer_spend_spike_24h",
        {
            "amount_sum_by_customer_24h": 3000.0,
            "amount_sum_by_customer_30d": 5900.0,
            "tx_count_by_customer_24h": 2,
            "tx_count_by_customer_30d": 12,
        },
        True,
    ),
    (
        "customer_spend_spike_24h",
        {
            "amount_sum_by_customer_24h": 3000.0,
            "amount_sum_by_customer_30d": 90000.0,
            "tx_count_by_customer_24h": 2,
            "tx_count_by_customer_30d": 60,
        },
        False,
    ),
    (
        "customer_spend_spike_24h",
        {
            "amount_sum_by_customer_24h": 3000.0,
            "amount_sum_by_customer_30d": 3000.0,
            "tx_count_by_customer_24h": 2,
            "tx_count_by_customer_30d": 2,
        },
        False,
    ),
    ("rapid_repeat_high_amount", {"seconds_since_prev_by_card": 10.0, "amount": 1500.0}, True),
    ("rapid_repeat_high_amount", {"seconds_since_prev_by_card": 60.0, "amount": 1500.0}, False),
    ("deny_listed", {"card_on_deny_list": True}, True),
    ("deny_listed", {"card_on_deny_list": False, "ip_on_deny_list": True}, True),
    ("deny_listed", dict.fromkeys(_DENY_FEATURES, False), False),
    ("deny_listed", {"card_on_allow_list": True, "merchant_on_deny_list": True}, False),
]


def test_every_default_rule_fires_exactly_when_expected() -> None:
    compiled = compile_ruleset(load_default_ruleset(), COLUMNS)
    assert {rule_id for rule_id, _, fires in DEFAULT_CASES if fires} == set(compiled.rule_ids)
    frame = make_frame([values for _, values, _ in DEFAULT_CASES] + [{}])
    hits = compiled.evaluate(frame)
    assert hits.columns == list(compiled.rule_ids)
    fired = compiled.fired_ids(hits).to_list()
    for (rule_id, values, fires), got in zip(DEFAULT_CASES, fired, strict=False):
        assert got == ([rule_id] if fires else []), (rule_id, values)
    assert fired[-1] == []
