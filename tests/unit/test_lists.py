"""Allow and deny lists as rule features, on the pure core."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.errors import ConfigError
from fraudstream.core.events import Transaction, to_frame
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.lists import LIST_FEATURES, ListEntry, ListSnapshot, list_value
from fraudstream.core.rules import compile_ruleset, parse_ruleset

T0 = datetime(2026, 3, 1, 9, tzinfo=UTC)

RULES = """
version: lists-test
rules:
  - id: deny_listed
    description: The card, the IP or the device is on the deny list.
    expression: card_on_deny_list OR ip_on_deny_list OR device_on_deny_list
    score: 100
    action: decline
  - id: big_unless_trusted_merchant
    description: A large payment, unless the merchant is on the allow list.
    expression: amount > 1000 AND NOT merchant_on_allow_list
    score: 40
    action: review
"""


def _engine(lists: ListSnapshot) -> Engine:
    ruleset = compile_ruleset(parse_ruleset(RULES), available_columns(FeatureConfig()))
    return Engine(ruleset, lists=lists)


def _tx(i: int, minutes: float, amount: float = 20.0, **fields: object) -> Transaction:
    base: dict[str, object] = {"card_ref": f"card{i}", "merchant_id": "m_plain"}
    base.update(fields)
    return Transaction(
        transaction_id=f"t{i}",
        timestamp=T0 + timedelta(minutes=minutes),
        amount=amount,
        **base,  # type: ignore[arg-type]
    )


def _decide(engine: Engine, transactions: list[Transaction]) -> dict[str, tuple[str, list[str]]]:
    decided = engine.process(to_frame(transactions), FeatureState())
    return {
        tid: (str(action), reasons)
        for tid, action, reasons in zip(
            decided.transaction_ids, decided.action, decided.reasons.rows(), strict=True
        )
    }


def test_list_features_are_rule_columns_of_boolean_type() -> None:
    columns = available_columns(FeatureConfig())
    assert {"card_on_deny_list", "merchant_on_allow_list", "ip_on_deny_list"} <= set(columns)
    assert all(str(columns[name]) == "Boolean" for name in LIST_FEATURES)
    assert len(LIST_FEATURES) == 10


def test_deny_listed_card_is_declined_with_the_feature_in_its_reason() -> None:
    lists = ListSnapshot([ListEntry("deny", "card", "card2")], revision=3)
    decided = _decide(_engine(lists), [_tx(1, 0), _tx(2, 1)])
    assert decided["t1"][0] == "approve"
    action, reasons = decided["t2"]
    assert action == "decline"
    assert reasons == [
        "deny_listed: card_on_deny_list=true, ip_on_deny_list=false, device_on_deny_list=false"
    ]


def test_expiry_is_judged_at_the_event_time() -> None:
    expires = T0 + timedelta(minutes=10)
    lists = ListSnapshot([ListEntry.expiring("deny", "device", "dev9", expires)])
    decided = _decide(_engine(lists), [_tx(1, 9, device_id="dev9"), _tx(2, 10, device_id="dev9")])
    assert decided["t1"][0] == "decline"
    assert decided["t2"][0] == "approve"  # expired exactly at its event time


def test_allow_list_lets_a_rule_spare_a_trusted_merchant() -> None:
    lists = ListSnapshot([ListEntry("allow", "merchant", "m_trusted")])
    decided = _decide(
        _engine(lists),
        [
            _tx(1, 0, 5000, merchant_id="m_trusted"),
            _tx(2, 1, 5000),
            _tx(3, 2, 5000, merchant_id=None),
        ],
    )
    assert decided["t1"][0] == "approve"
    assert decided["t2"][0] == "review"
    assert decided["t3"][0] == "review"  # no merchant: on no list


def test_ip_entries_match_networks_and_any_spelling_of_an_address() -> None:
    lists = ListSnapshot(
        [
            ListEntry("deny", "ip", list_value("ip", "203.0.113.0/24")),
            ListEntry("deny", "ip", list_value("ip", "2001:DB8:0:0::7")),
            ListEntry("deny", "ip", list_value("ip", "2001:db8:1::/48")),
        ]
    )
    ips = ["203.0.113.77", "203.0.114.1", "2001:db8::7", "2001:0db8:0000::0007", "2001:db8:1:ff::1",
           "2001:db8:2::1", "10.0.0.1"]  # fmt: skip
    transactions = [_tx(i, i, ip=ip) for i, ip in enumerate(ips)]
    decided = _decide(_engine(lists), transactions)
    declined = [ip for i, ip in enumerate(ips) if decided[f"t{i}"][0] == "decline"]
    assert declined == ["203.0.113.77", "2001:db8::7", "2001:0db8:0000::0007", "2001:db8:1:ff::1"]


def test_the_longest_expiry_of_overlapping_entries_wins() -> None:
    lists = ListSnapshot(
        [
            ListEntry.expiring("deny", "ip", "198.51.100.0/24", T0 + timedelta(minutes=1)),
            ListEntry("deny", "ip", "198.51.100.9"),
        ]
    )
    frame = to_frame([_tx(1, 30, ip="198.51.100.9"), _tx(2, 30, ip="198.51.100.10")])
    on = lists.membership("ip_on_deny_list", frame)
    assert on.tolist() == [True, False]
    assert lists.membership("card_on_allow_list", frame).dtype == np.bool_


def test_swapping_the_snapshot_changes_the_next_batch() -> None:
    engine = _engine(ListSnapshot())
    assert _decide(engine, [_tx(5, 0)])["t5"][0] == "approve"
    engine.lists = ListSnapshot([ListEntry("deny", "card", "card5")], revision=1)
    assert _decide(engine, [_tx(5, 0)])["t5"][0] == "decline"


def test_scored_frame_carries_every_list_feature() -> None:
    lists = ListSnapshot([ListEntry("allow", "card", "card1")])
    frame = _engine(lists).process(to_frame([_tx(1, 0), _tx(2, 0)]), FeatureState()).frame
    assert set(LIST_FEATURES) <= set(frame.columns)
    assert frame.get_column("card_on_allow_list").to_list() == [True, False]


@pytest.mark.parametrize(
    ("entity", "value", "problem"),
    [
        ("wallet", "x", "entity 'wallet'"),
        ("card", "   ", "1 to 128 characters"),
        ("card", "4111 1111 1111 1111", "full card number"),
        ("ip", "300.1.1.1", "not an IP address or network"),
        ("ip", "10.0.0.1/8", "has host bits set"),
    ],
)
def test_bad_values_are_refused_naming_the_problem(entity: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        list_value(entity, value)


def test_values_are_stored_trimmed_and_canonical() -> None:
    assert list_value("customer", "  cust 7 ") == "cust 7"
    assert list_value("ip", "2001:DB8::0001") == "2001:db8::1"
    assert list_value("ip", "10.1.2.3/32") == "10.1.2.3"
    assert list_value("ip", "10.0.0.0/8") == "10.0.0.0/8"
