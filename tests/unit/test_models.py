"""Models: training on the stream's features, safe artifacts, and models inside the engine."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from tests.unit.test_engine import _engine

from fraudstream.core.errors import ConfigError
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.ml.artifact import ModelError, dump_artifact, load_artifact
from fraudstream.ml.backtest import History, backtest
from fraudstream.ml.evaluate import Comparison
from fraudstream.ml.inputs import input_matrix, model_inputs
from fraudstream.ml.train import TimeSplit, fraction_split

KEY = b"test-signing-key"
KINDS = ("isolation_forest", "gradient_boosting")


@pytest.fixture(scope="module")
def history() -> History:
    stream = generate(GeneratorConfig(seed=3, n_transactions=30_000, days=40))
    return History(stream.transactions, stream.labels)


@pytest.fixture(scope="module")
def comparison(history: History) -> Comparison:
    split = fraction_split(history.transactions.get_column("timestamp"), 0.6, timedelta(days=5))
    report = backtest(history, _engine(), FeatureConfig(), split=split, kinds=KINDS)
    assert report.comparison is not None
    return report.comparison


@pytest.fixture(scope="module")
def scored(history: History) -> pl.DataFrame:
    """The history's model inputs as the stream computes them (rules-only replay)."""
    from fraudstream.runners.replay import replay

    frame, _ = replay(history.transactions, _engine(), FeatureState())
    return frame


def test_models_are_trained_before_the_gap_and_judged_after_it(
    history: History, comparison: Comparison
) -> None:
    timestamps = history.transactions.get_column("timestamp")
    split = comparison.split
    assert comparison.train_rows == int((timestamps < split.train_end).sum())
    assert comparison.test_rows == int((timestamps >= split.train_end + timedelta(days=5)).sum())
    in_gap = timestamps.len() - comparison.train_rows - comparison.test_rows
    assert in_gap > 0, "the label-delay gap's rows belong to neither side"
    rows = {row["variant"]: row for row in comparison.table.iter_rows(named=True)}
    assert set(rows) == {"rules", *KINDS, *(f"rules+{kind}" for kind in KINDS)}
    supervised = rows["gradient_boosting"]["average_precision"]
    assert supervised > rows["rules"]["average_precision"], "labels must teach the model more"
    assert rows["isolation_forest"]["roc_auc"] > 0.6, "anomalies must rank above chance"


def test_training_is_deterministic_for_a_seed(history: History, comparison: Comparison) -> None:
    again = backtest(
        history, _engine(), FeatureConfig(), split=comparison.split, kinds=KINDS
    ).comparison
    assert again is not None
    assert again.table.equals(comparison.table)


def test_a_split_with_an_empty_side_is_refused(history: History) -> None:
    end = history.transactions.get_column("timestamp").max()
    with pytest.raises(ConfigError, match="one side holds no transactions"):
        TimeSplit(end, timedelta(days=1)).masks(history.transactions.get_column("timestamp"))


@pytest.mark.parametrize("kind", KINDS)
def test_a_saved_model_loads_and_scores_exactly_as_trained(
    kind: str, comparison: Comparison, scored: pl.DataFrame
) -> None:
    scorer = comparison.models[kind]  # type: ignore[index]
    inputs = input_matrix(scored.head(2000), scorer.feature_names)
    loaded = load_artifact(dump_artifact(scorer, {"kind": kind}, KEY), KEY).scorer
    assert loaded.version == scorer.version
    assert np.array_equal(loaded.score(inputs).scores, scorer.score(inputs).scores)


def test_lightgbm_reasons_add_up_to_its_raw_score(
    comparison: Comparison, scored: pl.DataFrame
) -> None:
    """Path attribution credits every split on a row's paths: the credits plus the trees'
    root values are the raw score, and the three reasons shown are mostly exact SHAP's three
    (measured: 90 % of them on this history; the order differs more often)."""
    scorer = comparison.models["gradient_boosting"]
    inputs = input_matrix(scored.head(3000), scorer.feature_names)
    credits = scorer.contributions(inputs)  # type: ignore[union-attr]
    booster = scorer.booster  # type: ignore[union-attr]
    roots = sum(
        float(
            tree["tree_structure"].get("internal_value", tree["tree_structure"].get("leaf_value"))
        )
        for tree in booster.dump_model()["tree_info"]
    )
    raw = booster.predict(inputs, raw_score=True)
    assert np.allclose(credits.sum(axis=1) + roots, raw, atol=1e-6)
    shap = booster.predict(inputs, pred_contrib=True)[:, :-1]
    risky = np.flatnonzero(scorer.score(inputs).scores >= 0.5)
    assert risky.size >= 10
    top = np.argsort(-credits[risky], axis=1)[:, :3]
    shap_top = np.argsort(-shap[risky], axis=1)[:, :3]
    shared = np.mean([len(set(a) & set(b)) / 3 for a, b in zip(top, shap_top, strict=True)])
    assert shared >= 0.75, shared


