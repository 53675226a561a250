"""Settings: environment beats the config file, bad values are named, secrets stay hidden."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException

from fraudstream.adapters.kafka_sinks import reader_config
from fraudstream.config import (
    EmailChannelSettings,
    SettingsError,
    WebhookChannelSettings,
    load_settings,
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No FRAUDSTREAM_* variable or fraudstream.toml of the caller's leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("FRAUDSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_target_the_embedded_stack() -> None:
    settings = load_settings()
    assert settings.kafka.bootstrap_servers is None
    assert settings.postgres.url is None
    assert settings.redis.url is None
    assert settings.kafka.transactions_topic == "transactions"
    assert settings.stack.data_dir == Path("var/stack")


def test_environment_beats_the_file_and_the_file_beats_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    file = tmp_path / "site.toml"
    file.write_text(
        '[kafka]\nbootstrap_servers = "file:9092"\npartitions = 12\n'
        '[postgres]\nurl = "postgresql://app:pw@db.example:5432/fraud"\n'
    )
    monkeypatch.setenv("FRAUDSTREAM_CONFIG", str(file))
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__BOOTSTRAP_SERVERS", "env:9092")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "env:9092"
    assert settings.kafka.partitions == 12
    assert settings.postgres.url is not None
    assert settings.postgres.url.get_secret_value().endswith("db.example:5432/fraud")


def test_fraudstream_toml_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / "fraudstream.toml").write_text('[redis]\nurl = "redis://cache:6379/2"\n')
    settings = load_settings()
    assert settings.redis.url is not None
    assert settings.redis.url.get_secret_value() == "redis://cache:6379/2"


def test_sasl_ssl_gives_the_client_config_confluent_cloud_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__BOOTSTRAP_SERVERS", "pkc-1.cloud:9092")
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__SASL_USERNAME", "KEY")
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__SASL_PASSWORD", "s3cr3t")
    settings = load_settings()
    config = settings.kafka.client_config("pkc-1.cloud:9092")
    assert config == {
        "bootstrap.servers": "pkc-1.cloud:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "KEY",
        "sasl.password": "s3cr3t",
    }
    assert "s3cr3t" not in repr(settings)
    assert "s3cr3t" not in str(settings.model_dump())


def test_sasl_without_credentials_is_rejected_naming_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(SettingsError, match=r"kafka.*sasl_mechanism.*sasl_username"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("FRAUDSTREAM_KAFKA__PARTITIONS", "0", "kafka.partitions"),
        ("FRAUDSTREAM_KAFKA__SECURITY_PROTOCOL", "TLS", "kafka.security_protocol"),
        ("FRAUDSTREAM_KAFKA__FETCH_WAIT_MS", "0", "kafka.fetch_wait_ms"),
        ("FRAUDSTREAM_KAFKA__READER_PREFETCH_KB", "10", "kafka.reader_prefetch_kb"),
        ("FRAUDSTREAM_STACK__START_TIMEOUT_S", "soon", "stack.start_timeout_s"),
    ],
)
def test_a_bad_value_is_rejected_with_the_setting_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        load_settings()


def test_an_unknown_key_in_the_file_is_rejected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    file = tmp_path / "typo.toml"
    file.write_text('[kafka]\nbootstrap_server = "x:9092"\n')
    monkeypatch.setenv("FRAUDSTREAM_CONFIG", str(file))
    with pytest.raises(SettingsError, match=r"kafka\.bootstrap_server"):
        load_settings()


def test_a_missing_or_malformed_config_file_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FRAUDSTREAM_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(SettingsError, match=r"absent\.toml"):
        load_settings()
    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\n")
    monkeypatch.setenv("FRAUDSTREAM_CONFIG", str(broken))
    with pytest.raises(SettingsError, match=r"broken\.toml"):
        load_settings()


def test_worker_environment_gives_a_worker_the_same_nested_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Dict and list settings travel as JSON, with nested secrets revealed and nested paths
    resolved (the worker may start in another directory), and load back equal."""
    from fraudstream.runners.local import worker_environment

    settings = load_settings(
        postgres={"url": "postgresql://app:pw@db:5432/fraud"},
        history={
            "delta_path": "s3://bucket/decisions",
            "storage_options": {"AWS_REGION": "eu-west-1", "AWS_SECRET_ACCESS_KEY": "k3y=/+"},
        },
        alerts={
            "channels": {
                "hook": {"kind": "webhook", "url": "https://hooks.example/x", "secret": "s3cr3t"},
                "mail": {"kind": "email", "username": "u", "password": "pw", "ca_file": "ca.pem"},
            },
            "routes": [
                {"name": "to-hook", "channel": "hook", "actions": ["decline"]},
                {"name": "to-mail", "channel": "mail", "recipients": ["a@example.com"]},
            ],
        },
    )
    assert "k3y" not in repr(settings), "storage options may hold credentials"
    env = worker_environment(settings)
    assert env["FRAUDSTREAM_HISTORY__STORAGE_OPTIONS"].startswith("{")
    for name, value in env.items():
        if name.startswith("FRAUDSTREAM_"):
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path.parent)  # the worker's own working directory

    again = load_settings()
    assert again.history.storage_options == settings.history.storage_options
    assert again.history.delta_path == "s3://bucket/decisions"
    hook, mail = again.alerts.channels["hook"], again.alerts.channels["mail"]
    assert isinstance(hook, WebhookChannelSettings)
    assert hook.secret.get_secret_value() == "s3cr3t"
    assert isinstance(mail, EmailChannelSettings)
    assert mail.ca_file == tmp_path / "ca.pem"
    assert [route.actions for route in again.alerts.routes] == [["decline"], ["review", "decline"]]
    assert again.stack.data_dir == tmp_path / "var/stack"
    assert worker_environment(again) == env


def test_the_readers_prefetch_reaches_librdkafka_which_accepts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRAUDSTREAM_KAFKA__READER_PREFETCH_KB", "2048")
    kafka = load_settings().kafka
    config = reader_config(kafka.fetch_wait_ms, kafka.reader_prefetch_kb)
    assert config["queued.max.messages.kbytes"] == 2048
    # librdkafka checks every property name and range when the consumer is made
    Consumer({"bootstrap.servers": "127.0.0.1:9", "group.id": "prefetch", **config}).close()
    with pytest.raises(KafkaException, match=r"queued\.max\.messages\.kbytes"):
        Consumer(
            {"bootstrap.servers": "127.0.0.1:9", "group.id": "prefetch", **reader_config(50, 0)}
        )
