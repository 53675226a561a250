"""Rules: SQL boolean expressions over a transaction and its features, loaded from YAML."""

from fraudstream.core.rules.ruleset import (
    FIRED_COLUMN,
    CompiledRuleset,
    compile_ruleset,
    engine_columns,
    fired_ids,
)
from fraudstream.core.rules.spec import (
    ACTIONS,
    SEVERITIES,
    Action,
    Rule,
    RulesetSpec,
    Severity,
    content_version,
    load_default_ruleset,
    load_default_ruleset_text,
    parse_ruleset,
)

__all__ = [
    "ACTIONS",
    "FIRED_COLUMN",
    "SEVERITIES",
    "Action",
    "CompiledRuleset",
    "Rule",
    "RulesetSpec",
    "Severity",
    "compile_ruleset",
    "content_version",
    "engine_columns",
    "fired_ids",
    "load_default_ruleset",
    "load_default_ruleset_text",
    "parse_ruleset",
]
