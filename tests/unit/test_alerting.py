"""Alert routing, severity, signatures, the rate limiter and the alert settings: no servers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from fraudstream.adapters.alert_channels import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    email_message,
    sign,
    slack_payload,
    verify_signature,
)
from fraudstream.config import SettingsError, load_settings
from fraudstream.core.alerting import ALERT_COLUMNS, AlertRoute, AlertRouting, Severity
from fraudstream.ports import Alert
from fraudstream.runners.alerts import TokenBucket

AT = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)


def _frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "transaction_id": ["t1", "t2", "t3", "t4", "t5"],
            "card_ref": ["c1", "c2", "c3", "c4", None],
            "action": ["approve", "review", "review", "decline", "decline"],
            "score": [0.1, 0.3, 0.6, 0.7, 0.97],
            "is_flagged": [False, True, True, True, True],
            "rules_fired": [[], ["velocity"], ["new_country"], ["velocity", "large"], ["large"]],
            "timestamp": [AT] * 5,
        }
    )


def test_severity_follows_action_and_score() -> None:
    severity = Severity(critical_score=0.95, medium_score=0.5)
    levels = _frame().select(severity.expression()).to_series().to_list()
    assert levels == ["low", "low", "medium", "high", "critical"]


def test_routes_filter_by_action_severity_and_rule() -> None:
    routing = AlertRouting(
        (
            AlertRoute("all", "topic"),
            AlertRoute("declines", "mail", actions=frozenset({"decline"})),
            AlertRoute("medium-up", "slack", min_severity="medium"),
            AlertRoute("velocity", "hook", rules=frozenset({"velocity"})),
        )
    )
    alerts = routing.alerts(_frame())
    assert alerts.columns == list(ALERT_COLUMNS)
    taken = {
        route: sorted(group.get_column("transaction_id").to_list())
        for (route,), group in alerts.group_by("route")
    }
    assert taken == {
        "all": ["t2", "t3", "t4", "t5"],
        "declines": ["t4", "t5"],
        "medium-up": ["t3", "t4", "t5"],
        "velocity": ["t2", "t4"],
    }
    channels = dict(alerts.select("route", "channel").unique().iter_rows())
    assert channels["declines"] == "mail"


def test_no_routes_or_no_flags_route_nothing() -> None:
    assert AlertRouting(()).alerts(_frame()).is_empty()
    quiet = _frame().with_columns(is_flagged=pl.lit(False))
    assert AlertRouting((AlertRoute("all", "topic"),)).alerts(quiet).is_empty()


def test_an_unknown_severity_is_refused_naming_the_route() -> None:
    with pytest.raises(ValueError, match="route r"):
        AlertRoute("r", "c", min_severity="urgent")


def test_a_signature_verifies_and_any_change_breaks_it() -> None:
    body = b'{"alerts": []}'
    now = 1_800_000_000
    headers = {TIMESTAMP_HEADER: str(now), SIGNATURE_HEADER: sign(b"k", str(now), body)}
    assert verify_signature(b"k", headers, body, now=now + 5)
    assert not verify_signature(b"other", headers, body, now=now)
    assert not verify_signature(b"k", headers, body + b" ", now=now)
    assert not verify_signature(b"k", headers, body, now=now + 3600), "too old: a replay"
    assert not verify_signature(b"k", {SIGNATURE_HEADER: headers[SIGNATURE_HEADER]}, body)


def test_the_token_bucket_lets_a_burst_through_then_spaces_the_rest() -> None:
    clock = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: clock[0])
    stop = threading.Event()
    assert all(bucket.take(stop) for _ in range(3))
    waits: list[float] = []

    def waiting_stop_wait(seconds: float | None = None) -> bool:
        waits.append(seconds or 0.0)
        clock[0] += seconds or 0.0
        return False

    stop.wait = waiting_stop_wait  # type: ignore[method-assign]
    assert bucket.take(stop)
    assert waits == [pytest.approx(0.5)]


def _alert(**changes: object) -> Alert:
    fields: dict[str, object] = {
        "id": 7, "route": "r", "channel": "c", "transaction_id": "tx-1", "card_ref": "tok_1",
        "card_last4": "4242", "customer_id": "cu", "merchant_id": "<script>m</script>",
        "country": "FR", "amount": 9500.0, "currency": "EUR", "action": "decline",
        "severity": "high", "score": 0.91, "rules_fired": ("large",),
        "reasons": ("amount 9500 > 9000",), "event_time": AT, "created_at": AT, "attempts": 0,
    }  # fmt: skip
    fields.update(changes)
    return Alert(**fields)  # type: ignore[arg-type]


def test_messages_escape_untrusted_text_and_name_the_alert() -> None:
    message = email_message([_alert()], ["ops@example.com"], "email:7")
    html = message.get_body(("html",))
    assert html is not None
    assert "&lt;script&gt;" in html.get_content() and "<script>" not in html.get_content()
    assert message["X-Fraudstream-Alert-Ids"] == "7"
    assert "…4242" in message["Subject"] and "9,500.00 EUR" in message["Subject"]
    assert "tok_1" not in message["Subject"], "the last four digits are enough"
    slack = slack_payload([_alert()])
    assert "<script>" not in str(slack) and "&lt;script&gt;" in slack["text"]


def test_alert_settings_name_the_culprit() -> None:
    with pytest.raises(SettingsError, match="route x: no channel 'nope'"):
        load_settings(alerts={"routes": [{"name": "x", "channel": "nope"}]})
    mail = {"kind": "email", "host": "smtp.example.com"}
    with pytest.raises(SettingsError, match="route m: an email route needs recipients"):
        load_settings(
            alerts={"channels": {"mail": mail}, "routes": [{"name": "m", "channel": "mail"}]}
        )
    with pytest.raises(SettingsError, match="recipients are for email channels"):
        load_settings(
            alerts={"routes": [{"name": "t", "channel": "alerts-topic", "recipients": ["a@b"]}]}
        )
    route = {"name": "same", "channel": "alerts-topic"}
    with pytest.raises(SettingsError, match="route names used twice"):
        load_settings(alerts={"routes": [route, route]})
    with pytest.raises(SettingsError, match="username and password go together"):
        load_settings(alerts={"channels": {"mail": {**mail, "username": "u"}}, "routes": []})
    with pytest.raises(SettingsError, match=r"alerts\.channels\.hook"):
        load_settings(alerts={"channels": {"hook": {"kind": "webhook", "url": "http://x"}}})


def test_the_readme_alert_settings_load(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("### Alerts", 1)[1]
    toml = section.split("```toml", 1)[1].split("```", 1)[0]
    (tmp_path / "fraudstream.toml").write_text(toml)
    monkeypatch.setenv("FRAUDSTREAM_CONFIG", str(tmp_path / "fraudstream.toml"))
    alerts = load_settings().alerts
    assert sorted(alerts.channels) == ["alerts-topic", "case-system", "ops-mail", "slack"]
    assert [route.name for route in alerts.routes] == [
        "declines-to-ops", "critical-to-slack", "testing-to-cases",
    ]  # fmt: skip
