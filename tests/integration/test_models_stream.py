"""Models in the stream: trained on generated history, registered, activated, hot-swapped.

One worker process scores a stream while the registry changes under it: a live gradient-boosted
model and a shadow Isolation Forest, then a tampered file that must be refused while the live
model keeps serving, then a new live model taken without a restart.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from tests.integration.pipeline_helpers import TestPipeline, fresh_pipeline, wait_for
from tests.unit.test_engine import _engine
from typer.testing import CliRunner

from fraudstream.adapters.kafka import TransactionProducer
from fraudstream.adapters.labels import store_labels
from fraudstream.adapters.model_registry import ModelRegistry
from fraudstream.cli import app
from fraudstream.core.features import FeatureConfig
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.ml.artifact import Scorer, dump_artifact
from fraudstream.ml.backtest import History, backtest
from fraudstream.ml.train import fraction_split
from fraudstream.runners.local import worker_environment
from fraudstream.runners.serve import model_signing_key
from fraudstream.stack import Endpoints

KINDS = ("isolation_forest", "gradient_boosting")
POLL_S = 0.3


@pytest.fixture(scope="module")
def trained() -> dict[str, Scorer]:
    stream = generate(GeneratorConfig(seed=21, n_transactions=20_000, days=30))
    history = History(stream.transactions, stream.labels)
    split = fraction_split(stream.transactions.get_column("timestamp"), 0.7, timedelta(days=3))
    report = backtest(history, _engine(), FeatureConfig(), split=split, kinds=KINDS)
    assert report.comparison is not None
    return dict(report.comparison.models)


def _register(registry: ModelRegistry, data: bytes, version: str, kind: str) -> None:
    registry.register(version, kind, data, hashlib.sha256(data).hexdigest(), {"kind": kind})


def _tampered(data: bytes) -> tuple[bytes, str]:
    """The same file with two numbers changed in its metadata and the signature left as is."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    meta = json.loads(members["metadata.json"])
    meta["version"] += "-edited"
    meta["scorer"]["positive_weight"] = 0.001  # would decline nearly everything
    members["metadata.json"] = json.dumps(meta).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue(), meta["version"]


def _rows(pipeline: TestPipeline, ids: list[str]) -> pl.DataFrame:
    rows = pipeline.query(
        "SELECT transaction_id, score, rule_score, model_score, action, reasons, model_version,"
        " shadow_score, shadow_model_version FROM transactions"
        f" WHERE transaction_id IN ({', '.join(repr(i) for i in ids)})"
    )
    names = ["transaction_id", "score", "rule_score", "model_score", "action", "reasons",
             "model_version", "shadow_score", "shadow_model_version"]  # fmt: skip
    return pl.DataFrame(rows, schema=names, orient="row")


def test_models_score_the_stream_swap_live_and_refuse_a_tampered_file(
    endpoints: Endpoints, tmp_path: Path, trained: dict[str, Scorer]
) -> None:
    stream = generate(GeneratorConfig(seed=22, n_transactions=3000, days=3)).transactions
    parts = [stream.head(1500), stream.slice(1500, 750), stream.slice(2250)]
    with fresh_pipeline(
        endpoints, tmp_path, models={"poll_interval_s": POLL_S}, state="memory"
    ) as pipeline:
        key = model_signing_key(pipeline.settings)
        registry = ModelRegistry(pipeline.postgres_url)
        files = {kind: dump_artifact(trained[kind], {"kind": kind}, key) for kind in KINDS}
        gb, forest = trained["gradient_boosting"], trained["isolation_forest"]
        _register(registry, files["gradient_boosting"], gb.version, "gradient_boosting")
        _register(registry, files["isolation_forest"], forest.version, "isolation_forest")
        registry.activate(gb.version, "live")
        registry.activate(forest.version, "shadow")
        log = pipeline.log_dir / "worker-0.log"
        producer = TransactionProducer(endpoints.kafka, pipeline.settings.kafka.transactions_topic)
        workers = pipeline.workers(1)
        workers.start()
        try:
            assert workers.wait_assigned(60)
            stored = 0

            def publish(part: pl.DataFrame) -> pl.DataFrame:
                nonlocal stored
                producer.publish(part, rate=3000)
                stored += part.height
                wait_for(lambda: pipeline.count("transactions") >= stored, 120, "rows stored")
                return _rows(pipeline, part.get_column("transaction_id").to_list())

            first = publish(parts[0])
            assert (first.get_column("model_version") == gb.version).all()
            assert (first.get_column("shadow_model_version") == forest.version).all()
            assert first.get_column("shadow_score").null_count() == 0
            moved = first.filter(
                (pl.col("rule_score") < 0.5) & (pl.col("model_score") >= 0.5)
            ).filter(pl.col("action") != "approve")
            assert moved.height > 0, "the model alone flags some transactions"
            assert all(any(r.startswith("model: ") for r in rs) for rs in moved["reasons"])

            bad, bad_version = _tampered(files["gradient_boosting"])
            _register(registry, bad, bad_version, "gradient_boosting")
            registry.activate(bad_version, "live")
            time.sleep(POLL_S * 2)  # the worker asks before its next batch, at most every POLL_S
            second = publish(parts[1])
            assert f"live model {bad_version} refused" in log.read_text()
            assert "signature does not match" in log.read_text()
            assert (second.get_column("model_version") == gb.version).all(), "old model serves"

            registry.activate(forest.version, "live")
            time.sleep(POLL_S * 2)
            third = publish(parts[2])
            assert f"-> {forest.version}" in log.read_text()
            assert (third.get_column("model_version") == forest.version).all()
        finally:
            codes = workers.stop()
        assert codes == [0]
        _cli_trains_from_the_database_and_refuses_a_tampered_file(pipeline, bad, tmp_path)


def _cli_trains_from_the_database_and_refuses_a_tampered_file(
    pipeline: TestPipeline, tampered: bytes, tmp_path: Path
) -> None:
    ids = pipeline.query("SELECT transaction_id FROM transactions ORDER BY event_time")
    labels = pl.DataFrame({"transaction_id": [i for (i,) in ids]}).with_columns(
        is_fraud=pl.lit(False)
    )
    assert store_labels(pipeline.postgres_url, labels, "test") == len(ids)
    env = worker_environment(pipeline.settings)
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["train", "--model", "isolation_forest", "--gap-days", "0.1", "--out",
         str(tmp_path / "models"), "--activate", "shadow"],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    shadow = ModelRegistry(pipeline.postgres_url).serving()["shadow"]
    assert shadow.version.startswith("if-")
    assert (tmp_path / "models" / f"{shadow.version}.fsmodel").is_file()
    (tmp_path / "bad.fsmodel").write_bytes(tampered)
    refused = runner.invoke(app, ["models", "register", str(tmp_path / "bad.fsmodel")], env=env)
    assert refused.exit_code == 2
    assert "signature does not match" in refused.output
