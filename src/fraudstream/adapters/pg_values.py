"""PostgreSQL values in their text form (what pgoutput and `::text` give) as Python values,
and LSNs as text.

`converter(type_oid)` turns text into a Python value for the types a transaction field can
use; anything else stays text, and text that does not parse stays text too, so the transaction
schema decides whether it is acceptable (one validator, the core's). Nulls, unchanged TOASTed
values (`pgoutput.UNCHANGED`) and binary values pass through as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Final

from fraudstream.adapters.pgoutput import Value

BOOL, INT8, INT2, INT4, OID = 16, 20, 21, 23, 26
FLOAT4, FLOAT8, NUMERIC = 700, 701, 1700
TIMESTAMP, TIMESTAMPTZ = 1114, 1184


def _bool(text: str) -> bool | str:
    return {"t": True, "f": False}.get(text, text)


def _decimal(text: str) -> Decimal | float:
    value = Decimal(text)
    return value if value.is_finite() else float(value)  # NaN / ±Infinity: not a number in JSON


def _timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text)  # ISO DateStyle: '2026-01-02 03:04:05.5+00'


_CONVERTERS: Final[dict[int, Callable[[str], object]]] = {
    BOOL: _bool, INT2: int, INT4: int, INT8: int, OID: int,
    FLOAT4: float, FLOAT8: float, NUMERIC: _decimal,
    TIMESTAMP: _timestamp, TIMESTAMPTZ: _timestamp,
}  # fmt: skip


def converter(type_oid: int) -> Callable[[Value], object]:
    """A function from a column's wire value to a Python value for type `type_oid`.

    Text of the supported types becomes bool / int / float / Decimal / datetime (timestamptz
    aware, timestamp naive); other types, and text the conversion refuses (a timestamp of
    `infinity`), stay text. Nulls and unchanged values pass through; binary stays bytes.
    """
    convert = _CONVERTERS.get(type_oid)
    if convert is None:
        return _identity

    def typed(value: Value) -> object:
        if not isinstance(value, str):
            return value
        try:
            return convert(value)
        except (ValueError, InvalidOperation):
            return value

    return typed


def _identity(value: Value) -> object:
    return value


def typed_value(type_oid: int, value: Value) -> object:
    """`converter(type_oid)(value)`, for one value."""
    return converter(type_oid)(value)


def format_lsn(lsn: int) -> str:
    """An LSN as PostgreSQL writes it: `16/B374D848`."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """`16/B374D848` as an integer; `ValueError` if it is not an LSN."""
    high, separator, low = text.partition("/")
    if not separator:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)
