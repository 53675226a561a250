"""The rule model and its YAML form: parsed from text, validated field by field.

A ruleset file is a mapping with an optional `version:` and a `rules:` list::

    version: "2025-01"
    rules:
      - id: large_amount
        description: A single payment far above what cards usually spend.
        expression: amount > 9000
        score: 40
        action: review

Everything here is pure: the caller reads the file (an adapter) and hands over its text. Every
problem is a `RuleError` naming the rule (or the ruleset as a whole) and saying what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final, Literal, cast, get_args

import yaml

from fraudstream.core.errors import RuleError

Action = Literal["approve", "review", "decline"]
Severity = Literal["low", "medium", "high", "critical"]

ACTIONS: Final[tuple[str, ...]] = get_args(Action)
SEVERITIES: Final[tuple[str, ...]] = get_args(Severity)
RULE_ID_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
MAX_EXPRESSION_LENGTH: Final = 4000
MIN_SCORE: Final = 0.0
MAX_SCORE: Final = 100.0

_RULE_KEYS: Final = (
    "id",
    "description",
    "expression",
    "score",
    "action",
    "enabled",
    "version",
    "severity",
    "tags",
    "shadow",
)
_REQUIRED_RULE_KEYS: Final = ("id", "description", "expression", "score")
_RULESET_KEYS: Final = ("version", "rules")
_BOOLS: Final = (True, False)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: a SQL boolean expression over a transaction's columns and features.

    `score` is the rule's weight in points (0 to 100) when it fires; `action` is the least the
    decision should be when it fires. An enabled `shadow` rule is evaluated on every decision
    and recorded, but never moves a score or an action. Construction validates every field.
    """

    id: str
    description: str
    expression: str
    score: float
    action: Action = "review"
    enabled: bool = True
    version: int = 1
    severity: Severity = "medium"
    tags: tuple[str, ...] = ()
    shadow: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.tags, list):
            object.__setattr__(self, "tags", tuple(self.tags))
        _check_rule(self)
        object.__setattr__(self, "score", float(self.score))

    def canonical(self) -> dict[str, Any]:
        """Plain-data form with every field, used for hashing and serialising."""
        return {
            "id": self.id,
            "description": self.description,
            "expression": self.expression,
            "score": self.score,
            "action": self.action,
            "enabled": self.enabled,
            "version": self.version,
            "severity": self.severity,
            "tags": list(self.tags),
        } | ({"shadow": True} if self.shadow else {})


@dataclass(frozen=True, slots=True)
class RulesetSpec:
    """A versioned, ordered set of rules with distinct ids (disabled rules included)."""

    version: str
    rules: tuple[Rule, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.version, str) or not self.version.strip():
            raise RuleError(None, "version must be a non-empty string")
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise RuleError(rule.id, "duplicate rule id")
            seen.add(rule.id)

    @property
    def enabled_rules(self) -> tuple[Rule, ...]:
        """The rules that decide: enabled and not in shadow."""
        return tuple(rule for rule in self.rules if rule.enabled and not rule.shadow)

    @property
    def shadow_rules(self) -> tuple[Rule, ...]:
        """The rules evaluated and recorded beside the decision, never moving it."""
        return tuple(rule for rule in self.rules if rule.enabled and rule.shadow)

    def rule(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)


