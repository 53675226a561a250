"""What `deploy/` ships: the Grafana dashboard, its data sources, the Compose stack, the image.

- Every SQL query of the dashboard (each target's `rawSql` and each SQL template variable) runs
  on the real schema filled with scored transactions, dead letters, labels, alerts and delivery
  attempts, as the read-only login Grafana uses, after the macros and template variables are
  expanded the way Grafana expands them (`expand`), and must return rows: a renamed column, a
  broken macro or a missing grant fails here, naming the panel.
- Every metric the dashboard's PromQL names is one the workers export (`METRIC_NAMES`), and
  every expression parses (`promtool`, from the Debian package `prometheus`).
- `docker-compose config` accepts `deploy/compose.yaml`, alone and with the managed-Kafka
  override, and the services, mounts, dependencies and settings are the ones described in
  `deploy/README.md`; the Dockerfile is checked as text (no Docker engine here).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
import polars as pl
import psycopg
import pytest
import typer
import yaml
from grafana_macros import GrafanaQueryError, Variable, expand
from psycopg import sql

from fraudstream.adapters.postgres import PostgresSink, migrate
from fraudstream.cli import app
from fraudstream.config import Settings, load_settings
from fraudstream.core.alerting import AlertRoute, AlertRouting
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.ports import DeadLetter, ScoredBatch
from fraudstream.stack import EmbeddedPostgres, Endpoints

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "fraudstream.json"
DATASOURCES_FILE = DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
PROVIDERS_FILE = DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"
READER_SCRIPT = DEPLOY / "postgres" / "initdb" / "10-grafana-reader.sh"
COMPOSE_FILE = DEPLOY / "compose.yaml"
CONFLUENT_FILE = DEPLOY / "compose.confluent.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCKERFILE = DEPLOY / "Dockerfile"

POSTGRES_UID = "fraudstream-postgres"
PROMETHEUS_UID = "fraudstream-prometheus"
DASHBOARD = json.loads(DASHBOARD_FILE.read_text())


def test_the_translator_expands_as_grafana_and_refuses_what_it_does_not_know() -> None:
    start = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)
    end = datetime(2026, 11, 23, 12, 0, 0, 250000, tzinfo=UTC)
    action = {"action": Variable(("review", "o'neil"), multi=True)}
    query = (
        "SELECT $__timeGroupAlias(t.decided_at, '5m', 0), $__timeGroup(x, 1h) y "
        "WHERE $__timeFilter(decided_at) AND a IN ($action) AND b = ${action:csv} "
        "AND c > $__timeFrom() AND '$__interval'::interval < '1h' AND $__interval_ms > 0"
    )
    assert expand(query, start, end, action) == (
        'SELECT floor(extract(epoch from t.decided_at)/300)*300 AS "time", '
        "floor(extract(epoch from x)/3600)*3600 y "
        "WHERE decided_at BETWEEN '2026-11-23T11:00:00Z' AND '2026-11-23T12:00:00.25Z' "
        "AND a IN ('review','o''neil') AND b = review,o'neil "
        "AND c > '2026-11-23T11:00:00Z' AND '1m'::interval < '1h' AND 60000 > 0"
    )
    # Grafana's pre-5.3 compatibility: $__timeGroup right before a comma gets the alias.
    assert expand("SELECT $__timeGroup(ts, '1m'), 1", start, end, {}).startswith(
        'SELECT floor(extract(epoch from ts)/60)*60 AS "time",'
    )
    for bad, why in [
        ("WHERE $__unixEpochFilter(ts)", "unknown macro"),
        ("WHERE $__timeFilter()", "needs a column"),
        ("SELECT $__timeGroup(ts, '1m', zero)", "bad fill"),
        ("WHERE a = $nope", "unknown template variable"),
        ("WHERE a = ${action:json}", "unknown format"),
        ("WHERE a = $__rate_interval", "unknown built-in"),
    ]:
        with pytest.raises(GrafanaQueryError, match=why):
            expand(bad, start, end, action)


# --- the dashboard's structure -------------------------------------------------------------


def _panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _provisioned() -> dict[str, dict[str, Any]]:
    return {source["uid"]: source for source in yaml.safe_load(DATASOURCES_FILE.read_text())[
        "datasources"
    ]}  # fmt: skip


def test_the_data_sources_point_at_the_compose_services() -> None:
    sources = _provisioned()
    assert set(sources) == {POSTGRES_UID, PROMETHEUS_UID}
    postgres, prometheus = sources[POSTGRES_UID], sources[PROMETHEUS_UID]
    assert postgres["type"] == "grafana-postgresql-datasource"
    assert postgres["url"] == "postgres:5432"
    assert postgres["jsonData"]["database"] == "${POSTGRES_DB}"
    assert postgres["user"] == "${GRAFANA_DB_USER}"
    assert postgres["secureJsonData"]["password"] == "${GRAFANA_DB_PASSWORD}"
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(PROVIDERS_FILE.read_text())["providers"]
    assert [provider["type"] for provider in providers] == ["file"]


def test_the_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    assert DASHBOARD["uid"] and DASHBOARD["title"]
    assert 36 <= DASHBOARD["schemaVersion"] <= 41
    assert DASHBOARD.get("id") is None  # provisioned: Grafana assigns it
    panels = _panels(DASHBOARD)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    sources = _provisioned()
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        where = f"panel {panel['id']} {panel.get('title')!r}"
        grid = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= set(grid), where
        assert grid["x"] >= 0 and grid["w"] >= 1 and grid["x"] + grid["w"] <= 24, where
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not cells & taken, f"{where} overlaps another panel"
        taken |= cells
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel.get("description"), where
        uid = panel["datasource"]["uid"]
        assert uid in sources, f"{where}: data source {uid!r} is not provisioned"
        assert panel["datasource"]["type"] == sources[uid]["type"], where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], where
            field = "rawSql" if uid == POSTGRES_UID else "expr"
            assert target.get(field, "").strip(), f"{where}: a target without {field}"
    for variable in DASHBOARD["templating"]["list"]:
        assert variable["datasource"]["uid"] in sources, variable["name"]


# --- every SQL query on the real schema, with data ------------------------------------------


@dataclass(frozen=True)
class SqlQuery:
    where: str
    text: str
    format: str


def _sql_variables() -> list[dict[str, Any]]:
    return [
        variable
        for variable in DASHBOARD["templating"]["list"]
        if variable["datasource"]["uid"] == POSTGRES_UID
    ]


def _variable_sql(variable: Mapping[str, Any]) -> str:
    query = variable["query"]
    return str(query["rawSql"] if isinstance(query, dict) else query)


def _sql_queries() -> list[SqlQuery]:
    queries = [
        SqlQuery(f"variable ${variable['name']}", _variable_sql(variable), "table")
        for variable in _sql_variables()
    ]
    for panel in _panels(DASHBOARD):
        for target in panel.get("targets", []):
            if "rawSql" in target:
                where = f"panel {panel['id']} {panel['title']!r} target {target['refId']}"
                queries.append(SqlQuery(where, target["rawSql"], target.get("format", "table")))
    return queries


SQL_QUERIES = _sql_queries()
N_TRANSACTIONS = 3000
SPREAD = timedelta(minutes=30)
"""The scored transactions' decided_at fall in the last half hour (the dashboard shows the
last hour); one batch more is decided three hours ago, outside the range."""


def _url_for(url: str, database: str, user: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc if user is None else f"{user}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(path=f"/{database}", netloc=netloc))


def _scored(now: datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Scored transactions with source positions, decided over the last `SPREAD`, and the
    simulator's ground truth."""
    config = FeatureConfig()
    ruleset = compile_ruleset(parse_ruleset(load_default_ruleset_text()), available_columns(config))
    stream = generate(GeneratorConfig(seed=3, n_transactions=N_TRANSACTIONS))
    decisions = Engine(ruleset).process(stream.transactions, FeatureState(config))
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    step_us = int(SPREAD / timedelta(microseconds=1)) // N_TRANSACTIONS
    decided = pl.lit(now - SPREAD, pl.Datetime("us", "UTC")) + pl.duration(
        microseconds=index * step_us
    )
    frame = decisions.frame.with_columns(
        kafka_partition=(index % 3).cast(pl.Int32),
        kafka_offset=index,
        decided_at=decided,
        ingested_at=decided - pl.duration(milliseconds=40),
    )
    return frame, stream.labels


