"""Strict decoding: good records decode, bad ones are rejected naming the field."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime

import polars as pl
import pytest

from fraudstream.core.errors import InvalidTransaction
from fraudstream.core.events import (
    TRANSACTION_SCHEMA,
    conform,
    decode_many,
    decode_transaction,
    is_ip_address,
    looks_like_card_number,
    to_frame,
)

GOOD = {
    "transaction_id": "tx-1",
    "timestamp": "2026-03-01T12:00:00+01:00",
    "amount": 42.5,
    "card_ref": "tok_abc",
    "currency": "EUR",
}


def _raw(**changes: object) -> bytes:
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...}).encode()


def test_minimal_record_decodes_with_utc_event_time() -> None:
    tx = decode_transaction(_raw())
    assert tx.amount == 42.5
    frame = to_frame([tx])
    assert frame.schema == pl.Schema(TRANSACTION_SCHEMA)
    assert frame.item(0, "timestamp") == datetime(2026, 3, 1, 11, 0, tzinfo=UTC)
    assert frame.item(0, "latitude") is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": ...}, "amount"),
        ({"amount": "42.5"}, "amount"),
        ({"amount": -1}, "amount"),
        ({"amount": 1e12}, "amount"),
        ({"currency": "ABC"}, "currency"),
        ({"currency": "eur"}, "currency"),
        ({"timestamp": "2026-03-01T12:00:00"}, "timestamp"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"transaction_id": ...}, "transaction_id"),
        ({"card_ref": ...}, "card_ref"),
        ({"card_ref": "4111111111111111"}, "card_ref"),
        ({"latitude": 10.0}, "latitude"),
        ({"latitude": 91.0, "longitude": 0.0}, "latitude"),
        ({"channel": "atm"}, "channel"),
        ({"ip": "999.1.1.1"}, "ip"),
        ({"mcc": "54"}, "mcc"),
    ],
)
def test_bad_records_are_rejected_naming_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidTransaction) as caught:
        decode_transaction(_raw(**changes))
    assert caught.value.field == field


def test_customer_alone_is_enough() -> None:
    tx = decode_transaction(_raw(card_ref=..., customer_id="C1"))
    assert tx.card_ref is None and tx.customer_id == "C1"


def test_decode_many_keeps_bad_records_with_their_reason() -> None:
    good, bad = decode_many([_raw(), b"{not json", _raw(amount="x"), _raw(transaction_id="t2")])
    assert [t.transaction_id for t in good] == ["tx-1", "t2"]
    assert [(r.index, r.error.field) for r in bad] == [(1, "$"), (2, "amount")]
    assert bad[0].raw == b"{not json"


def test_luhn_detection() -> None:
    assert looks_like_card_number("4111 1111 1111 1111")
    assert not looks_like_card_number("4111111111111112")
    assert not looks_like_card_number("tok_4111111111111111")


def test_conform_fills_absent_optional_columns_and_requires_the_rest() -> None:
    frame = pl.DataFrame(
        {
            "transaction_id": ["a"],
            "timestamp": [datetime(2026, 1, 1, tzinfo=UTC)],
            "customer_id": ["c"],
            "amount": [1.0],
            "label": [True],
        }
    )
    conformed = conform(frame)
    assert list(conformed.columns) == [*TRANSACTION_SCHEMA, "label"]
    with pytest.raises(InvalidTransaction, match="amount"):
        conform(frame.drop("amount"))


@pytest.mark.parametrize(
    "text",
    [
        "1.2.3.4", "255.255.255.255", "256.1.1.1", "1.2.3", "01.2.3.4", "1.2.3.04", "1.2.3.4 ",
        "::1", "::ffff:1.2.3.4", "2001:db8::1", "fe80::1%eth0", "2001:db8:::1", "", "localhost",
        "1.2.3.4\x00",
    ],
)  # fmt: skip
def test_ip_check_agrees_with_ipaddress(text: str) -> None:
    try:
        ipaddress.ip_address(text)
        expected = True
    except ValueError:
        expected = False
    assert is_ip_address(text) is expected
