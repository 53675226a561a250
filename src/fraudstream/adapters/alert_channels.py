"""Alert channels: email (one message per alert, or a digest), Slack, a signed JSON webhook, and
a Kafka topic. Each turns outbox alerts into one message and confirms it was accepted.

Every message names the alert ids it carries (a `Message-ID` built from them, an
`Idempotency-Key` header, a Kafka header), so the rare repeat after a dispatcher crash between
sending and recording can be recognised by the receiver. Webhook bodies are signed:
`X-Fraudstream-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">` with the timestamp in
`X-Fraudstream-Timestamp`; `verify_signature` is the receiver's side of it.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

import httpx
import msgspec
from confluent_kafka import KafkaError, Message, Producer

from fraudstream.adapters.kafka import PRODUCER_DEFAULTS
from fraudstream.adapters.smtp import SmtpUnavailable, send_email
from fraudstream.config import (
    ChannelSettings,
    EmailChannelSettings,
    KafkaChannelSettings,
    SlackChannelSettings,
    WebhookChannelSettings,
)
from fraudstream.ports import Alert, AlertChannel, DeliveryFailed

SIGNATURE_HEADER = "X-Fraudstream-Signature"
TIMESTAMP_HEADER = "X-Fraudstream-Timestamp"
ALERT_IDS_HEADER = "X-Fraudstream-Alert-Ids"
_USER_AGENT = "fraudstream-alerts/1"


def alert_payload(alert: Alert) -> dict[str, Any]:
    """The JSON form of an alert (webhook body, Kafka value)."""
    return {
        "alert_id": alert.id,
        "route": alert.route,
        "transaction_id": alert.transaction_id,
        "card_ref": alert.card_ref,
        "card_last4": alert.card_last4,
        "customer_id": alert.customer_id,
        "merchant_id": alert.merchant_id,
        "country": alert.country,
        "amount": alert.amount,
        "currency": alert.currency,
        "action": alert.action,
        "severity": alert.severity,
        "score": round(alert.score, 6),
        "rules_fired": list(alert.rules_fired),
        "reasons": list(alert.reasons),
        "event_time": alert.event_time.isoformat(),
    }


def headline(alert: Alert) -> str:
    """One line: what happened, to which card, where, how sure."""
    card = f"card …{alert.card_last4}" if alert.card_last4 else f"card {alert.card_ref or '?'}"
    return (
        f"{alert.action.upper()} ({alert.severity}) {card}: {alert.amount:,.2f} {alert.currency}"
        f" at {alert.merchant_id or '?'} ({alert.country or '?'}), score {alert.score:.2f}"
    )


def _delivery_id(kind: str, alerts: list[Alert]) -> str:
    ids = [alert.id for alert in alerts]
    return f"{kind}:{ids[0]}" if len(ids) == 1 else f"{kind}:{min(ids)}-{max(ids)}x{len(ids)}"


# -- email ----------------------------------------------------------------------------------


class EmailChannel:
    """SMTP; a digest channel when `digest_s` is set (one message for many alerts)."""

    def __init__(self, settings: EmailChannelSettings) -> None:
        self._settings = settings
        self.digest = settings.digest_s > 0
        self.batch = 1

    def deliver(self, alerts: list[Alert], recipients: list[str]) -> str:
        delivery_id = _delivery_id("email", alerts)
        message = email_message(alerts, recipients, delivery_id)
        try:
            refused = send_email(self._settings, message)
        except SmtpUnavailable as error:
            raise DeliveryFailed(str(error)) from None
        if refused:  # the others have it: sending again would repeat it to them
            delivery_id += f" (refused: {', '.join(refused)})"
        return delivery_id

    def close(self) -> None:
        return None


def email_message(alerts: list[Alert], recipients: list[str], delivery_id: str) -> EmailMessage:
    """A text and an HTML part; the subject is the alert's headline, or a digest's count."""
    message = EmailMessage()
    first = alerts[0]
    if len(alerts) == 1:
        message["Subject"] = f"[fraudstream] {headline(first)}"
    else:
        message["Subject"] = f"[fraudstream] {len(alerts)} alerts on route {first.route}"
    message["To"] = ", ".join(recipients)
    message["Message-ID"] = f"<{delivery_id.replace(':', '.')}@fraudstream>"
    message[ALERT_IDS_HEADER] = ",".join(str(alert.id) for alert in alerts)
    message.set_content("\n\n".join(_alert_text(alert) for alert in alerts))
    message.add_alternative(_alerts_html(alerts), subtype="html")
    return message


def _alert_text(alert: Alert) -> str:
    return "\n".join(
        (
            headline(alert),
            f"  transaction {alert.transaction_id} at {alert.event_time.isoformat()}",
            f"  rules: {', '.join(alert.rules_fired) or '-'}",
            f"  reasons: {'; '.join(alert.reasons) or '-'}",
            f"  alert {alert.id}, route {alert.route}",
        )
    )


def _alerts_html(alerts: list[Alert]) -> str:
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(value))}</td>"
            for value in (
                alert.action.upper(),
                alert.severity,
                f"…{alert.card_last4}" if alert.card_last4 else alert.card_ref or "",
                f"{alert.amount:,.2f} {alert.currency}",
                alert.merchant_id or "",
                alert.country or "",
                f"{alert.score:.2f}",
                "; ".join(alert.reasons),
                alert.transaction_id,
            )
        )
        + "</tr>"
        for alert in alerts
    )
    head = "".join(
        f"<th>{name}</th>"
        for name in (
            "Action", "Severity", "Card", "Amount", "Merchant", "Country", "Score", "Reasons",
            "Transaction",
        )
    )  # fmt: skip
    return (
        "<html><body><h3>fraudstream alerts</h3>"
        f"<table border='1' cellpadding='4'><tr>{head}</tr>{rows}</table></body></html>"
    )


# -- HTTP: Slack and signed webhooks ---------------------------------------------------------


def _post(client: httpx.Client, url: str, body: bytes, headers: Mapping[str, str]) -> None:
    try:
        response = client.post(url, content=body, headers=dict(headers))
    except httpx.HTTPError as error:
        raise DeliveryFailed(f"{type(error).__name__}: {error}") from None
    if not response.is_success:
        raise DeliveryFailed(f"HTTP {response.status_code}: {response.text[:200]}")


class SlackChannel:
    """A Slack incoming webhook: one message per alert, in Slack's `text` + `blocks` form."""

    digest = False
    batch = 1

    def __init__(self, settings: SlackChannelSettings) -> None:
        self._url = settings.webhook_url.get_secret_value()
        self._client = httpx.Client(timeout=settings.timeout_s, headers={"User-Agent": _USER_AGENT})

    def deliver(self, alerts: list[Alert], recipients: list[str]) -> str:
        delivery_id = _delivery_id("slack", alerts)
        body = msgspec.json.encode(slack_payload(alerts))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": delivery_id,
            ALERT_IDS_HEADER: ",".join(str(alert.id) for alert in alerts),
        }
        _post(self._client, self._url, body, headers)
        return delivery_id

    def close(self) -> None:
        self._client.close()