def _dead_letters(now: datetime) -> tuple[DeadLetter, ...]:
    return tuple(
        DeadLetter(
            topic="transactions",
            partition=offset % 3,
            offset=10_000 + offset,
            raw=b'{"amount": "lots"}',
            error=f"{field}: expected a number" if field == "amount" else f"{field}: missing",
            field=field,
            received_at=now - timedelta(minutes=offset),
        )
        for offset, field in enumerate(["amount", "amount", "timestamp", "card_ref", "amount"])
    )


ROUTING = AlertRouting(
    (
        AlertRoute(name="flagged-to-topic", channel="alerts-topic"),
        AlertRoute(name="declines-to-ops", channel="ops-mail", actions=frozenset({"decline"})),
    )
)

_OUTBOX_HISTORY = """
-- The first half of the alerts was delivered on the first try, 1.5 s after it was written.
UPDATE alerts SET status = 'delivered', attempts = 1, delivery_id = 'msg-' || id,
                  delivered_at = created_at + interval '1.5 seconds'
WHERE id <= (SELECT min(id) + (max(id) - min(id)) / 2 FROM alerts);
INSERT INTO alert_attempts (alert_id, channel, attempt, started_at, finished_at, outcome,
                            delivery_id)
SELECT id, channel, 1, delivered_at - interval '0.2 seconds', delivered_at, 'delivered',
       delivery_id
FROM alerts WHERE status = 'delivered';
-- The mail server refuses the rest for now: two failed tries each, still pending.
UPDATE alerts SET attempts = 2, last_error = 'smtp: 421 service not available'
WHERE status = 'pending' AND channel = 'ops-mail';
INSERT INTO alert_attempts (alert_id, channel, attempt, started_at, finished_at, outcome, error)
SELECT id, channel, attempt, now() - interval '1 minute' * (3 - attempt),
       now() - interval '1 minute' * (3 - attempt) + interval '5 seconds', 'failed', last_error
FROM alerts CROSS JOIN generate_series(1, 2) AS attempt
WHERE status = 'pending' AND channel = 'ops-mail';
-- Three topic alerts were duplicates of an earlier one for their card.
UPDATE alerts SET status = 'suppressed',
                  duplicate_of = (SELECT min(id) FROM alerts WHERE status = 'delivered')
WHERE id IN (SELECT id FROM alerts WHERE status = 'pending' AND channel = 'alerts-topic'
             ORDER BY id DESC LIMIT 3);
INSERT INTO models (version, kind, artifact, sha256, metadata, role, activated_at)
VALUES ('gradient_boosting-20261123', 'gradient_boosting', '\\x00', repeat('0', 64),
        '{"training_window": ["2026-10-01", "2026-11-15"]}', 'live', now());
"""


