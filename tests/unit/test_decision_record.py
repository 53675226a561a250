"""Decisions as the API answers them and as they travel with their transaction: records built
from a scored batch, signed headers, and the worker recording a carried decision."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from fraudstream.core.decision_record import (
    DECISION_HEADER,
    RECORD_FIELDS,
    SIGNATURE_HEADER,
    carried_decision,
    decision_key,
    encode,
    records,
    sign,
)
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.events import Transaction, encode_transaction, to_frame
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.runners.api_auth import RateLimiter
from fraudstream.runners.api_scoring import ReplayMemory
from fraudstream.runners.scoring_step import decode_arrival, score_arrivals

START = datetime(2026, 1, 1, tzinfo=UTC)
KEY = decision_key(b"k" * 32)


def _engine() -> Engine:
    config = FeatureConfig()
    return Engine(
        compile_ruleset(parse_ruleset(load_default_ruleset_text()), available_columns(config))
    )


def _transactions(n: int) -> list[Transaction]:
    return [
        Transaction(
            transaction_id=f"t{i}",
            timestamp=START + timedelta(seconds=i),
            amount=9500.0 if i % 3 == 0 else 12.0,
            card_ref=f"c{i % 2}",
            country="US" if i % 2 else "BR",
        )
        for i in range(n)
    ]


def test_records_hold_what_the_scored_frame_holds() -> None:
    decisions = _engine().process(to_frame(_transactions(30)), FeatureState(FeatureConfig()))
    decided_at = datetime.now(UTC)
    built = records(decisions, decided_at)
    assert any(r.is_flagged for r in built) and not all(r.is_flagged for r in built)
    for record, row in zip(built, decisions.outcome.iter_rows(named=True), strict=True):
        for name in RECORD_FIELDS:
            expected = decided_at if name == "decided_at" else row[name]
            assert getattr(record, name) == expected, name


@dataclass
class _Message:
    raw: bytes
    header_list: list[tuple[str, bytes]]
    at: int

    def topic(self) -> str:
        return "transactions"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.at

    def value(self) -> bytes:
        return self.raw

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def headers(self) -> list[tuple[str, bytes]]:
        return self.header_list


def _signed(transaction: Transaction, decision: bytes, key: bytes = KEY) -> _Message:
    value = encode_transaction(transaction)
    return _Message(
        value, [(DECISION_HEADER, decision), (SIGNATURE_HEADER, sign(key, value, decision))], 0
    )


def test_a_worker_records_the_decision_the_api_signed() -> None:
    transactions = _transactions(4)
    api_decided = records(
        _engine().process(to_frame(transactions[3:]), FeatureState(FeatureConfig())),
        START,
    )[0]
    # the API's answer differs from what the worker would decide: it must be kept as it is
    forced = msgspec.structs.replace(api_decided, action="decline", score=0.99, reasons=["api"])
    messages = [_Message(encode_transaction(t), [], i) for i, t in enumerate(transactions[:3])]
    messages.append(_signed(transactions[3], encode(forced)))
    arrivals = [decode_arrival(m, 0, 0.0, KEY) for m in messages]
    batch = score_arrivals(_engine(), FeatureState(FeatureConfig()), arrivals, [True] * 4)
    rows = {row["transaction_id"]: row for row in batch.frame.iter_rows(named=True)}
    assert rows["t3"]["action"] == "decline"
    assert rows["t3"]["score"] == 0.99
    assert rows["t3"]["reasons"] == ["api"]
    assert rows["t3"]["decided_at"] == START
    assert rows["t0"]["decided_at"] != START, "the others are the worker's own decisions"


@pytest.mark.parametrize("tamper", ["decision", "transaction", "key", "other id", "no mac"])
def test_a_decision_that_does_not_verify_is_ignored(tamper: str) -> None:
    transaction, other = _transactions(2)
    record = records(
        _engine().process(to_frame([transaction]), FeatureState(FeatureConfig())), START
    )[0]
    decision = encode(record)
    message = _signed(transaction, decision)
    if tamper == "decision":
        action = record.action.encode()
        message.header_list[0] = (DECISION_HEADER, decision.replace(action, b"approve"))
    elif tamper == "transaction":
        message.raw = message.raw.replace(b"9500.0", b"1.0")
    elif tamper == "key":
        message = _signed(transaction, decision, decision_key(b"other"))
    elif tamper == "other id":
        message = _signed(other, decision)
    else:
        message.header_list.pop()
    own_id = json.loads(message.raw)["transaction_id"]
    assert carried_decision(KEY, message.headers(), message.raw, own_id) is None
    arrival = decode_arrival(message, 0, 0.0, KEY)
    assert arrival.carried is None
    assert decode_arrival(_signed(transaction, decision), 0, 0.0, KEY).carried == record


def test_the_rate_limit_allows_bursts_of_one_second_then_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.wait_s("k", 3.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait_s("k", 3.0) == pytest.approx(1 / 3)
    now[0] += 1 / 3
    assert limiter.wait_s("k", 3.0) == 0.0
    assert limiter.wait_s("other", 3.0) == 0.0, "buckets are per key"


def test_the_replay_memory_keeps_the_newest_and_the_first_answer() -> None:
    memory = ReplayMemory(capacity=2)
    memory.put("a", b"d1", b"first")
    memory.put("a", b"d2", b"second")
    assert memory.get("a") == (b"d1", b"first")
    memory.put("b", b"d", b"x")
    memory.put("c", b"d", b"y")
    assert memory.get("a") is None
    assert len(memory) == 2


def test_the_signature_is_hmac_sha256_over_the_length_prefixed_transaction_and_decision() -> None:
    """The header's MAC is a wire format: workers of another release verify it."""
    key, value, decision = b"k" * 32, b'{"transaction_id":"t"}', b'{"action":"approve"}'
    expected = hmac.new(key, len(value).to_bytes(8, "big") + value + decision, hashlib.sha256)
    assert sign(key, value, decision) == expected.digest()
    assert sign(key, value + b" ", decision) != expected.digest()