def _rezip(data: bytes, change: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members.update(change)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_changed_corrupt_or_foreign_model_files_are_refused(comparison: Comparison) -> None:
    scorer = comparison.models["gradient_boosting"]
    good = dump_artifact(scorer, {"kind": "gradient_boosting"}, KEY)
    meta = json.loads(zipfile.ZipFile(io.BytesIO(good)).read("metadata.json"))
    meta["scorer"]["positive_weight"] = 1.0  # a quiet edit that would change every score
    edited = _rezip(good, {"metadata.json": json.dumps(meta).encode()})
    with pytest.raises(ModelError, match="signature does not match"):
        load_artifact(edited, KEY)
    with pytest.raises(ModelError, match="signature does not match"):
        load_artifact(good, b"another deployment's key")
    with pytest.raises(ModelError, match="not a model artifact"):
        load_artifact(good[: len(good) // 2], KEY)
    with pytest.raises(ModelError, match="expected members"):
        load_artifact(_rezip(good, {"extra.py": b"print('hi')"}), KEY)


def test_a_signed_payload_naming_other_types_is_still_not_loaded(
    comparison: Comparison,
) -> None:
    """The signature says who wrote the file, not that it is safe: a payload of any type
    outside the short list is refused before it is read."""
    forest = comparison.models["isolation_forest"]
    good = dump_artifact(forest, {"kind": "isolation_forest"}, KEY)
    foreign = sio.dumps(LogisticRegression())
    meta = json.loads(zipfile.ZipFile(io.BytesIO(good)).read("metadata.json"))
    meta["payload_sha256"] = hashlib.sha256(foreign).hexdigest()
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    from fraudstream.ml.artifact import _sign

    forged = _rezip(
        good,
        {
            "metadata.json": meta_bytes,
            "payload": foreign,
            "signature": _sign(KEY, meta_bytes, foreign),
        },
    )
    with pytest.raises(ModelError, match="outside the allowed list"):
        load_artifact(forged, KEY)


def test_the_model_moves_decisions_explains_them_and_the_shadow_does_not(
    history: History, comparison: Comparison
) -> None:
    live, shadow = comparison.models["gradient_boosting"], comparison.models["isolation_forest"]
    engine = _engine()
    engine.model, engine.shadow = live, shadow
    decided = engine.process(history.transactions.head(5000), FeatureState()).frame
    assert (decided.get_column("model_version") == live.version).all()
    assert (decided.get_column("shadow_model_version") == shadow.version).all()
    assert decided.get_column("shadow_score").null_count() == 0
    by_model = decided.filter(
        (pl.col("model_score") >= 0.5)
        & (pl.col("rule_score") < 0.5)
        & (pl.col("action") != "approve")
    )
    assert by_model.height > 0, "some transactions flagged by the model alone"
    reasons = by_model.get_column("reasons").to_list()
    assert all(any(r.startswith("model: ") and "=" in r for r in rs) for rs in reasons)
    rules_only = _engine()
    rules_only.shadow = shadow
    alone = rules_only.process(history.transactions.head(5000), FeatureState()).frame
    plain = _engine().process(history.transactions.head(5000), FeatureState()).frame
    assert alone.get_column("action").equals(plain.get_column("action")), "shadow moved nothing"


class _Wants:
    version = "wants-1"

    def __init__(self, *names: str) -> None:
        self.feature_names = names

    def score(self, inputs: np.ndarray, explain: bool = True) -> object:
        raise AssertionError("never scored")


def test_a_model_asking_for_inputs_the_engine_lacks_is_refused(history: History) -> None:
    engine = _engine()
    with pytest.raises(ConfigError, match="text columns"):
        engine.model = _Wants("amount", "country")  # type: ignore[assignment]
    engine.model = _Wants("amount", "no_such_feature")  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="no_such_feature"):
        engine.process(history.transactions.head(10), FeatureState())
    assert "tx_count_by_card_1h" in model_inputs(FeatureConfig())
