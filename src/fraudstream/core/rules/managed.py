"""Rules managed in the database, merged with the rules file into the ruleset runners use.

A managed rule has a status: `draft` (kept and backtested, never evaluated on traffic),
`shadow` (evaluated on every decision and recorded, never moving it), `enabled` or `disabled`.
A managed rule with the id of a file rule replaces it, except a draft: the file rule keeps
deciding until the draft is put in shadow or enabled. A disabled managed rule switches the
file rule of its id off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal, get_args

import polars as pl

from fraudstream.core.errors import RuleError
from fraudstream.core.rules.ruleset import CompiledRuleset, compile_ruleset
from fraudstream.core.rules.spec import Rule, RulesetSpec

RuleStatus = Literal["draft", "shadow", "enabled", "disabled"]
STATUSES: Final[tuple[str, ...]] = get_args(RuleStatus)


def status_of(rule: Rule) -> RuleStatus:
    """The status a rule's flags stand for (a file rule has no draft status)."""
    if not rule.enabled:
        return "disabled"
    return "shadow" if rule.shadow else "enabled"


def with_status(rule: Rule, status: RuleStatus) -> Rule:
    """The rule with the flags of `status` (a draft is not enabled)."""
    return replace(rule, enabled=status in ("shadow", "enabled"), shadow=status == "shadow")


@dataclass(frozen=True, slots=True)
class ManagedRule:
    """The current version of a rule managed in the database."""

    rule: Rule
    status: RuleStatus


def merged_spec(base: RulesetSpec, managed: Sequence[ManagedRule], revision: int) -> RulesetSpec:
    """`base` (the rules file) with the managed rules applied: file rules in file order, each
    replaced by its managed version unless that is a draft, then the other managed rules that
    are not drafts, by id. The version names the file's and the managed rules' revision."""
    live = {m.rule.id: with_status(m.rule, m.status) for m in managed if m.status != "draft"}
    if not live:
        return base
    rules = [live.pop(rule.id, rule) for rule in base.rules]
    rules += [live[rule_id] for rule_id in sorted(live)]
    return RulesetSpec(version=f"{base.version}+rules.{revision}", rules=tuple(rules))


def compile_merged(
    base: RulesetSpec,
    managed: Sequence[ManagedRule],
    revision: int,
    columns: Mapping[str, pl.DataType],
    on_dropped: Callable[[RuleError], None] = lambda error: None,
) -> CompiledRuleset:
    """The merged ruleset compiled. A managed rule that no longer compiles (rules are checked
    when saved, but the columns may have changed since) is left out and reported to
    `on_dropped`, so one bad rule never stops scoring; a bad file rule raises."""
    remaining = list(managed)
    while True:
        try:
            return compile_ruleset(merged_spec(base, remaining, revision), columns)
        except RuleError as error:
            bad = [m for m in remaining if m.rule.id == error.rule_id]
            if not bad:
                raise
            on_dropped(error)
            remaining = [m for m in remaining if m.rule.id != error.rule_id]


__all__ = [
    "STATUSES",
    "ManagedRule",
    "RuleStatus",
    "compile_merged",
    "merged_spec",
    "status_of",
    "with_status",
]
