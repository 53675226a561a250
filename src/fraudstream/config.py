"""The one settings object, and the one place that reads the environment.

Sources, strongest first: arguments given in code, `FRAUDSTREAM_*` environment variables (nested
fields with a double underscore: `FRAUDSTREAM_KAFKA__BOOTSTRAP_SERVERS`), then a TOML file
(`FRAUDSTREAM_CONFIG`, else `fraudstream.toml` in the working directory when present), then the
defaults. Every default targets the embedded stack: a server whose address is left unset is
started locally by `fraudstream.stack`; one that is set is used as it is and nothing embedded
starts for it. Secrets are `SecretStr`, so they never show in a repr or a log line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from fraudstream.config_alerts import (
    AlertRouteSettings,
    AlertSettings,
    ChannelSettings,
    EmailChannelSettings,
    KafkaChannelSettings,
    SlackChannelSettings,
    WebhookChannelSettings,
)
from fraudstream.core.errors import FraudstreamError

__all__ = [
    "AlertRouteSettings",
    "AlertSettings",
    "ChannelSettings",
    "EmailChannelSettings",
    "KafkaChannelSettings",
    "Settings",
    "SettingsError",
    "SlackChannelSettings",
    "WebhookChannelSettings",
    "load_settings",
]

CONFIG_FILE_ENV = "FRAUDSTREAM_CONFIG"
DEFAULT_CONFIG_FILE = Path("fraudstream.toml")


class SettingsError(FraudstreamError):
    """A setting is missing, malformed or inconsistent; the message names it."""


class KafkaSettings(BaseModel):
    """A Kafka cluster, or (bootstrap_servers unset) the embedded broker."""

    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: Path | None = None
    transactions_topic: str = "transactions"
    decisions_topic: str = "decisions"
    dead_letters_topic: str = "dead_letters"
    partitions: int = Field(default=4, ge=1)
    linger_ms: int = Field(default=50, ge=0, le=5000)
    """How long the transaction producer gathers messages into one record batch. The embedded
    broker's cost per fetch grows with the batches a partition ever stored (it has no
    retention), so runs over ~10 minutes on it want fewer, larger batches: 250 ms with one
    partition held the whole pipeline at p50/p99 195/343 ms over an hour at 2 k tx/s (the
    broker alone: 164/304 ms; see `bench/pipeline.py`)."""
    fetch_wait_ms: int = Field(default=50, ge=1, le=10_000)
    """How long the broker may hold a consumer's fetch when nothing new is there. A Kafka
    cluster answers as soon as a message arrives, so there a longer wait costs no latency and
    saves requests. The embedded broker does not answer early (a message that arrives waits
    out the fetch) and lists all of a partition's record batches on each fetch, so its cost
    grows with fetches x batches held: at 10 ms a consumer fetched ~100 times a second and,
    with 15 k batches held (an hour at `linger_ms` 250), took the broker to 20-45 % of a core
    and p99 to 0.4-0.9 s; at 50 ms it stayed at 9 % and p99 318 ms (the wait costs ~8 ms of
    p50 on an empty log)."""
    reader_prefetch_kb: int = Field(default=4096, ge=64, le=2_097_151)
    """How much a worker's reader fetches ahead of what it has taken (librdkafka's
    `queued.max.messages.kbytes`). A fetch brings one partition's messages in a run, and the
    worker pauses a partition whose buffer is full, which drops what was fetched ahead for it:
    with librdkafka's 64 MB, a 400 k backlog on the embedded broker left the worker waiting on
    an empty partition 12 % of the run; at 4 MB the partitions arrive interleaved
    (`bench/pipeline.py`). A cluster far away may want more."""

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            missing = [
                name
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"security_protocol {self.security_protocol} needs {missing}")
        return self

    def client_config(self, bootstrap_servers: str) -> dict[str, str]:
        """librdkafka settings for connecting (the password included: never log this)."""
        config = {
            "bootstrap.servers": bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism is not None:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location is not None:
            config["ssl.ca.location"] = str(self.ssl_ca_location)
        return config


class PostgresSettings(BaseModel):
    """A PostgreSQL server (`url`: postgresql://user:password@host:port/db), or the embedded one."""

    model_config = ConfigDict(extra="forbid")

    url: SecretStr | None = None


class RedisSettings(BaseModel):
    """A Redis server (`url`: redis://[:password@]host:port/db), or the embedded one."""

    model_config = ConfigDict(extra="forbid")

    url: SecretStr | None = None


class StackSettings(BaseModel):
    """Where the embedded servers keep their data, and how long they may take to start."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Path("var/stack")
    start_timeout_s: float = Field(default=60.0, gt=0)


class WorkerSettings(BaseModel):
    """How scoring workers consume, batch, keep feature state and find their rules."""

    model_config = ConfigDict(extra="forbid")

    group_id: str = "fraudstream-workers"
    max_batch: int = Field(default=4000, ge=1, le=100_000)
    """Most messages scored together. It only binds while a backlog is read (at a steady rate a
    batch is what arrived within `max_wait_ms`): there a batch's fixed costs (Polars steps,
    one Postgres transaction, one offset commit) are shared by more rows. Catching up on 200 k
    transactions, one worker stored 20.8 k tx/s at 1 000, 24.2 k at 2 000 and 25.8 k at 4 000
    and at 8 000 (`FRAUDSTREAM_WORKER__MAX_BATCH=N python bench/pipeline.py --parts throughput`)."""
    max_wait_ms: int = Field(default=50, ge=1, le=60_000)
    """Longest a batch waits to fill up: the latency a quiet stream pays."""
    batches_in_flight: int = Field(default=2, ge=1, le=8)
    """Scored batches being written at once while the next is scored; they are committed in
    order. One worker catching up on 200 k transactions stored 30.2 k tx/s with 1, 35.9 k with
    2 and no more with 3 (medians of alternating runs; `runners/batch_writer.py`)."""
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    rules_file: Path | None = None
    """A ruleset YAML, hot-reloaded; unset: the shipped default rules."""
    retry_backoff_max_s: float = Field(default=5.0, gt=0)
    """Longest pause between attempts to write a batch while a sink is down."""
    handover_wait_s: float = Field(default=10.0, gt=0, le=600)
    """How long a worker losing partitions in a rebalance waits for its batches in flight to be
    written and committed before it lets them go (the group's rebalance waits meanwhile). A
    batch not written by then is read, scored and written again by the partitions' new owner:
    raise it where a sink may take longer than this for one batch."""
    end_grace_ms: int = Field(default=200, ge=0, le=60_000)
    """How long a partition at the end of its log still holds newer events of other partitions
    back (see `runners/alignment.py`): the price of the same order, and features, every run."""
    state: Literal["memory", "redis"] = "redis"
    """Where feature state is checkpointed: `redis` (shared by the group's workers: a restart or
    a moved partition resumes from the newest checkpoint) or `memory` (no checkpoints: a
    restart folds the log from its beginning)."""
    checkpoint_interval_s: float = Field(default=10.0, gt=0)
    """The shortest time between checkpoints (a large state is checkpointed less often: see
    `runners/stream_state.py`)."""
    checkpoint_budget_bytes: int = Field(default=8 << 30, ge=0)
    """Redis memory the group's checkpoints may take together: older ones are deleted first,
    and the two newest are always kept."""
    metrics_port: int | None = Field(default=0, ge=0, le=65535)
    """Where the worker serves Prometheus metrics (`/metrics`, all interfaces): 0 any free port
    (each worker reports its own in its status file, see `runners.serve.metrics_endpoints`);
    N a fixed port, where the i-th of several workers that `fraudstream run` starts listens
    on N + i; None (`off` in the environment or a file) no metrics server."""

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _metrics_off(cls, value: object) -> object:
        """`off` / `none` / empty: no server (an environment variable cannot hold None)."""
        if isinstance(value, str) and value.strip().lower() in {"", "off", "none", "null"}:
            return None
        return value


class ModelSettings(BaseModel):
    """How workers find, verify and refresh their models."""

    model_config = ConfigDict(extra="forbid")

    signing_key: SecretStr | None = None
    """Key that signs and verifies model files. Unset: a key made once for this machine under
    `stack.data_dir`; set it (the same everywhere) when workers run on several machines."""
    poll_interval_s: float = Field(default=5.0, gt=0)
    """How often a worker asks the `models` table which versions serve."""


class HistorySettings(BaseModel):
    """The Delta Lake history of every decision (`fraudstream.adapters.delta`)."""

    model_config = ConfigDict(extra="forbid")

    delta_path: str | None = None
    """A local path or a URI (s3://bucket/decisions, ...). Unset: workers write no history,
    and `fraudstream run` writes it to `stack.data_dir/history/decisions`."""
    storage_options: dict[str, str] = Field(default_factory=dict, repr=False)
    """Object store options for `delta_path`, credentials included: never log them."""


class SparkSettings(BaseModel):
    """The Spark Structured Streaming runner (`fraudstream spark`, `runners/spark_job.py`)."""

    model_config = ConfigDict(extra="forbid")

    master: str = "local[*]"
    """Any Spark master URL: local[N], spark://host:7077, yarn, k8s://https://..."""
    source: Literal["python", "kafka"] = "python"
    """`python`: the project's own Kafka source (Python Data Source API, nothing to install);
    `kafka`: Spark's built-in format, where the spark-sql-kafka jar is on the classpath."""
    checkpoint_dir: str | None = None
    """Where the query keeps its offsets and state (any Hadoop-compatible path on a cluster).
    Unset: `stack.data_dir/spark/<transactions topic>`."""
    max_offsets_per_trigger: int | None = Field(default=50_000, ge=1)
    """Most messages one micro-batch reads (None: everything available)."""
    trigger_interval_ms: int = Field(default=1000, ge=0)
    """How often a micro-batch starts when the query runs on (not with --available-now)."""
    shuffle_partitions: int = Field(default=0, ge=0)
    """`spark.sql.shuffle.partitions`; 0: the machine's core count."""
    driver_memory: str = "2g"
    ui: bool = False
    conf: dict[str, str] = Field(default_factory=dict)
    """Any other Spark settings, passed through as they are."""


class ListSettings(BaseModel):
    """How runners keep their allow and deny lists current (`runners/list_watcher.py`)."""

    model_config = ConfigDict(extra="forbid")

    poll_interval_s: float = Field(default=2.0, gt=0)
    """How often a worker or the API asks whether the lists changed (one single-row query);
    a change is applied within this time."""


class RuleSettings(BaseModel):
    """How runners keep the rules managed in the database current
    (`runners/rule_watcher.py`)."""

    model_config = ConfigDict(extra="forbid")

    poll_interval_s: float = Field(default=2.0, gt=0)
    """How often a worker or the API asks whether a managed rule changed (one single-row
    query); a change is applied within this time."""


class ApiSettings(BaseModel):
    """The scoring API (`fraudstream api`, `runners/api_server.py`)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    """0: any free port (the chosen one is logged)."""
    max_batch: int = Field(default=256, ge=1, le=10_000)
    """Most requests scored as one batch (requests queue while a batch is scored)."""
    key_cache_s: float = Field(default=5.0, ge=0)
    """How long a key lookup is trusted: a revoked key stops working within this time."""
    default_rate_limit_per_s: float = Field(default=1000.0, gt=0)
    """The rate limit of keys created without one."""
    replay_memory: int = Field(default=100_000, ge=1)
    """Answers kept in memory for replays; older ones are found in `transactions`."""
    linger_ms: float = Field(default=0.5, ge=0, le=1000)
    """The producer's wait before it sends the scored requests it holds. A batch is produced in
    one go, yet with 0 librdkafka sends its first message at once and the rest in further
    requests: at 32 concurrent clients that took the embedded broker to 40 % of a core, and any
    wait from 0.3 ms up halved it (and the API's own CPU per request by about a tenth). One
    client pays for it: p50 1.3 -> 2.6 ms, p99 unchanged at 5-6 ms (`bench/api.py`)."""
    fold_fetch_wait_ms: int = Field(default=200, ge=0, le=10_000)
    """How long the API's fold of the stream lets the broker hold a fetch until 1 MB is
    waiting: a transaction published elsewhere reaches its feature state within about this
    (plus `worker.end_grace_ms`). Most of what it reads is its own answers, which it skips, and
    the embedded broker's cost per fetch grows with the log: fetching every 10 ms, as workers
    do, took the broker from 30 % to 85 % of a core within 15 s of scoring at 2.5 k/s."""


_SQL_NAME = r"[A-Za-z_][A-Za-z0-9_$]{0,62}"


class CaptureSettings(BaseModel):
    """Change-data capture (`fraudstream capture`): the rows a system inserts into a PostgreSQL
    table, read by logical replication and published to the transactions topic."""

    model_config = ConfigDict(extra="forbid")

    source_url: SecretStr | None = None
    """The database holding the table; unset: the pipeline's (`postgres.url`). Its user needs
    the REPLICATION attribute, its server `wal_level = logical`."""
    table: str = Field(default="payments", pattern=rf"^({_SQL_NAME}\.)?{_SQL_NAME}$")
    """`schema.table`, or `table` in schema `public`."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Transaction field -> source column, for fields whose column has another name; every
    other field is read from the column of its own name when the table has one."""
    id_prefix: str = Field(default="", max_length=64)
    """Put before each transaction id (`payments-`), to keep several sources' ids apart."""
    slot: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,63}$")
    """The replication slot; unset: `fraudstream_<schema>_<table>`."""
    publication: str | None = Field(default=None, pattern=rf"^{_SQL_NAME}$")
    """The publication; unset: the slot's name."""
    on_update: Literal["ignore", "emit"] = "ignore"
    """`ignore`: a captured payment is not captured again (updates are counted); `emit`: the
    new row version is published again under its transaction id, which downstream sinks
    absorb. Deletes and truncates are always ignored and counted."""
    snapshot: bool = False
    """Also capture the rows that exist when the slot is created (`capture run --snapshot`)."""
    max_batch_rows: int = Field(default=5000, ge=1, le=1_000_000)
    """Rows confirmed by Kafka together before their transactions are acknowledged."""
    max_wait_ms: int = Field(default=200, ge=1, le=60_000)
    """Longest a committed transaction waits for its batch to fill before it is confirmed."""
    retry_backoff_max_s: float = Field(default=5.0, gt=0)
    """Longest pause between attempts to reconnect while the database or Kafka is away."""

    @field_validator("columns")
    @classmethod
    def _columns_name_fields(cls, columns: dict[str, str]) -> dict[str, str]:
        from fraudstream.core.events import Transaction  # noqa: PLC0415 - only when mapped

        known = Transaction.__struct_fields__
        unknown = sorted(set(columns) - set(known))
        if unknown:
            raise ValueError(f"not transaction fields: {unknown} (fields: {', '.join(known)})")
        empty = sorted(field for field, column in columns.items() if not column.strip())
        if empty:
            raise ValueError(f"no source column given for {empty}")
        return columns

    @property
    def slot_name(self) -> str:
        derived = "fraudstream_" + re.sub(r"[^a-z0-9_]", "_", self.qualified_table.lower())
        return self.slot or derived[:63]

    @property
    def publication_name(self) -> str:
        return self.publication or self.slot_name

    @property
    def qualified_table(self) -> str:
        return self.table if "." in self.table else f"public.{self.table}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FRAUDSTREAM_", env_nested_delimiter="__", extra="forbid"
    )

    kafka: KafkaSettings = KafkaSettings()
    postgres: PostgresSettings = PostgresSettings()
    redis: RedisSettings = RedisSettings()
    stack: StackSettings = StackSettings()
    worker: WorkerSettings = WorkerSettings()
    models: ModelSettings = ModelSettings()
    lists: ListSettings = ListSettings()
    rules: RuleSettings = RuleSettings()
    alerts: AlertSettings = AlertSettings()
    history: HistorySettings = HistorySettings()
    spark: SparkSettings = SparkSettings()
    capture: CaptureSettings = CaptureSettings()
    api: ApiSettings = ApiSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file = _config_file()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=file))
        return tuple(sources)


def _config_file() -> Path | None:
    named = os.environ.get(CONFIG_FILE_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise SettingsError(f"{CONFIG_FILE_ENV}={named}: no such file")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Settings from code, environment and file; a bad value raises `SettingsError` naming it."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or 'settings'}: {issue['msg']}"
            for issue in error.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None
    except (ValueError, OSError) as error:  # a config file that is not valid TOML
        raise SettingsError(f"invalid settings file {_config_file()}: {error}") from None
