"""The engine end to end on the pure core: features → rules → decision with reasons."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from fraudstream.core.decision import DecisionConfig, rule_scores
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.errors import ConfigError
from fraudstream.core.events import Transaction, to_frame
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.core.scoring import ModelOutput

T0 = datetime(2026, 1, 5, 12, tzinfo=UTC)


def _engine(model: object = None) -> Engine:
    spec = parse_ruleset(load_default_ruleset_text())
    return Engine(compile_ruleset(spec, available_columns(FeatureConfig())), model=model)  # type: ignore[arg-type]


def _tx(i: int, minutes: float, amount: float, **fields: object) -> Transaction:
    base: dict[str, object] = {"card_ref": "tok_a", "customer_id": "cust_a", "merchant_id": "m1"}
    base.update(fields)
    return Transaction(
        transaction_id=f"t{i}",
        timestamp=T0 + timedelta(minutes=minutes),
        amount=amount,
        **base,  # type: ignore[arg-type]
    )


def test_classic_large_amount_is_flagged_with_its_reason() -> None:
    decided = _engine().process(to_frame([_tx(1, 0, 25.0), _tx(2, 60, 9500.0)]), FeatureState())
    rows = decided.decisions.to_dicts()
    assert rows[0]["action"] == "approve" and rows[0]["rules_fired"] == []
    assert "large_amount" in rows[1]["rules_fired"]
    assert rows[1]["is_flagged"] and rows[1]["action"] in ("review", "decline")
    assert any(r.startswith("large_amount: amount=9500.0") for r in rows[1]["reasons"])
    assert rows[1]["ruleset_version"] == decided.frame.item(0, "ruleset_version")


def test_velocity_fires_on_the_sixth_transaction_in_ten_minutes_not_before() -> None:
    batch = to_frame([_tx(i, i, 30.0, merchant_id=f"m{i}") for i in range(7)])
    decided = _engine().process(batch, FeatureState())
    fired = decided.frame.get_column("rules_fired").to_list()
    counts = decided.frame.get_column("tx_count_by_card_10m").to_list()
    assert counts == [1, 2, 3, 4, 5, 6, 7]
    assert ["card_velocity_10m" in f for f in fired] == [False] * 5 + [True] * 2


def test_impossible_travel_new_york_to_london_in_an_hour() -> None:
    batch = to_frame(
        [
            _tx(1, 0, 40.0, latitude=40.71, longitude=-74.0, channel="card_present"),
            _tx(2, 60, 40.0, latitude=51.51, longitude=-0.13, channel="card_present"),
        ]
    )
    decided = _engine().process(batch, FeatureState())
    speed = decided.frame.item(1, "speed_from_prev_kmh_by_card")
    assert speed == pytest.approx(5570, rel=0.01)
    assert "impossible_travel" in decided.frame.get_column("rules_fired").to_list()[1]


def test_missing_fields_give_null_features_and_rules_do_not_fire() -> None:
    batch = to_frame([_tx(1, 0, 9.0, card_ref=None, merchant_id=None)])
    frame = _engine().process(batch, FeatureState()).frame
    assert frame.item(0, "tx_count_by_card_10m") is None
    assert frame.item(0, "is_new_country_for_card") is None
    assert frame.item(0, "tx_count_by_customer_10m") == 1
    assert frame.get_column("rules_fired").to_list() == [[]]


def test_out_of_order_batch_is_processed_in_event_time_and_replays_change_nothing() -> None:
    engine, state = _engine(), FeatureState()
    events = [_tx(i, i, 10.0 + i) for i in range(4)]
    first = engine.process(to_frame(events[::-1]), state).frame
    assert first.get_column("transaction_id").to_list() == ["t0", "t1", "t2", "t3"]
    before = state.stats()
    again = engine.process(to_frame(events), state).frame
    assert state.stats().retained_events == before.retained_events
    assert state.stats().replayed_events == 4
    for feature in ("tx_count_by_card_10m", "amount_sum_by_card_1h", "seconds_since_prev_by_card"):
        assert again.get_column(feature).to_list() == first.get_column(feature).to_list()


def test_too_late_event_is_counted_and_explained() -> None:
    engine, state = _engine(), FeatureState()
    engine.process(to_frame([_tx(1, 120, 10.0)]), state)
    late = engine.process(to_frame([_tx(2, 0, 10.0)]), state).frame
    assert late.item(0, "is_late") is True
    assert late.item(0, "tx_count_by_card_10m") is None
    assert any("late_event" in r for r in late.get_column("reasons").to_list()[0])
    assert state.stats().late_events == 1


class _ConstantModel:
    version = "const-1"
    feature_names = ("amount", "amount_zscore_by_card")

    def score(self, inputs: np.ndarray, explain: bool = True) -> ModelOutput:
        scores = np.where(inputs[:, 0] > 100, 0.95, 0.1)
        return ModelOutput(scores, {i: ["amount"] for i in np.flatnonzero(scores > 0.5)})


def test_model_score_raises_the_decision_and_adds_its_drivers() -> None:
    decided = _engine(_ConstantModel()).process(
        to_frame([_tx(1, 0, 20.0), _tx(2, 1, 150.0)]), FeatureState()
    )
    rows = decided.decisions.to_dicts()
    assert rows[0]["model_score"] == pytest.approx(0.1) and rows[0]["action"] == "approve"
    assert rows[1]["action"] == "decline" and rows[1]["model_version"] == "const-1"
    assert "model: amount" in rows[1]["reasons"]


def test_rule_scores_combine_as_noisy_or_and_thresholds_are_validated() -> None:
    hits = np.array([[True, True], [True, False], [False, False]])
    scores = rule_scores(hits, np.array([60.0, 60.0]))
    assert scores.tolist() == pytest.approx([0.84, 0.6, 0.0])
    with pytest.raises(ConfigError, match="review_at"):
        DecisionConfig(review_at=0.9, decline_at=0.5)


_MIXED_RULES = """
version: "mixed-1"
rules:
  - id: risky_country
    description: IN lists are outside the compiled subset, so Polars evaluates this rule.
    expression: country IN ('KP', 'IR') AND amount > 100
    score: 50
    action: review
  - id: online_large
    description: Evaluated by the compiled bytecode kernel.
    expression: NOT card_present AND amount > 1000
    score: 30
    action: review