def content_version(rules: tuple[Rule, ...]) -> str:
    """A short, stable hash of the rules' canonical form (first 12 hex digits of SHA-256)."""
    canonical = json.dumps(
        [rule.canonical() for rule in rules],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def _check_rule(rule: Rule) -> None:
    rule_id = rule.id
    if not isinstance(rule_id, str) or not RULE_ID_PATTERN.match(rule_id):
        raise RuleError(
            rule_id if isinstance(rule_id, str) else None,
            f"id {rule_id!r} must match {RULE_ID_PATTERN.pattern} "
            "(lower-case letter, then 1 to 63 lower-case letters, digits or underscores)",
        )
    if not isinstance(rule.description, str):
        raise RuleError(rule_id, "description must be a string")
    if not isinstance(rule.expression, str) or not rule.expression.strip():
        raise RuleError(rule_id, "expression must be a non-empty string")
    if len(rule.expression) > MAX_EXPRESSION_LENGTH:
        raise RuleError(rule_id, f"expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    score = rule.score
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise RuleError(rule_id, f"score must be a number, got {_type_name(score)}")
    if not math.isfinite(score) or not MIN_SCORE <= score <= MAX_SCORE:
        raise RuleError(rule_id, f"score must be between {MIN_SCORE:g} and {MAX_SCORE:g}")
    if rule.action not in ACTIONS:
        raise RuleError(rule_id, f"action must be one of {', '.join(ACTIONS)}; got {rule.action!r}")
    if not isinstance(rule.enabled, bool):
        raise RuleError(rule_id, f"enabled must be true or false, got {_type_name(rule.enabled)}")
    if not isinstance(rule.shadow, bool):
        raise RuleError(rule_id, f"shadow must be true or false, got {_type_name(rule.shadow)}")
    version = rule.version
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RuleError(rule_id, f"version must be an integer >= 1, got {version!r}")
    if rule.severity not in SEVERITIES:
        raise RuleError(
            rule_id, f"severity must be one of {', '.join(SEVERITIES)}; got {rule.severity!r}"
        )
    if not isinstance(rule.tags, tuple) or not all(isinstance(t, str) and t for t in rule.tags):
        raise RuleError(rule_id, "tags must be a list of non-empty strings")


def _type_name(value: object) -> str:
    """The YAML word for a value's type, for error messages."""
    if value is None:
        return "null"
    for kind, name in _TYPE_NAMES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


_TYPE_NAMES: Final[tuple[tuple[type, str], ...]] = (
    (bool, "boolean"),
    (int, "number"),
    (float, "number"),
    (str, "string"),
    (list, "list"),
    (dict, "mapping"),
)


# ---------------------------------------------------------------------------------------------
# YAML.


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a mapping with the same key twice (YAML keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {line})", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _load_yaml(yaml_text: str) -> object:
    try:
        return yaml.load(yaml_text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        raise RuleError(None, f"invalid YAML: {reason}") from None


def parse_ruleset(yaml_text: str) -> RulesetSpec:
    """Parse and validate a ruleset from YAML text, or raise `RuleError` naming the culprit."""
    document = _load_yaml(yaml_text)
    if document is None:
        raise RuleError(None, "the ruleset is empty; expected a mapping with a 'rules:' list")
    if not isinstance(document, dict):
        raise RuleError(
            None, f"the top level must be a mapping with 'rules:', got {_type_name(document)}"
        )
    unknown = [str(key) for key in document if key not in _RULESET_KEYS]
    if unknown:
        raise RuleError(
            None, f"unknown key {unknown[0]!r} at the top level (allowed: version, rules)"
        )
    if "rules" not in document:
        raise RuleError(None, "missing 'rules:' list")
    raw_rules = document["rules"]
    if not isinstance(raw_rules, list):
        raise RuleError(None, f"'rules' must be a list of mappings, got {_type_name(raw_rules)}")
    rules: list[Rule] = []
    seen: set[str] = set()
    for position, raw in enumerate(raw_rules, start=1):
        rule = _parse_rule(raw, position)
        if rule.id in seen:
            raise RuleError(rule.id, f"duplicate rule id (rule #{position})")
        seen.add(rule.id)
        rules.append(rule)
    frozen_rules = tuple(rules)
    version = _parse_version(document.get("version"), frozen_rules)
    return RulesetSpec(version=version, rules=frozen_rules)


def _parse_version(raw: object, rules: tuple[Rule, ...]) -> str:
    if raw is None:
        return content_version(rules)
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise RuleError(None, f"version must be a string (quote it), got {_type_name(raw)} {raw!r}")
    text = str(raw).strip()
    if not text:
        raise RuleError(None, "version must not be empty")
    return text


def _parse_rule(raw: object, position: int) -> Rule:
    if not isinstance(raw, dict):
        raise RuleError(None, f"rule #{position} must be a mapping, got {_type_name(raw)}")
    raw_id = raw.get("id")
    if not isinstance(raw_id, str):
        got = "missing" if raw_id is None else f"a {_type_name(raw_id)}"
        hint = " (YAML reads yes/no/on/off as booleans: quote the id)" if raw_id in _BOOLS else ""
        raise RuleError(None, f"rule #{position}: 'id' must be a string, but it is {got}{hint}")
    rule_id = raw_id
    unknown = [str(key) for key in raw if key not in _RULE_KEYS]
    if unknown:
        raise RuleError(rule_id, f"unknown key {unknown[0]!r} (allowed: {', '.join(_RULE_KEYS)})")
    missing = [key for key in _REQUIRED_RULE_KEYS if key not in raw]
    if missing:
        raise RuleError(rule_id, f"missing required key {missing[0]!r}")
    values: Mapping[str, object] = raw
    _expect(rule_id, "description", values["description"], str)
    _expect(rule_id, "expression", values["expression"], str)
    for key in ("action", "severity"):
        if key in values:
            _expect(rule_id, key, values[key], str)
    tags_raw = values.get("tags", [])
    if tags_raw is None:
        tags_raw = []
    if not isinstance(tags_raw, list) or not all(isinstance(t, str) for t in tags_raw):
        raise RuleError(rule_id, "tags must be a list of strings")
    score = values["score"]
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise RuleError(rule_id, f"score must be a number, got {_type_name(score)} {score!r}")
    return Rule(
        id=rule_id,
        description=cast(str, values["description"]).strip(),
        expression=cast(str, values["expression"]).strip(),
        score=float(score),
        action=cast(Action, values.get("action", "review")),
        enabled=cast(bool, values.get("enabled", True)),
        version=cast(int, values.get("version", 1)),
        severity=cast(Severity, values.get("severity", "medium")),
        tags=tuple(tags_raw),
        shadow=cast(bool, values.get("shadow", False)),
    )


def _expect(rule_id: str, key: str, value: object, kind: type) -> None:
    if not isinstance(value, kind):
        raise RuleError(
            rule_id, f"{key} must be a {_type_name(kind())}, got {_type_name(value)} {value!r}"
        )


def load_default_ruleset_text() -> str:
    """The YAML text of the default ruleset shipped as package data."""
    resource = resources.files("fraudstream").joinpath("resources/default_rules.yaml")
    return resource.read_text(encoding="utf-8")


def load_default_ruleset() -> RulesetSpec:
    """The shipped default ruleset, parsed."""
    return parse_ruleset(load_default_ruleset_text())
