"""The transaction schema: strict decoding from JSON bytes, validation, and the columnar batch.

A transaction needs only an id, a timezone-aware event time, an entity (card reference or
customer) and an amount. Everything else is optional because real feeds and historical datasets
often lack it; features that need a missing field come out null, never invented.

Decoding never coerces: a string where a number belongs, a naive timestamp, an unknown currency
or a full card number is rejected with an `InvalidTransaction` that names the field.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal

import msgspec
import polars as pl

from fraudstream.core.currencies import ISO_4217_CODES
from fraudstream.core.errors import InvalidTransaction
from fraudstream.core.series import frame_of, typed_series

MAX_AMOUNT: Final = 10_000_000.0
"""Anything above this in one transaction is a data error, not a purchase."""

_ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]

# Fixed-shape codes are checked in `_check_semantics` with `str` methods, and their patterns
# only documented (`extra_json_schema`): msgspec runs a `re` search per patterned value, and
# four of them were half of all decoding time. The checks are exactly the documented patterns
# as JSON Schema reads them (ASCII digits and letters, nothing after the last character).
_Digits4 = Annotated[str, msgspec.Meta(extra_json_schema={"pattern": r"^[0-9]{4}$"})]
_Currency = Annotated[str, msgspec.Meta(extra_json_schema={"pattern": r"^[A-Z]{3}$"})]
_Country = Annotated[str, msgspec.Meta(extra_json_schema={"pattern": r"^[A-Z]{2}$"})]

Channel = Literal["card_present", "online"]


class Transaction(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One payment as the engine sees it. Ground-truth labels never travel in this record.

    Untracked by the cyclic collector (`gc=False`): its fields are strings, numbers and a
    datetime, which can never refer back to it, and a worker makes thousands a second."""

    transaction_id: _ShortText
    timestamp: Annotated[datetime, msgspec.Meta(tz=True)]
    amount: Annotated[float, msgspec.Meta(ge=0.0, le=MAX_AMOUNT)]
    card_ref: _ShortText | None = None
    card_last4: _Digits4 | None = None
    customer_id: _ShortText | None = None
    merchant_id: _ShortText | None = None
    mcc: _Digits4 | None = None
    terminal_id: _ShortText | None = None
    currency: _Currency = "USD"
    country: _Country | None = None
    latitude: Annotated[float, msgspec.Meta(ge=-90.0, le=90.0)] | None = None
    longitude: Annotated[float, msgspec.Meta(ge=-180.0, le=180.0)] | None = None
    channel: Channel | None = None
    device_id: _ShortText | None = None
    ip: Annotated[str, msgspec.Meta(max_length=45)] | None = None

    def __post_init__(self) -> None:
        _check_semantics(self)


_PAN_LIKE = re.compile(r"^\d{12,19}$")


def looks_like_card_number(text: str) -> bool:
    """True for 12-19 digits passing the Luhn check: what a full card number (PAN) looks like."""
    digits = text.replace(" ", "").replace("-", "")
    if not _PAN_LIKE.match(digits):
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _check_semantics(tx: Transaction) -> None:
    """Cross-field rules msgspec's per-field constraints cannot express.

    Raises `msgspec.ValidationError` so the decoder reports them like any other field error.
    """
    if tx.card_ref is None and tx.customer_id is None:
        raise msgspec.ValidationError("a card_ref or a customer_id is required - at `$.card_ref`")
    if tx.card_ref is not None and looks_like_card_number(tx.card_ref):
        raise msgspec.ValidationError(
            "looks like a full card number; send a token or hash - at `$.card_ref`"
        )
    for name in ("card_last4", "mcc"):
        code = getattr(tx, name)
        if code is not None and not _is_digits(code, 4):
            raise msgspec.ValidationError(f"expected four ASCII digits - at `$.{name}`")
    if tx.country is not None and not is_country_code(tx.country):
        raise msgspec.ValidationError("expected two capital letters A-Z - at `$.country`")
    if tx.currency not in ISO_4217_CODES:  # the codes are all three capital letters A-Z
        raise msgspec.ValidationError(f"unknown currency {tx.currency!r} - at `$.currency`")
    if (tx.latitude is None) != (tx.longitude is None):
        raise msgspec.ValidationError(
            "latitude and longitude come together or not at all - at `$.latitude`"
        )
    if tx.ip is not None and not is_ip_address(tx.ip):
        raise msgspec.ValidationError(f"not an IP address: {tx.ip!r} - at `$.ip`")


def _is_digits(text: str, length: int) -> bool:
    """Exactly `length` characters, each 0-9."""
    return len(text) == length and text.isascii() and text.isdigit()


def is_country_code(text: str) -> bool:
    """The shape of an ISO 3166 alpha-2 code: exactly two characters, each A-Z."""
    return len(text) == 2 and text.isascii() and text.isalpha() and text.isupper()


