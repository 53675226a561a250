"""The producer: every generated transaction on the topic once, keyed by card, at the rate asked."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec
import polars as pl
import pytest
from kafka_helpers import read_messages

from fraudstream.adapters.kafka import DeliveryError, TransactionProducer, ensure_topics
from fraudstream.adapters.kafka_sinks import DeadLetterTopicSink
from fraudstream.core.events import decode_transaction
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.ports import DeadLetter, ScoredBatch, SinkUnavailable
from fraudstream.stack import Endpoints, free_port


def test_generated_stream_is_published_once_keyed_by_card_at_the_target_rate(
    endpoints: Endpoints,
) -> None:
    topic = f"transactions-{uuid.uuid4().hex[:6]}"
    assert ensure_topics(endpoints.kafka, [topic], partitions=4) == [topic]
    assert ensure_topics(endpoints.kafka, [topic], partitions=4) == []  # already there
    stream = generate(GeneratorConfig(seed=3, n_transactions=1500, n_customers=300))

    report = TransactionProducer(endpoints.kafka, topic).publish(stream.transactions, rate=1000)

    assert report.sent == 1500
    assert not report.failed
    assert report.elapsed_s >= 1.35  # 1 500 messages at 1 000/s cannot take less than ~1.5 s
    assert report.rate <= 1100
    messages = [
        (m.key(), m.value(), m.partition()) for m in read_messages(endpoints.kafka, topic, 1500)
    ]
    assert len(messages) == 1500
    decoded = [decode_transaction(value) for _, value, _ in messages]
    assert sorted(tx.transaction_id for tx in decoded) == sorted(
        stream.transactions["transaction_id"].to_list()
    )
    for (key, value, _), tx in zip(messages, decoded, strict=True):
        assert key == (tx.card_ref or tx.customer_id).encode()
        raw = msgspec.json.decode(value)
        assert "is_fraud" not in raw and "scenario" not in raw  # ground truth stays out
    partitions_of_card: dict[bytes, set[int]] = {}
    last_time: dict[bytes, object] = {}
    for (key, _, partition), tx in zip(messages, decoded, strict=True):
        partitions_of_card.setdefault(key, set()).add(partition)
        assert last_time.get(key, tx.timestamp) <= tx.timestamp  # a card's events stay in order
        last_time[key] = tx.timestamp
    assert all(len(partitions) == 1 for partitions in partitions_of_card.values())
    assert len({p for ps in partitions_of_card.values() for p in ps}) > 1  # spread over partitions


def test_undelivered_messages_raise_rather_than_count_as_sent() -> None:
    dead_broker = {
        "bootstrap.servers": f"127.0.0.1:{free_port()}",  # nothing listens there
        "message.timeout.ms": "1500",
        "log_level": "0",
    }
    stream = generate(GeneratorConfig(seed=4, n_transactions=20, n_customers=10))
    sent = stream.transactions.height
    with pytest.raises(DeliveryError, match=rf"^{sent} of {sent} messages .*timed out"):
        TransactionProducer(dead_broker, "transactions").publish(stream.transactions)


def dead_letters(count: int) -> ScoredBatch:
    letters = tuple(
        DeadLetter("transactions", 0, offset, b"{not json", "invalid JSON", "$", datetime.now(UTC))
        for offset in range(count)
    )
    return ScoredBatch(pl.DataFrame(), letters)


def test_topic_sinks_confirm_what_the_broker_stored_and_refuse_what_it_did_not(
    endpoints: Endpoints,
) -> None:
    topic = f"dead-letters-{uuid.uuid4().hex[:6]}"
    ensure_topics(endpoints.kafka, [topic], partitions=2)
    DeadLetterTopicSink(endpoints.kafka, topic).write(dead_letters(50))
    stored = read_messages(endpoints.kafka, topic, 50, timeout=30)
    assert sorted(dict(m.headers() or [])["source"] for m in stored) == sorted(
        f"transactions/0/{offset}".encode() for offset in range(50)
    )

    dead_broker = {
        "bootstrap.servers": f"127.0.0.1:{free_port()}",  # nothing listens there
        "message.timeout.ms": "1500",
        "log_level": "0",
    }
    with pytest.raises(SinkUnavailable, match=rf"^7 of 7 messages to {topic} not confirmed"):
        DeadLetterTopicSink(dead_broker, topic).write(dead_letters(7))
