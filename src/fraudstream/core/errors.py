"""Every exception the core raises. Runners catch these by type; messages name the culprit."""

from __future__ import annotations


class FraudstreamError(Exception):
    """Base of all core errors."""


class InvalidTransaction(FraudstreamError):  # noqa: N818 - reads as what it is
    """A transaction record failed decoding or validation.

    `field` is the offending field (`$` when the record as a whole is unreadable), so a dead-letter
    row can say exactly what was wrong without anyone re-reading the raw bytes.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class RuleError(FraudstreamError):
    """A rule or ruleset could not be loaded; the message names the rule."""

    def __init__(self, rule_id: str | None, reason: str) -> None:
        where = f"rule {rule_id!r}" if rule_id else "ruleset"
        super().__init__(f"{where}: {reason}")
        self.rule_id = rule_id
        self.reason = reason


class ConfigError(FraudstreamError):
    """A feature, decision or engine setting is inconsistent; the message names the setting."""


class ModelError(FraudstreamError):
    """A model file that is not ours, not intact, or not signed with this deployment's key."""


class SnapshotError(FraudstreamError):
    """A state snapshot does not fit this feature configuration or is incomplete; the message
    names the array."""
