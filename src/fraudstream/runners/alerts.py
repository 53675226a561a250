"""The alert dispatcher: delivers the `alerts` outbox to its channels, one thread per channel.

Scoring workers only ever insert outbox rows (in the decision's own transaction); everything
slow or fallible happens here, so a channel that is down delays its alerts and nothing else.

Per channel, in a loop:
1. Read the due alerts (pending, next attempt reached), oldest event first.
2. Deduplicate: an alert whose card already had a kept alert on the same route within
   `dedupe_window_s` of event time is suppressed, pointing at that one. Alerts are taken in
   event order by one dispatcher per channel (an advisory lock), so the outcome is the same
   however the work is cut.
3. Send, each alert alone or (email with `digest_s`) a route's alerts as one digest once the
   oldest has waited `digest_s`, at most `rate_per_minute` sends (token bucket; over the
   limit they wait, none is dropped). A Kafka channel sends up to 500 alerts per flush.
4. Record every try in `alert_attempts`. A failure schedules that alert's next try with
   doubling backoff and pauses the whole channel likewise (a server that is down gets one try
   per pause, not one per alert); the first success resets the pause. Nothing is ever given up.

Delivered means recorded as delivered right after the server accepted the message; a restarted
dispatcher picks up exactly what is not (see `fraudstream.adapters.alert_outbox`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg

from fraudstream.adapters import alert_outbox as outbox
from fraudstream.adapters.alert_channels import open_channel
from fraudstream.config import AlertSettings, ChannelSettings, EmailChannelSettings, Settings
from fraudstream.ports import Alert, AlertChannel, DeliveryFailed

log = logging.getLogger("fraudstream.alerts")

_RECONNECT_S = 2.0
_STANDBY_CHECK_S = 2.0


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; `take` waits for one."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._at = clock()

    def take(self, stop: threading.Event) -> bool:
        """Spend a token, waiting for it if need be; False if `stop` was set meanwhile."""
        while not stop.is_set():
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            stop.wait((1 - self._tokens) / self._rate)
        return False


@dataclass
class ChannelTotals:
    """What one channel's dispatcher did since it started."""

    delivered: int = 0
    suppressed: int = 0
    failed_attempts: int = 0
    messages: int = 0
    errors: list[str] = field(default_factory=list)


