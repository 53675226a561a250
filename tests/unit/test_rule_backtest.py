"""Rule backtests: a candidate's hits, precision and recall, warm-up, replacement, action changes.

Every figure is checked against a count made here, independently of the module: Polars filters
over the generated history for the candidate's condition, and a replay of our own for actions.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from datetime import datetime, timedelta

import polars as pl
import pytest

from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.errors import RuleError
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.lists import ListEntry, ListSnapshot
from fraudstream.core.rules import (
    ACTIONS,
    Rule,
    RulesetSpec,
    compile_ruleset,
    load_default_ruleset,
)
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.ml.rule_backtest import (
    RuleBacktest,
    backtest_rule,
    run_rule_backtest,
    with_candidate,
)
from fraudstream.runners.replay import replay

WARM_UP_DAYS = 4


@dataclasses.dataclass(frozen=True)
class History:
    transactions: pl.DataFrame
    labels: pl.DataFrame  # labelled rows only (every third row has no label)
    measured_from: datetime


@pytest.fixture(scope="module")
def history() -> History:
    stream = generate(GeneratorConfig(seed=5, n_transactions=3000, days=10, n_customers=300))
    truth = stream.labels.select("transaction_id", "is_fraud")
    labelled = truth.with_row_index("i").filter(pl.col("i") % 3 != 0).drop("i")
    ghost = pl.DataFrame({"transaction_id": ["not-in-history"], "is_fraud": [True]})
    start = stream.transactions.get_column("timestamp").min()
    assert isinstance(start, datetime)
    return History(
        stream.transactions,
        pl.concat([labelled, ghost]),
        start + timedelta(days=WARM_UP_DAYS),
    )


def _rule(rule_id: str, expression: str, action: str = "review", **fields: object) -> Rule:
    return Rule(
        id=rule_id,
        description="a draft",
        expression=expression,
        score=20,
        action=action,  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


def _backtest(
    history: History, candidate: Rule, live: RulesetSpec | None = None, **options: object
) -> RuleBacktest:
    return backtest_rule(
        history.transactions,
        history.labels,
        live or load_default_ruleset(),
        candidate,
        measured_from=history.measured_from,
        **options,  # type: ignore[arg-type]
    )


def _measured_with_labels(history: History) -> pl.DataFrame:
    """The measured rows, with `is_fraud` (null where unlabelled), computed here."""
    return history.transactions.filter(pl.col("timestamp") >= history.measured_from).join(
        history.labels, on="transaction_id", how="left"
    )


def test_hits_precision_and_recall_match_an_independent_count(history: History) -> None:
    result = _backtest(history, _rule("big_spend", "amount > 500"))

    measured = _measured_with_labels(history)
    hits = measured.filter(pl.col("amount") > 500)
    fraud_hits = hits.filter(pl.col("is_fraud")).height
    legitimate_hits = hits.filter(~pl.col("is_fraud")).height
    unlabelled_hits = hits.filter(pl.col("is_fraud").is_null()).height
    labelled_fraud = measured.filter(pl.col("is_fraud")).height
    # the data exercise every branch, or the comparisons below would prove little
    assert min(fraud_hits, legitimate_hits, unlabelled_hits) > 0

    assert result.rule_id == "big_spend"
    assert result.transactions == measured.height
    assert result.hits == hits.height
    assert result.hit_rate == pytest.approx(hits.height / measured.height)
    assert result.labelled_fraud == labelled_fraud
    assert result.labelled_legitimate == measured.filter(~pl.col("is_fraud")).height
    assert (result.fraud_hits, result.legitimate_hits) == (fraud_hits, legitimate_hits)
    assert result.unlabelled_hits == unlabelled_hits
    assert result.precision == pytest.approx(fraud_hits / (fraud_hits + legitimate_hits))
    assert result.recall == pytest.approx(fraud_hits / labelled_fraud)
    assert result.baseline_ruleset_version == load_default_ruleset().version
    assert result.window_start == history.measured_from
    assert result.truncated is False


def test_warm_up_rows_are_scored_but_not_measured(history: History) -> None:
    result = _backtest(history, _rule("big_spend", "amount > 500"))
    before = history.transactions.filter(pl.col("timestamp") < history.measured_from)
    everywhere = history.transactions.filter(pl.col("amount") > 500).height
    assert result.warm_up_transactions == before.height > 0
    assert result.transactions + result.warm_up_transactions == history.transactions.height
    assert result.hits < everywhere  # the warm-up's big amounts are not counted


def test_warm_up_builds_the_feature_state_the_measured_rows_see(history: History) -> None:
    """A 30-day velocity rule fires more when the days before the window are scored first."""
    candidate = _rule("regular_customer", "tx_count_by_customer_30d > 12")
    with_warm_up = _backtest(history, candidate)
    measured_only = History(
        history.transactions.filter(pl.col("timestamp") >= history.measured_from),
        history.labels,
        history.measured_from,
    )
    without = _backtest(measured_only, candidate)
    assert without.warm_up_transactions == 0
    assert with_warm_up.transactions == without.transactions
    assert with_warm_up.hits > without.hits > 0


def test_a_candidate_replaces_the_live_rule_with_its_id(history: History) -> None:
    """With big amounts in the history, the shipped `large_amount` (> 9000) fires; the same id
    with a stricter threshold fires less, and only takes flags away."""
    boosted = History(
        history.transactions.with_columns(
            amount=pl.when(pl.col("amount") > 300)
            .then(pl.col("amount") + 9000)
            .otherwise(pl.col("amount"))
        ),
        history.labels,
        history.measured_from,
    )
    live = load_default_ruleset()
    shipped = _backtest(boosted, live.rule("large_amount"), live)
    tighter = dataclasses.replace(live.rule("large_amount"), expression="amount > 9500")
    stricter = _backtest(boosted, tighter, live)

    measured = _measured_with_labels(boosted)
    assert shipped.hits == measured.filter(pl.col("amount") > 9000).height
    assert stricter.hits == measured.filter(pl.col("amount") > 9500).height
    assert 0 < stricter.hits < shipped.hits
    assert shipped.action_changes == {}  # the candidate is the live rule: nothing changes
    assert stricter.action_changes  # flags the shipped rule raised are gone, and only that:
    for change in stricter.action_changes:
        before, after = change.split("->")
        assert ACTIONS.index(after) < ACTIONS.index(before), change
    assert stricter.newly_flagged_fraud == 0


def test_action_changes_list_only_the_rows_whose_action_differs(history: History) -> None:
    candidate = _rule("big_spend_decline", "amount > 300", action="decline")
    result = _backtest(history, candidate)

    live = load_default_ruleset()
    both = RulesetSpec("test", (*live.rules, candidate))
    before = _actions(history.transactions, live).rename({"action": "before"})
    after = _actions(history.transactions, both).rename({"action": "after"})
    compared = (
        before.join(after, on="transaction_id")
        .join(history.labels, on="transaction_id", how="left")
        .join(history.transactions.select("transaction_id", "timestamp"), on="transaction_id")
        .filter(pl.col("timestamp") >= history.measured_from)
    )
    changed = compared.filter(pl.col("before") != pl.col("after"))
    expected = Counter(f"{b}->{a}" for b, a in changed.select("before", "after").iter_rows())
    assert len(expected) >= 2  # approve->decline and review->decline at least
    assert result.action_changes == dict(expected)
    assert sum(result.action_changes.values()) == changed.height
    assert all(key.split("->")[0] != key.split("->")[1] for key in result.action_changes)
    newly = changed.filter(pl.col("is_fraud") & (pl.col("before") == "approve"))
    assert result.newly_flagged_fraud == newly.height > 0


def _actions(transactions: pl.DataFrame, spec: RulesetSpec) -> pl.DataFrame:
    config = FeatureConfig()
    engine = Engine(compile_ruleset(spec, available_columns(config)))
    scored, _ = replay(transactions, engine, FeatureState(config))
    return scored.select("transaction_id", "action")


def test_a_disabled_shadow_candidate_is_backtested_as_deciding(history: History) -> None:
    draft = _rule("big_spend", "amount > 500", enabled=False, shadow=True)
    live = RulesetSpec("with-shadow", (*load_default_ruleset().rules, draft))
    result = _backtest(history, draft, live)
    measured = _measured_with_labels(history)
    assert result.hits == measured.filter(pl.col("amount") > 500).height > 0
    assert result.action_changes  # deciding now, so some approvals become reviews


def test_deny_lists_reach_both_runs(history: History) -> None:
    measured = _measured_with_labels(history)
    card = measured.get_column("card_ref").mode().first()
    on_card = measured.filter(pl.col("card_ref") == card).height
    lists = ListSnapshot([ListEntry("deny", "card", str(card))])
    result = _backtest(history, _rule("denied_card", "card_on_deny_list"), lists=lists)
    assert result.hits == on_card > 0
    # the shipped deny_listed rule already declines them in the baseline: nothing changes
    assert result.action_changes == {}
    without_lists = _backtest(history, _rule("denied_card", "card_on_deny_list"))
    assert without_lists.hits == 0


def test_without_labels_precision_and_recall_are_unknown(history: History) -> None:
    no_labels = History(history.transactions, history.labels.clear(), history.measured_from)
    result = _backtest(no_labels, _rule("big_spend", "amount > 500"))
    assert result.hits > 0
    assert result.unlabelled_hits == result.hits
    assert (result.labelled_fraud, result.labelled_legitimate) == (0, 0)
    assert (result.precision, result.recall) == (None, None)


def test_a_candidate_that_does_not_compile_names_the_rule(history: History) -> None:
    with pytest.raises(RuleError, match="typo_rule") as raised:
        _backtest(history, _rule("typo_rule", "amout > 500"))
    assert raised.value.rule_id == "typo_rule"


def test_the_result_is_json_ready(history: History) -> None:
    result = _backtest(history, _rule("big_spend", "amount > 500"))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["window_start"] == history.measured_from.isoformat()
    assert datetime.fromisoformat(data["window_end"]) == result.window_end
    assert data["hits"] == result.hits
    assert data["action_changes"] == result.action_changes
    assert set(data) == {field.name for field in dataclasses.fields(RuleBacktest)}


def test_with_candidate_keeps_the_rule_order() -> None:
    live = load_default_ruleset()
    ids = [rule.id for rule in live.rules]
    replaced = with_candidate(live, _rule("card_testing", "amount < 1", enabled=False))
    assert [rule.id for rule in replaced.rules] == ids
    assert replaced.rule("card_testing").expression == "amount < 1"
    assert replaced.rule("card_testing").enabled
    added = with_candidate(live, _rule("brand_new", "amount < 1"))
    assert [rule.id for rule in added.rules] == [*ids, "brand_new"]


def test_times_without_a_zone_and_empty_windows_are_refused(history: History) -> None:
    naive = history.measured_from.replace(tzinfo=None)
    with pytest.raises(ValueError, match="timezone"):
        backtest_rule(
            history.transactions,
            history.labels,
            load_default_ruleset(),
            _rule("big_spend", "amount > 500"),
            measured_from=naive,
        )
    with pytest.raises(ValueError, match="days"):
        run_rule_backtest(
            "postgresql://nowhere.invalid/none",  # refused before any connection
            load_default_ruleset(),
            _rule("big_spend", "amount > 500"),
            days=0,
            now=history.measured_from,
        )