@dataclass(frozen=True)
class GrafanaDatabase:
    reader_url: str
    """The read-only login Grafana uses (made by the shipped init script)."""
    in_range: int
    """Transactions decided within the dashboard's default time range."""


def _run_reader_script(admin_url: str, database: str, reader: str) -> None:
    """deploy/postgres/initdb/10-grafana-reader.sh, as the postgres image runs it on a new
    data directory (before any worker has migrated the schema)."""
    parts = urlsplit(admin_url)
    environment = {
        "PATH": f"{EmbeddedPostgres.bin_dir()}{os.pathsep}{os.environ['PATH']}",
        "PGHOST": str(parts.hostname),
        "PGPORT": str(parts.port),
        "POSTGRES_USER": str(parts.username),
        "POSTGRES_DB": database,
        "GRAFANA_DB_USER": reader,
        "GRAFANA_DB_PASSWORD": "not-checked-on-loopback-trust",
    }
    result = subprocess.run(
        ["sh", str(READER_SCRIPT)], env=environment, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def grafana_database(endpoints: Endpoints) -> Iterator[GrafanaDatabase]:
    """A new database: the reader login, the schema, and data for every panel."""
    name = f"test_grafana_{uuid.uuid4().hex[:10]}"
    reader = f"grafana_reader_{uuid.uuid4().hex[:10]}"
    admin = _url_for(endpoints.postgres_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _url_for(endpoints.postgres_url, name)
    try:
        _run_reader_script(url, name, reader)
        migrate(url)
        now = datetime.now(UTC)
        frame, truth = _scored(now)
        old = frame.head(100).with_columns(
            transaction_id=pl.lit("old_") + pl.col("transaction_id"),
            decided_at=pl.col("decided_at") - timedelta(hours=3),
        )
        sink = PostgresSink(url, alert_routing=ROUTING)
        try:
            letters = _dead_letters(now)
            for offset in range(0, frame.height, 500):
                sink.write(ScoredBatch(frame.slice(offset, 500), letters if offset == 0 else ()))
            sink.write(ScoredBatch(old, ()))
        finally:
            sink.close()
        flagged = frame.filter(pl.col("is_flagged")).get_column("transaction_id")
        sampled = frame.filter(~pl.col("is_flagged")).gather_every(10).get_column("transaction_id")
        labels = truth.filter(pl.col("transaction_id").is_in([*flagged, *sampled]))
        with psycopg.connect(url) as connection, connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO labels (transaction_id, is_fraud, source) VALUES (%s, %s, %s)",
                [(row[0], row[1], "chargeback" if row[1] else "analyst")
                 for row in labels.select("transaction_id", "is_fraud").iter_rows()],
            )  # fmt: skip
            cursor.execute(_OUTBOX_HISTORY)
            statuses = dict(
                cursor.execute("SELECT status, count(*) FROM alerts GROUP BY 1").fetchall()
            )
            assert set(statuses) == {"pending", "delivered", "suppressed"}, statuses
            confirmed = cursor.execute("SELECT count(*) FROM labels WHERE is_fraud").fetchone()
            assert confirmed is not None and confirmed[0] > 0
        yield GrafanaDatabase(_url_for(endpoints.postgres_url, name, reader), frame.height)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            )
            connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(reader)))