class ChannelDispatcher:
    """Delivers one channel's alerts; `run` until `stop` is set (see the module docstring)."""

    def __init__(
        self,
        name: str,
        channel: ChannelSettings,
        alerts: AlertSettings,
        postgres_url: str,
        kafka: dict[str, str] | None,
    ) -> None:
        self.name = name
        self.totals = ChannelTotals()
        self._settings = alerts
        self._channel_settings = channel
        self._url = postgres_url
        self._kafka = kafka
        self._recipients = {
            route.name: list(route.recipients) for route in alerts.routes if route.channel == name
        }
        self._bucket = TokenBucket(channel.rate_per_minute / 60, channel.burst)
        self._failures_in_row = 0
        self._paused_until = 0.0

    def run(self, stop: threading.Event) -> ChannelTotals:
        channel = open_channel(self._channel_settings, self._kafka)
        try:
            while not stop.is_set():
                try:
                    with psycopg.connect(self._url, autocommit=True) as connection:
                        if self._claim(connection, stop):
                            self._serve(connection, channel, stop)
                except psycopg.OperationalError as error:
                    log.warning("alerts %s: database unavailable (%s); retrying", self.name, error)
                    stop.wait(_RECONNECT_S)
                except Exception:  # a bug must not end deliveries for good: log, start over
                    log.exception("alerts %s: unexpected error; starting over", self.name)
                    stop.wait(_RECONNECT_S)
        finally:
            channel.close()
        return self.totals

    def _claim(self, connection: outbox.Connection, stop: threading.Event) -> bool:
        """Wait until this dispatcher serves the channel (another may hold it)."""
        waiting = False
        while not stop.is_set():
            if outbox.try_claim_channel(connection, self.name):
                log.info("alerts %s: serving", self.name)
                return True
            if not waiting:
                log.info("alerts %s: another dispatcher serves it; standing by", self.name)
                waiting = True
            stop.wait(_STANDBY_CHECK_S)
        return False

    def _serve(
        self, connection: outbox.Connection, channel: AlertChannel, stop: threading.Event
    ) -> None:
        limit = self._settings.batch_size
        if isinstance(self._channel_settings, EmailChannelSettings) and channel.digest:
            limit = max(limit, self._channel_settings.digest_max)
        while not stop.is_set():
            pause = self._paused_until - time.monotonic()
            if pause > 0:
                stop.wait(pause)
                continue
            due = outbox.due_alerts(connection, self.name, limit)
            kept = self._deduplicate(connection, due)
            sent = self._send(connection, channel, kept, stop)
            if not sent:  # nothing due, or a digest still gathering
                stop.wait(self._settings.poll_interval_s)

    def _deduplicate(self, connection: outbox.Connection, due: list[Alert]) -> list[Alert]:
        window = timedelta(seconds=self._settings.dedupe_window_s)
        last_kept: dict[tuple[str, str], tuple[datetime, int]] = {}
        kept: list[Alert] = []
        duplicates: list[tuple[int, int]] = []
        for alert in due:
            key = (alert.route, alert.card_ref or "")
            earlier = last_kept.get(key) if alert.card_ref is not None else None
            original = (
                earlier[1]
                if earlier is not None and alert.event_time - earlier[0] < window
                else outbox.kept_before(connection, alert, window)
            )
            if original is None:
                kept.append(alert)
                last_kept[key] = (alert.event_time, alert.id)
            else:
                duplicates.append((alert.id, original))
        outbox.suppress(connection, duplicates)
        self.totals.suppressed += len(duplicates)
        return kept

    def _messages(self, channel: AlertChannel, kept: list[Alert]) -> list[list[Alert]]:
        """The alerts each `deliver` call carries: up to the channel's `batch`, or per route a
        digest that is ready."""
        settings = self._channel_settings
        if not channel.digest or not isinstance(settings, EmailChannelSettings):
            size = max(1, channel.batch)
            return [kept[start : start + size] for start in range(0, len(kept), size)]
        by_route: dict[str, list[Alert]] = {}
        for alert in kept:
            by_route.setdefault(alert.route, []).append(alert)
        now = datetime.now(UTC)
        ready = []
        for alerts in by_route.values():
            oldest = min(alert.created_at for alert in alerts)
            waited = (now - oldest).total_seconds()
            if waited >= settings.digest_s or len(alerts) >= settings.digest_max:
                size = settings.digest_max
                ready.extend(alerts[start : start + size] for start in range(0, len(alerts), size))
        return ready

    def _send(
        self,
        connection: outbox.Connection,
        channel: AlertChannel,
        kept: list[Alert],
        stop: threading.Event,
    ) -> bool:
        """Send what is ready; False if there was nothing to send."""
        messages = self._messages(channel, kept)
        for alerts in messages:
            if not self._bucket.take(stop):
                return True
            ids = [alert.id for alert in alerts]
            started = datetime.now(UTC)
            try:
                delivery_id = channel.deliver(alerts, self._recipients.get(alerts[0].route, []))
            except DeliveryFailed as error:
                self._failed(connection, ids, str(error), started)
                return True
            outbox.record_delivered(connection, self.name, ids, delivery_id, started)
            self._failures_in_row = 0
            self.totals.delivered += len(alerts)
            self.totals.messages += 1
        return bool(messages)

    def _failed(
        self, connection: outbox.Connection, ids: list[int], error: str, started: datetime
    ) -> None:
        settings = self._settings
        backoff = (settings.retry_base_s, settings.retry_max_s)
        outbox.record_failed(connection, self.name, ids, error, started, backoff)
        self._failures_in_row += 1
        pause = min(settings.retry_base_s * 2 ** (self._failures_in_row - 1), settings.retry_max_s)
        self._paused_until = time.monotonic() + pause
        self.totals.failed_attempts += len(ids)
        self.totals.errors = [*self.totals.errors[-9:], error]
        log.warning("alerts %s: delivery failed (%s); next try in %.1f s", self.name, error, pause)


class AlertDispatcher:
    """A `ChannelDispatcher` thread for every channel that a route uses."""

    def __init__(self, settings: Settings) -> None:
        from fraudstream.runners.serve import kafka_client, postgres_url  # noqa: PLC0415

        alerts = settings.alerts
        used = {route.channel for route in alerts.routes}
        url = postgres_url(settings)
        kafka = kafka_client(settings) if settings.kafka.bootstrap_servers else None
        self.channels = [
            ChannelDispatcher(name, alerts.channels[name], alerts, url, kafka)
            for name in sorted(used)
        ]

    def run(self, stop: threading.Event) -> dict[str, ChannelTotals]:
        """Deliver until `stop` is set; each channel finishes the message in hand first."""
        threads = [
            threading.Thread(
                target=channel.run, args=(stop,), name=f"alerts-{channel.name}", daemon=True
            )
            for channel in self.channels
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {channel.name: channel.totals for channel in self.channels}
