"""The `[alerts]` settings: channels (email, Slack, webhook, Kafka topic) and the routes that
send flagged decisions to them. Part of the one settings object (`fraudstream.config`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

Severity = Literal["low", "medium", "high", "critical"]
FlagAction = Literal["review", "decline"]


def _both_actions() -> list[FlagAction]:
    return ["review", "decline"]


class _ChannelSettings(BaseModel):
    """What every alert channel has: a delivery timeout and a rate limit (token bucket)."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=10.0, gt=0)
    rate_per_minute: float = Field(default=600.0, gt=0)
    """Sends per minute at most (a message, a digest, or a Kafka flush of up to 500 alerts);
    alerts over the limit wait their turn, none is dropped."""
    burst: int = Field(default=20, ge=1)
    """Messages that may go at once after a quiet spell."""


class EmailChannelSettings(_ChannelSettings):
    """An SMTP server. `security`: `none`, `starttls` (upgrade on port 587) or `ssl` (465)."""

    kind: Literal["email"] = "email"
    rate_per_minute: float = Field(default=120.0, gt=0)
    host: str = "localhost"
    port: int = Field(default=25, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    sender: str = "fraudstream@localhost"
    ca_file: Path | None = None
    """CA bundle that signs the server's certificate; unset: the system's."""
    digest_s: float = Field(default=0.0, ge=0)
    """0: one message per alert. Otherwise one digest per route gathering the alerts due within
    this many seconds of the oldest one waiting."""
    digest_max: int = Field(default=200, ge=1)

    @model_validator(mode="after")
    def _login_needs_both(self) -> EmailChannelSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class SlackChannelSettings(_ChannelSettings):
    """A Slack incoming webhook."""

    kind: Literal["slack"] = "slack"
    rate_per_minute: float = Field(default=60.0, gt=0)
    """Slack takes about one message a second per incoming webhook."""
    webhook_url: SecretStr


class WebhookChannelSettings(_ChannelSettings):
    """Any HTTP endpoint: a JSON POST signed with HMAC-SHA256 of `secret` (see
    `fraudstream.adapters.alert_channels.verify_signature`)."""

    kind: Literal["webhook"] = "webhook"
    url: str
    secret: SecretStr


class KafkaChannelSettings(_ChannelSettings):
    """A topic of the pipeline's Kafka cluster; one JSON message per alert, keyed by card."""

    kind: Literal["kafka"] = "kafka"
    rate_per_minute: float = Field(default=60_000.0, gt=0)
    topic: str = "alerts"


ChannelSettings = Annotated[
    EmailChannelSettings | SlackChannelSettings | WebhookChannelSettings | KafkaChannelSettings,
    Field(discriminator="kind"),
]


class AlertRouteSettings(BaseModel):
    """Which flagged decisions a channel hears of: every filter given must match."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    channel: str
    actions: list[FlagAction] = Field(default_factory=_both_actions, min_length=1)
    min_severity: Severity = "low"
    rules: list[str] = Field(default_factory=list)
    """Only alerts where one of these rules fired; empty: any."""
    recipients: list[str] = Field(default_factory=list)
    """Email addresses (email channels only)."""


def _default_channels() -> dict[str, ChannelSettings]:
    return {"alerts-topic": KafkaChannelSettings()}


def _default_routes() -> list[AlertRouteSettings]:
    return [AlertRouteSettings(name="flagged-to-topic", channel="alerts-topic")]


class AlertSettings(BaseModel):
    """Alert channels, the routes that feed them, and how the dispatcher delivers.

    Severity: `critical` for a decline scoring at least `critical_score`, `high` for any other
    decline, `medium` for a review scoring at least `medium_score`, else `low`.
    """

    model_config = ConfigDict(extra="forbid")

    channels: dict[str, ChannelSettings] = Field(default_factory=_default_channels)
    routes: list[AlertRouteSettings] = Field(default_factory=_default_routes)
    dedupe_window_s: float = Field(default=3600.0, ge=0)
    """One alert per card and route in this much event time; later ones are suppressed."""
    critical_score: float = Field(default=0.95, ge=0, le=1)
    medium_score: float = Field(default=0.5, ge=0, le=1)
    retry_base_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=60.0, gt=0)
    """Backoff after a failed delivery doubles from `retry_base_s` up to this; never gives up."""
    batch_size: int = Field(default=100, ge=1, le=10_000)
    poll_interval_s: float = Field(default=0.5, gt=0)

    @model_validator(mode="after")
    def _routes_name_channels(self) -> AlertSettings:
        names = [route.name for route in self.routes]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"route names used twice: {twice}")
        for route in self.routes:
            channel = self.channels.get(route.channel)
            if channel is None:
                raise ValueError(
                    f"route {route.name}: no channel {route.channel!r} "
                    f"(channels: {sorted(self.channels)})"
                )
            if isinstance(channel, EmailChannelSettings) and not route.recipients:
                raise ValueError(f"route {route.name}: an email route needs recipients")
            if route.recipients and not isinstance(channel, EmailChannelSettings):
                raise ValueError(f"route {route.name}: recipients are for email channels")
        return self