def _run(url: str, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with psycopg.connect(url, connect_timeout=10) as connection:
        cursor = connection.execute(query)
        columns = [column.name for column in cursor.description or []]
        return columns, cursor.fetchall()


def _variables(url: str, start: datetime, end: datetime) -> dict[str, Variable]:
    """The SQL template variables with "All" selected: every value their query returns."""
    found = {}
    for variable in _sql_variables():
        _, rows = _run(url, expand(_variable_sql(variable), start, end, {}))
        found[variable["name"]] = Variable(
            tuple(str(row[0]) for row in rows),
            multi=bool(variable.get("multi") or variable.get("includeAll")),
            all_value=variable.get("allValue") or None,
        )
    return found


def _time_range() -> tuple[datetime, datetime]:
    assert DASHBOARD["time"] == {"from": "now-1h", "to": "now"}
    end = datetime.now(UTC)
    return end - timedelta(hours=1), end


@pytest.mark.parametrize("query", SQL_QUERIES, ids=[query.where for query in SQL_QUERIES])
def test_every_sql_query_of_the_dashboard_runs_on_the_schema_and_returns_rows(
    query: SqlQuery, grafana_database: GrafanaDatabase
) -> None:
    start, end = _time_range()
    url = grafana_database.reader_url
    try:
        text = expand(query.text, start, end, _variables(url, start, end))
    except GrafanaQueryError as error:
        pytest.fail(f"{query.where}: {error}")
    try:
        columns, rows = _run(url, text)
    except psycopg.Error as error:
        pytest.fail(f"{query.where}: {error}\n{text}")
    assert rows, f"{query.where} returned no rows on data made for it:\n{text}"
    if query.format == "time_series":
        assert "time" in columns, f"{query.where}: a time series needs a `time` column"
        times = [row[columns.index("time")] for row in rows]
        assert times == sorted(times), f"{query.where}: Grafana wants time series sorted"


def test_the_time_range_and_the_action_filter_reach_the_queries(
    grafana_database: GrafanaDatabase,
) -> None:
    """The stat counts exactly the decisions in range (100 more lie three hours back), and
    narrowing $action narrows what the decisions-by-action panel shows."""
    start, end = _time_range()
    url = grafana_database.reader_url
    variables = _variables(url, start, end)
    assert variables["action"].values == ("approve", "review", "decline")
    by_title = {panel.get("title"): panel for panel in _panels(DASHBOARD)}
    scored = by_title["Transactions scored"]["targets"][0]["rawSql"]
    assert _run(url, expand(scored, start, end, variables))[1] == [(grafana_database.in_range,)]
    by_action = by_title["Decisions by action"]["targets"][0]["rawSql"]
    only_declines = {"action": Variable(("decline",), multi=True)}
    _, rows = _run(url, expand(by_action, start, end, only_declines))
    assert [row[0] for row in rows] == ["decline"]


def test_the_grafana_login_reads_and_cannot_write(grafana_database: GrafanaDatabase) -> None:
    with psycopg.connect(grafana_database.reader_url) as connection:
        assert connection.execute("SELECT count(*) FROM alert_attempts").fetchone() != (0,)
    with (
        psycopg.connect(grafana_database.reader_url) as connection,
        pytest.raises(psycopg.errors.ReadOnlySqlTransaction),
    ):
        connection.execute("DELETE FROM labels")
    # A session may turn read-only off; the grants still allow nothing but SELECT.
    with psycopg.connect(grafana_database.reader_url, autocommit=True) as connection:
        connection.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute("DELETE FROM labels")


# --- every PromQL metric is one the workers export -------------------------------------------

_METRIC = re.compile(r"\bfraudstream_[a-z0-9_]+")
_HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def _promql() -> list[tuple[str, str]]:
    found = []
    for panel in _panels(DASHBOARD):
        for target in panel.get("targets", []):
            if "expr" in target:
                found.append((f"panel {panel['id']} {panel['title']!r}", target["expr"]))
    for variable in DASHBOARD["templating"]["list"]:
        if variable["datasource"]["uid"] == PROMETHEUS_UID:
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            found.append((f"variable ${variable['name']}", text))
    return found


def _exported(name: str, exported: set[str]) -> str | None:
    """The exported metric a series name belongs to (a histogram's `_bucket`, `_sum` and
    `_count` belong to the histogram), or None."""
    if name in exported:
        return name
    for suffix in _HISTOGRAM_SERIES:
        if name.endswith(suffix) and name.removesuffix(suffix) in exported:
            return name.removesuffix(suffix)
    return None


def _worker_metric_names() -> set[str]:
    """`METRIC_NAMES`, the metrics the workers export, from wherever the metrics live."""
    for module in ("fraudstream.adapters.metrics", "fraudstream.runners.metrics"):
        try:
            return set(importlib.import_module(module).METRIC_NAMES)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise  # it exists, and something it imports is missing
    pytest.fail("no fraudstream.adapters.metrics.METRIC_NAMES (nor in runners.metrics)")


def test_every_prometheus_metric_of_the_dashboard_is_one_the_workers_export() -> None:
    exported = _worker_metric_names()
    used: set[str] = set()
    for where, expr in _promql():
        names = _METRIC.findall(expr)
        assert names, f"{where}: no fraudstream metric in {expr!r}"
        unknown = [name for name in names if _exported(name, exported) is None]
        assert not unknown, f"{where}: the workers export no {unknown} ({expr})"
        used |= {_exported(name, exported) for name in names}
    shown = {
        "fraudstream_messages_consumed_total", "fraudstream_decisions_total",
        "fraudstream_rule_hits_total", "fraudstream_dead_letters_total",
        "fraudstream_batch_size", "fraudstream_batch_seconds",
        "fraudstream_event_to_decision_seconds", "fraudstream_state_entities",
        "fraudstream_consumer_lag_messages", "fraudstream_consumer_lag_exact",
        "fraudstream_sink_retries_total",
    }  # fmt: skip
    assert shown <= used, f"not on the dashboard: {sorted(shown - used)}"


_PROMQL_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "worker": ".*",  # the variable's allValue
    "action": "(approve|review|decline)",  # All, as Grafana formats it for Prometheus
}