def slack_payload(alerts: list[Alert]) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    for alert in alerts:
        reasons = "\n".join(f"• {_slack_escape(reason)}" for reason in alert.reasons) or "•"
        text = f"*{_slack_escape(headline(alert))}*\n{reasons}"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": _slack_escape(
                            f"transaction {alert.transaction_id} · alert {alert.id}"
                            f" · route {alert.route}"
                        ),
                    }
                ],
            }
        )
    return {"text": "; ".join(_slack_escape(headline(alert)) for alert in alerts), "blocks": blocks}


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn treats &, < and > as markup: escape them as Slack documents."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify_signature(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """True when `body` was signed with `secret` no more than `tolerance_s` ago (the window
    stops an old, captured request from being replayed)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "")
    signature = lowered.get(SIGNATURE_HEADER.lower(), "")
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        return False
    if abs(age) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookChannel:
    """A JSON POST per alert, signed with HMAC-SHA256 so the receiver can trust it."""

    digest = False
    batch = 1

    def __init__(self, settings: WebhookChannelSettings) -> None:
        self._url = settings.url
        self._secret = settings.secret.get_secret_value().encode()
        self._client = httpx.Client(timeout=settings.timeout_s, headers={"User-Agent": _USER_AGENT})

    def deliver(self, alerts: list[Alert], recipients: list[str]) -> str:
        delivery_id = _delivery_id("webhook", alerts)
        body = msgspec.json.encode({"alerts": [alert_payload(alert) for alert in alerts]})
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": delivery_id,
            ALERT_IDS_HEADER: ",".join(str(alert.id) for alert in alerts),
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        _post(self._client, self._url, body, headers)
        return delivery_id

    def close(self) -> None:
        self._client.close()


# -- Kafka -----------------------------------------------------------------------------------


class KafkaChannel:
    """One JSON message per alert on a topic, keyed by card, confirmed by its delivery report."""

    digest = False
    batch = 500
    """Produced together and confirmed by one flush: still one message per alert."""

    def __init__(self, settings: KafkaChannelSettings, kafka: dict[str, str]) -> None:
        self.topic = settings.topic
        self._timeout_s = settings.timeout_s
        self._producer = Producer({**PRODUCER_DEFAULTS, **kafka, "linger.ms": 5})

    def deliver(self, alerts: list[Alert], recipients: list[str]) -> str:
        outcomes: list[KafkaError | Message] = []

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            outcomes.append(error if error is not None else message)

        for alert in alerts:
            self._producer.produce(
                self.topic,
                key=(alert.card_ref or alert.transaction_id).encode(),
                value=msgspec.json.encode(alert_payload(alert)),
                headers=[("alert_id", str(alert.id).encode())],
                on_delivery=on_delivery,
            )
        self._producer.flush(self._timeout_s)
        errors = [outcome for outcome in outcomes if isinstance(outcome, KafkaError)]
        if errors or len(outcomes) < len(alerts):
            raise DeliveryFailed(f"topic {self.topic}: {errors[:1] or 'delivery timed out'}")
        last = outcomes[-1]
        assert isinstance(last, Message)
        return f"kafka:{self.topic}/{last.partition()}/{last.offset()}"

    def close(self) -> None:
        self._producer.flush(self._timeout_s)


def open_channel(settings: ChannelSettings, kafka: dict[str, str] | None) -> AlertChannel:
    """The channel a channel's settings describe (`kafka`: the pipeline cluster's config)."""
    if isinstance(settings, EmailChannelSettings):
        return EmailChannel(settings)
    if isinstance(settings, SlackChannelSettings):
        return SlackChannel(settings)
    if isinstance(settings, WebhookChannelSettings):
        return WebhookChannel(settings)
    if kafka is None:
        raise ValueError("a Kafka alert channel needs the pipeline's Kafka settings")
    return KafkaChannel(settings, kafka)