def is_ip_address(text: str) -> bool:
    """What `ipaddress.ip_address` accepts, decided by the C parser in the common case
    (twenty times faster: this runs for every decoded message); only what it refuses, such as
    an IPv6 scope (`fe80::1%eth0`), goes to `ipaddress`."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
        except (OSError, ValueError):
            continue
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_FIELD_IN_MESSAGE = re.compile(r"at `\$\.?([A-Za-z_][\w.\[\]]*)?`|required field `(\w+)`")
_DECODER: Final = msgspec.json.Decoder(Transaction)


def _as_invalid(error: msgspec.DecodeError) -> InvalidTransaction:
    message = str(error)
    match = _FIELD_IN_MESSAGE.search(message)
    field = "$"
    if match:
        field = match.group(1) or match.group(2) or "$"
    reason = re.sub(r"\s*-\s*at `\$[^`]*`$", "", message)
    return InvalidTransaction(field, reason)


def decode_transaction(raw: bytes | str) -> Transaction:
    """Decode and validate one JSON record, or raise `InvalidTransaction` naming the field."""
    try:
        return _DECODER.decode(raw)
    except msgspec.DecodeError as error:
        raise _as_invalid(error) from None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that failed decoding: its position in the input, its raw bytes and why."""

    index: int
    raw: bytes
    error: InvalidTransaction


def decode_many(records: Iterable[bytes]) -> tuple[list[Transaction], list[Rejected]]:
    """Decode a batch; bad records are returned beside the good ones, never raised."""
    good: list[Transaction] = []
    bad: list[Rejected] = []
    decode = _DECODER.decode
    for index, raw in enumerate(records):
        try:
            good.append(decode(raw))
        except msgspec.DecodeError as error:
            bad.append(Rejected(index, bytes(raw), _as_invalid(error)))
    return good, bad


def encode_transaction(tx: Transaction) -> bytes:
    """JSON bytes for one transaction (what producers put on the wire)."""
    return msgspec.json.encode(tx)


# ---------------------------------------------------------------------------------------------
# The columnar batch the engine consumes.

TIMESTAMP_DTYPE: Final = pl.Datetime("us", "UTC")

TRANSACTION_SCHEMA: Final[dict[str, pl.DataType]] = {
    "transaction_id": pl.String(),
    "timestamp": TIMESTAMP_DTYPE,
    "card_ref": pl.String(),
    "card_last4": pl.String(),
    "customer_id": pl.String(),
    "merchant_id": pl.String(),
    "mcc": pl.String(),
    "terminal_id": pl.String(),
    "amount": pl.Float64(),
    "currency": pl.String(),
    "country": pl.String(),
    "latitude": pl.Float64(),
    "longitude": pl.Float64(),
    "channel": pl.String(),
    "device_id": pl.String(),
    "ip": pl.String(),
}
REQUIRED_COLUMNS: Final = ("transaction_id", "timestamp", "amount")

_INT64: Final = pl.Int64()
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def event_time_us(tx: Transaction) -> int:
    """The transaction's event time as integer microseconds since the epoch, UTC."""
    return (tx.timestamp - _EPOCH) // _MICROSECOND


def to_frame(
    transactions: Sequence[Transaction], event_us: Sequence[int] | None = None
) -> pl.DataFrame:
    """Columns of a decoded batch, in the engine's schema (timestamps in UTC microseconds).

    `event_us`, when the caller has them already, are the transactions' `event_time_us`: a
    runner that ordered its arrivals by event time need not work them out again (it was 4 %
    of a worker's main thread). Built a typed column at a time (`series.py`): at the scoring
    API's batches of ten, the frame is a fixed cost per batch, and Polars' public constructors
    were most of it."""
    if event_us is None:
        event_us = [event_time_us(tx) for tx in transactions]
    columns = [
        typed_series(name, event_us, _INT64).cast(dtype)
        if name == "timestamp"
        else typed_series(name, [getattr(tx, name) for tx in transactions], dtype)
        for name, dtype in TRANSACTION_SCHEMA.items()
    ]
    return frame_of(columns)


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """Bring a frame from a file or a generator to the engine's schema.

    Required columns must be present; optional ones that are absent become null columns;
    extra columns (labels, scenarios) are kept after the schema's columns.
    """
    missing = [name for name in REQUIRED_COLUMNS if name not in frame.columns]
    if "card_ref" not in frame.columns and "customer_id" not in frame.columns:
        missing.append("card_ref or customer_id")
    if missing:
        raise InvalidTransaction(missing[0], f"required column missing: {', '.join(missing)}")
    exprs: list[pl.Expr] = []
    for name, dtype in TRANSACTION_SCHEMA.items():
        if name in frame.columns:
            column = pl.col(name)
            if name == "timestamp" and frame.schema[name] != dtype:
                column = column.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
            exprs.append(column.cast(dtype))
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
    extras = [pl.col(c) for c in frame.columns if c not in TRANSACTION_SCHEMA]
    return frame.select([*exprs, *extras])