def test_every_promql_expression_of_the_dashboard_parses(tmp_path: Path) -> None:
    """promtool (Debian package `prometheus`) parses each expression as a recording rule."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not installed: install the Debian package "
            "(`apt-get install --no-install-recommends prometheus`; "
            "`python3 dev.py test` does it when run as root)"
        )

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in _PROMQL_VARIABLES, f"unknown variable ${name}"
        return _PROMQL_VARIABLES[name]

    rules = [
        {
            "record": f"dashboard:expression_{index}",
            "expr": re.sub(r"\$\{(\w+)\}|\$(\w+)", variable, expr),
            "labels": {"where": where},
        }
        for index, (where, expr) in enumerate(_promql())
        if not expr.startswith("label_values(")  # a Grafana function, not PromQL
    ]
    assert len(rules) >= 15
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_lag_panel_says_it_reads_low_and_has_the_exact_flag_beside_it() -> None:
    panels = [panel for panel in _panels(DASHBOARD) if panel["type"] != "row"]

    def using(metric: str) -> dict[str, Any]:
        (found,) = [p for p in panels if any(metric in t.get("expr", "") for t in p["targets"])]
        return found

    lag, exact = using("fraudstream_consumer_lag_messages"), using("fraudstream_consumer_lag_exact")
    text = f"{lag['title']} {lag['description']}"
    assert "high watermark" in text and "one record batch" in text
    assert "fraudstream_consumer_lag_exact" in lag["description"]
    assert lag["gridPos"]["y"] == exact["gridPos"]["y"]
    assert exact["gridPos"]["x"] == lag["gridPos"]["x"] + lag["gridPos"]["w"]
    quantiles = [t["expr"] for p in panels for t in p["targets"] if "histogram_quantile" in
                 t.get("expr", "")]  # fmt: skip
    assert len(quantiles) >= 6  # p50 and p99 of latency, batch size and batch time
    for expr in quantiles:
        assert re.search(r"rate\(fraudstream_\w+_bucket\{[^}]*\}\[1m\]\)", expr), expr


# --- Compose ---------------------------------------------------------------------------------

SECRETS = {
    "POSTGRES_PASSWORD": "compose-test-pg",
    "GRAFANA_DB_PASSWORD": "compose-test-reader",
    "GRAFANA_ADMIN_PASSWORD": "compose-test-admin",
    "MODEL_SIGNING_KEY": "compose-test-signing-key",
}
CONFLUENT = {
    "KAFKA_BOOTSTRAP_SERVERS": "pkc-test.europe-west1.gcp.confluent.cloud:9092",
    "KAFKA_SASL_USERNAME": "API_KEY",
    "KAFKA_SASL_PASSWORD": "API_SECRET",
}


def _compose(*files: Path, environment: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with deploy/.env.example as the env file (so it is checked
    too) and `environment` over it."""
    command = shutil.which("docker-compose")
    if command is None:
        pytest.fail(
            "docker-compose is not installed: install the Debian package "
            "(`apt-get install --no-install-recommends docker-compose`; "
            "`python3 dev.py test` does it when run as root)"
        )
    argv = [command, "--env-file", str(ENV_EXAMPLE)]
    for file in files:
        argv += ["-f", str(file)]
    base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    return subprocess.run(
        [*argv, "config"], env={**base, **environment}, capture_output=True, text=True,
        timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip


def _config(*files: Path, environment: Mapping[str, str]) -> dict[str, Any]:
    result = _compose(*files, environment=environment)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def _mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """target -> source, from the short syntax (docker-compose 1.29) or the long one (v2)."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        found[target] = source
    return found


def _published(service: Mapping[str, Any]) -> set[int]:
    ports = set()
    for port in service.get("ports", []):
        if isinstance(port, str):
            ports.add(int(port.split("/")[0].rsplit(":", 1)[-1]))
        else:
            ports.add(int(port["target"]))
    return ports


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _settings(
    environment: Mapping[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Settings:
    """The settings a fraudstream process with this environment loads: an unknown
    FRAUDSTREAM_* name or a bad value fails (`extra="forbid"`)."""
    for key in list(os.environ):
        if key.startswith("FRAUDSTREAM_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no fraudstream.toml here
    for key, value in environment.items():
        if key.startswith("FRAUDSTREAM_"):
            monkeypatch.setenv(key, value)
    return load_settings()


def _parses(argv: list[str]) -> None:
    """`fraudstream <argv>` names a real command and its options parse (nothing runs)."""
    command: click.Command = typer.main.get_command(app)
    context = click.Context(command, info_name="fraudstream")
    name, args = "fraudstream", list(argv)
    while isinstance(command, click.Group):
        name, *args = args
        found = command.get_command(context, name)
        assert found is not None, f"fraudstream has no command {argv}"
        command = found
        if isinstance(command, click.Group):
            context = click.Context(command, info_name=name, parent=context)
    command.make_context(name, args, parent=context)


def _depends(service: Mapping[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on", {})
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in depends.items()}


def test_compose_config_is_valid_and_runs_the_stack_described(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert "version" not in yaml.safe_load(COMPOSE_FILE.read_text())  # Compose Specification
    config = _config(COMPOSE_FILE, environment=SECRETS)
    services = config["services"]
    assert {"kafka", "postgres", "redis", "prometheus", "grafana", "worker", "dispatcher",
            "dashboard"} <= set(services)  # fmt: skip
    assert "zookeeper" not in json.dumps(config).lower()

    kafka = services["kafka"]
    assert re.fullmatch(r"apache/kafka:(3\.9|4\.\d+)\.\d+", kafka["image"])
    env = _environment(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert set(env["KAFKA_LISTENERS"].split(",")) == {"PLAINTEXT://:9092", "CONTROLLER://:9093"}
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert len(env["CLUSTER_ID"]) == 22  # a base64url UUID, as kafka-storage random-uuid

    prometheus = _mounts(services["prometheus"])
    assert Path(prometheus["/etc/prometheus/prometheus.yml"]) == (
        DEPLOY / "prometheus" / "prometheus.yml"
    )
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]

    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    discovered = [
        (name, sd["port"])
        for job in scrape["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    ]
    assert ("worker", 9108) in discovered, "Prometheus finds every worker replica"
    interval = _provisioned()[PROMETHEUS_UID]["jsonData"]["timeInterval"]
    assert interval == scrape["global"]["scrape_interval"], "Grafana's $__rate_interval"

    grafana = services["grafana"]
    mounts = _mounts(grafana)
    assert Path(mounts["/etc/grafana/provisioning"]) == DEPLOY / "grafana" / "provisioning"
    (provider,) = yaml.safe_load(PROVIDERS_FILE.read_text())["providers"]
    assert Path(mounts[provider["options"]["path"]]) == DASHBOARD_FILE.parent
    placeholders = set(re.findall(r"\$\{(\w+)\}", DATASOURCES_FILE.read_text()))
    assert placeholders <= set(_environment(grafana)), "the data sources read these"
    assert 3000 in _published(grafana)
    assert _environment(grafana)["GRAFANA_DB_USER"] == _environment(services["postgres"])[
        "GRAFANA_DB_USER"
    ]  # fmt: skip
    assert Path(_mounts(services["postgres"])["/docker-entrypoint-initdb.d"]) == (
        READER_SCRIPT.parent
    )

    worker = services["worker"]
    assert Path(worker["build"]["context"]) == ROOT
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert "container_name" not in worker and "ports" not in worker, "must scale"
    assert "9108" in [str(port) for port in worker["expose"]]
    assert "fraudstream worker" in " ".join(worker["entrypoint"])
    settings = _settings(_environment(worker), monkeypatch, tmp_path)
    assert settings.worker.metrics_port == 9108
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.postgres.url is not None and settings.redis.url is not None
    assert settings.models.signing_key is not None
    assert settings.models.signing_key.get_secret_value() == SECRETS["MODEL_SIGNING_KEY"]
    assert "9108" in " ".join(worker["healthcheck"]["test"])
    _parses(["worker", "--name", "worker-1"])

    dispatcher, dashboard = services["dispatcher"], services["dashboard"]
    assert dispatcher["command"] == ["alerts", "dispatch"]
    _parses(dispatcher["command"])
    assert dashboard["command"][0] == "dashboard" and "8501" in dashboard["command"]
    _parses(dashboard["command"])
    assert 8501 in _published(dashboard)
    _parses(services["producer"]["command"])
    for service in (dispatcher, dashboard):
        assert service["image"] == worker["image"]
        _settings(_environment(service), monkeypatch, tmp_path)

    for name in ("worker", "dispatcher", "dashboard", "grafana"):
        depends = _depends(services[name])
        assert depends, name
        for dependency, condition in depends.items():
            assert condition == "service_healthy", f"{name} -> {dependency}"
            assert services[dependency].get("healthcheck", {}).get("test"), dependency
    assert set(_depends(worker)) == {"kafka", "postgres", "redis"}


def test_the_env_example_names_every_variable_the_compose_files_read() -> None:
    example = ENV_EXAMPLE.read_text()
    for path in (COMPOSE_FILE, CONFLUENT_FILE):
        for name in set(re.findall(r"(?<!\$)\$\{(\w+)", path.read_text())):
            assert re.search(rf"^(# )?{name}=", example, re.MULTILINE), f"{path.name}: {name}"


def test_compose_refuses_to_start_without_the_secrets() -> None:
    missing = {key: value for key, value in SECRETS.items() if key != "POSTGRES_PASSWORD"}
    result = _compose(COMPOSE_FILE, environment=missing)
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in deploy/.env" in result.stderr


@pytest.mark.parametrize(
    ("mechanism", "cluster"), [("PLAIN", "Confluent Cloud"), ("SCRAM-SHA-512", "Amazon MSK")]
)
def test_the_managed_kafka_override_points_the_same_workers_at_sasl_ssl(
    mechanism: str, cluster: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    environment = {**SECRETS, **CONFLUENT, "KAFKA_SASL_MECHANISM": mechanism}
    services = _config(COMPOSE_FILE, CONFLUENT_FILE, environment=environment)["services"]
    assert "apache/kafka" not in json.dumps(services), f"{cluster}: no local broker"
    probe = services["kafka"]
    assert probe["image"] == services["worker"]["image"]
    assert "list_topics" in " ".join(probe["healthcheck"]["test"])
    for name in ("worker", "dispatcher", "producer", "kafka"):
        settings = _settings(_environment(services[name]), monkeypatch, tmp_path)
        client = settings.kafka.client_config(str(settings.kafka.bootstrap_servers))
        assert client["bootstrap.servers"] == CONFLUENT["KAFKA_BOOTSTRAP_SERVERS"], name
        assert client["security.protocol"] == "SASL_SSL", name
        assert client["sasl.mechanism"] == mechanism, name
        assert client["sasl.username"] == "API_KEY" and client["sasl.password"] == "API_SECRET"
        assert client["ssl.ca.location"] == "/etc/ssl/certs/ca-certificates.crt", name
    missing = {key: value for key, value in environment.items() if key != "KAFKA_SASL_PASSWORD"}
    result = _compose(COMPOSE_FILE, CONFLUENT_FILE, environment=missing)
    assert result.returncode != 0 and "KAFKA_SASL_PASSWORD" in result.stderr


# --- the Dockerfile, as text ---------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_the_dockerfile_builds_a_slim_non_root_fraudstream_image() -> None:
    instructions = _instructions(DOCKERFILE)
    bases = [args for keyword, args in instructions if keyword == "FROM"]
    assert bases[-1].split()[0] == "python:3.11-slim"
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    install = re.search(r"pip install \S*\[([a-z,]+)\]", runs)
    assert install is not None, "the project is installed with pip, with its extras"
    assert {"kafka", "postgres", "redis"} <= set(install.group(1).split(","))
    users = [(index, args) for index, (keyword, args) in enumerate(instructions)
             if keyword == "USER"]  # fmt: skip
    assert users and users[-1][1] not in ("root", "0"), "runs as a non-root user"
    last_run = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "RUN")
    assert users[-1][0] > last_run
    assert json.loads(dict(instructions)["ENTRYPOINT"]) == ["fraudstream"]
    for keyword, args in instructions:
        if keyword == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignored and {"!pyproject.toml", "!README.md", "!src/"} <= set(ignored)