"""


@pytest.mark.parametrize("rows", [1, 3, 40])
def test_rules_in_numpy_and_polars_mix_and_arrays_match_the_frame(rows: int) -> None:
    ruleset = compile_ruleset(parse_ruleset(_MIXED_RULES), available_columns(FeatureConfig()))
    assert ruleset.polars_rule_ids == ("risky_country",)
    engine = Engine(ruleset)
    events = [
        _tx(
            i,
            i,
            [50.0, 500.0, 5000.0][i % 3],
            card_ref=f"tok_{i}",
            country=["KP", "FR", None][i % 3],
            channel=["online", "card_present", None][(i // 3) % 3],
        )
        for i in range(rows)
    ]
    decided = engine.process(to_frame(events), FeatureState())
    frame = decided.frame
    fired = frame.get_column("rules_fired").to_list()
    reasons = frame.get_column("reasons").to_list()
    for i, event in enumerate(events):
        risky = event.country in ("KP", "IR") and event.amount > 100
        online_large = event.channel == "online" and event.amount > 1000
        expected = [
            r for r, hit in (("risky_country", risky), ("online_large", online_large)) if hit
        ]
        assert fired[i] == expected
        assert decided.rules_fired.row(i) == expected
        assert decided.reasons.row(i) == reasons[i]
    assert decided.action.tolist() == frame.get_column("action").to_list()
    assert decided.is_flagged.tolist() == frame.get_column("is_flagged").to_list()
    assert np.allclose(decided.score, frame.get_column("score").to_numpy(), atol=1e-6)
    assert decided.hits.columns == ["risky_country", "online_large"]
    assert len(decided) == rows


def test_warm_up_loads_the_kernels_before_the_first_batch() -> None:
    """In a fresh interpreter no kernel is loaded; after `warm_up` the feature walk, the
    identifier hashing and the rule kernel all are, so the first real batch loads nothing."""
    script = """
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.features import FeatureConfig
from fraudstream.core.features.walk import walk_batch
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.core.rules.bytecode import run_programs
from fraudstream.core.text import _hash_all
kernels = (walk_batch, run_programs, _hash_all)
config = FeatureConfig()
ruleset = compile_ruleset(parse_ruleset(load_default_ruleset_text()), available_columns(config))
engine = Engine(ruleset)
print([len(k.signatures) for k in kernels])
engine.warm_up(config)
print([len(k.signatures) for k in kernels])
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    before, after = result.stdout.split("\n")[:2]
    assert before == "[0, 0, 0]"
    assert after == "[1, 1, 1]"
