"""Strict decoding: good records decode, bad ones are rejected naming the field."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime

import msgspec
import polars as pl
import pytest

from fraudstream.core.currencies import ISO_4217_CODES
from fraudstream.core.errors import InvalidTransaction
from fraudstream.core.events import (
    TRANSACTION_SCHEMA,
    Transaction,
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
        ({"mcc": "54110"}, "mcc"),
        ({"mcc": "5411\n"}, "mcc"),  # `re`'s `$` let a trailing newline through
        ({"mcc": "\u0665\u0664\u0661\u0661"}, "mcc"),  # Arabic-Indic digits: not 0-9
        ({"mcc": "54a1"}, "mcc"),
        ({"card_last4": "123"}, "card_last4"),
        ({"card_last4": "\uff11234"}, "card_last4"),  # a full-width digit
        ({"country": "us"}, "country"),
        ({"country": "U1"}, "country"),
        ({"country": "USA"}, "country"),
        ({"country": "\u00c9S"}, "country"),
        ({"currency": "EU"}, "currency"),
    ],
)
def test_bad_records_are_rejected_naming_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidTransaction) as caught:
        decode_transaction(_raw(**changes))
    assert caught.value.field == field


def test_codes_of_the_documented_shape_decode() -> None:
    tx = decode_transaction(_raw(mcc="0742", card_last4="0000", country="DE", currency="CHF"))
    assert (tx.mcc, tx.card_last4, tx.country, tx.currency) == ("0742", "0000", "DE", "CHF")


def test_every_known_currency_has_the_documented_shape() -> None:
    """The currency check is the code list; the schema documents `^[A-Z]{3}$` for it."""
    assert all(len(code) == 3 and code.isascii() and code.isupper() for code in ISO_4217_CODES)
    schema = msgspec.json.schema(Transaction)["$defs"]["Transaction"]["properties"]
    assert schema["currency"]["pattern"] == "^[A-Z]{3}$"
    assert schema["mcc"]["anyOf"][0]["pattern"] == "^[0-9]{4}$"


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
