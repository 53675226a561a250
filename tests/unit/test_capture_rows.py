"""Captured rows to transactions: the mapping, the core's validation, dead letters, settings."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from fraudstream.adapters.pg_values import BOOL, INT8, NUMERIC, TIMESTAMPTZ
from fraudstream.adapters.pgoutput import UNCHANGED, Column, Relation
from fraudstream.config import SettingsError, load_settings
from fraudstream.core.events import decode_transaction
from fraudstream.ports import DeadLetter
from fraudstream.runners.capture_rows import Captured, RowMapper

PAYMENTS = Relation(
    16391,
    "public",
    "payments",
    "d",
    (
        Column("id", INT8, -1, True),
        Column("booked_at", TIMESTAMPTZ, -1, False),
        Column("amount", NUMERIC, -1, False),
        Column("card_ref", 25, -1, False),
        Column("currency", 1042, -1, False),
        Column("flagged", BOOL, -1, False),
    ),
)
MAPPING = {"transaction_id": "id", "timestamp": "booked_at"}
COMMITTED = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
KEY = ("postgres:public.payments", 3, 0x1AF87B0)


def mapped(values: tuple[object, ...], **options: str) -> Captured | DeadLetter:
    mapper = RowMapper(MAPPING, options.get("prefix", ""))
    record = mapper.record(mapper.plan(PAYMENTS), values)  # type: ignore[arg-type]
    return mapper.map(record, KEY, COMMITTED)


def test_a_valid_row_becomes_the_transaction_json_keyed_by_card() -> None:
    result = mapped(("42", "2026-05-06 07:08:09.5+00", "12.50", "tok-9", "EUR", "t"))
    assert isinstance(result, Captured)
    assert result.key == b"tok-9"
    transaction = decode_transaction(result.value)
    assert transaction.transaction_id == "42"  # a bigint id is written in decimal
    assert transaction.timestamp == datetime(2026, 5, 6, 7, 8, 9, 500_000, tzinfo=UTC)
    assert (transaction.amount, transaction.currency) == (12.5, "EUR")
    assert "flagged" not in json.loads(result.value)  # not a transaction field: not carried


def test_the_id_prefix_and_defaults_apply() -> None:
    result = mapped(("42", "2026-05-06 07:08:09+00", "1", "tok-9", None, None), prefix="pay-")
    assert isinstance(result, Captured)
    transaction = decode_transaction(result.value)
    assert transaction.transaction_id == "pay-42"
    assert transaction.currency == "USD"  # a null column leaves the schema's default


AT = "2026-05-06 07:08:09+00"


@pytest.mark.parametrize(
    ("values", "field", "reason"),
    [
        (("1", AT, "-3.00", "tok", "EUR", "t"), "amount", ">= 0.0"),
        (("1", AT, "3.00", "tok", "EUQ", "t"), "currency", "unknown currency"),
        (("1", "infinity", "3.00", "tok", "EUR", "t"), "timestamp", "datetime"),
        (("1", AT, UNCHANGED, "tok", "EUR", "t"), "amount", "required"),
        (("1", AT, "3", None, "EUR", "t"), "card_ref", "card_ref or a customer_id"),
    ],
)
def test_an_invalid_row_is_a_dead_letter_saying_why(
    values: tuple[object, ...], field: str, reason: str
) -> None:
    letter = mapped(values)
    assert isinstance(letter, DeadLetter)
    assert (letter.field, letter.topic, letter.partition, letter.offset) == (field, *KEY)
    assert reason in letter.error
    assert letter.received_at == COMMITTED
    assert json.loads(letter.raw)["transaction_id"] == "1"


def test_a_full_card_number_is_rejected_and_masked_in_the_dead_letter() -> None:
    letter = mapped(("7", "2026-05-06 07:08:09+00", "3", "4111 1111 1111 1111", "EUR", "t"))
    assert isinstance(letter, DeadLetter) and letter.field == "card_ref"
    assert b"4111" not in letter.raw
    assert json.loads(letter.raw)["card_ref"] == "************1111"


def test_a_mapped_column_the_table_lacks_is_reported() -> None:
    mapper = RowMapper({"transaction_id": "payment_ref", "amount": "amount"}, "")
    plan = mapper.plan(PAYMENTS)
    assert plan.missing == ("transaction_id",)
    assert "amount" in {field for field, _, _ in plan.fields}


def test_the_mapping_names_transaction_fields_only() -> None:
    with pytest.raises(ValueError, match="amout"):
        RowMapper({"amout": "amount"}, "")


@pytest.mark.parametrize(
    ("capture", "culprit"),
    [
        ({"columns": {"amout": "amount"}}, "capture.columns"),
        ({"columns": {"amount": " "}}, "capture.columns"),
        ({"table": "payments; DROP TABLE x"}, "capture.table"),
        ({"slot": "Has-Caps"}, "capture.slot"),
        ({"on_update": "upsert"}, "capture.on_update"),
        ({"max_batch_rows": 0}, "capture.max_batch_rows"),
    ],
)
def test_bad_capture_settings_are_refused_naming_the_setting(
    capture: dict[str, object], culprit: str
) -> None:
    with pytest.raises(SettingsError, match=culprit):
        load_settings(capture=capture)


def test_slot_and_publication_names_follow_the_table() -> None:
    capture = load_settings(capture={"table": "Core.Payments"}).capture
    assert capture.slot_name == capture.publication_name == "fraudstream_core_payments"
    assert load_settings(capture={"slot": "mine"}).capture.publication_name == "mine"
