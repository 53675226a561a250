"""The pgoutput parser: every message type from bytes built here, and bytes a PostgreSQL 18
server really sent (captured once from the embedded server; see the REAL_* constants); and
the text values typed by their column's type (`pg_values`)."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from fraudstream.adapters.pg_values import (
    BOOL,
    FLOAT8,
    INT4,
    INT8,
    NUMERIC,
    TIMESTAMP,
    TIMESTAMPTZ,
    format_lsn,
    parse_lsn,
    typed_value,
)
from fraudstream.adapters.pgoutput import (
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    ProtocolError,
    Relation,
    Truncate,
    TypeInfo,
    UnknownMessage,
    Update,
    parse_message,
)

EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)
WHEN = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


def micros(moment: datetime) -> int:
    return (moment - EPOCH_2000) // timedelta(microseconds=1)


def text(value: str) -> bytes:
    return value.encode() + b"\x00"


def tuple_data(*values: object) -> bytes:
    """TupleData: text for str, binary for bytes, null for None, unchanged for UNCHANGED."""
    out = struct.pack(">h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED:
            out += b"u"
        elif isinstance(value, bytes):
            out += b"b" + struct.pack(">i", len(value)) + value
        else:
            encoded = str(value).encode()
            out += b"t" + struct.pack(">i", len(encoded)) + encoded
    return out


def test_begin() -> None:
    payload = b"B" + struct.pack(">qqI", 0x16_B374D848, micros(WHEN), 4_000_000_001)
    assert parse_message(payload) == Begin(0x16_B374D848, WHEN, 4_000_000_001)


def test_commit() -> None:
    payload = b"C" + struct.pack(">bqqq", 0, 0x100, 0x130, micros(WHEN))
    assert parse_message(payload) == Commit(0, 0x100, 0x130, WHEN)


def test_origin() -> None:
    payload = b"O" + struct.pack(">q", 0xAB) + text("upstream")
    assert parse_message(payload) == Origin(0xAB, "upstream")


def test_relation_with_key_columns() -> None:
    payload = (
        b"R" + struct.pack(">I", 16391) + text("bank") + text("payments") + b"d"
        + struct.pack(">h", 3)
        + b"\x01" + text("id") + struct.pack(">Ii", INT8, -1)
        + b"\x00" + text("amount") + struct.pack(">Ii", NUMERIC, (12 << 16 | 2) + 4)
        + b"\x00" + text("naïve ☃") + struct.pack(">Ii", 25, -1)
    )  # fmt: skip
    relation = parse_message(payload)
    assert relation == Relation(
        16391,
        "bank",
        "payments",
        "d",
        (
            Column("id", INT8, -1, True),
            Column("amount", NUMERIC, (12 << 16 | 2) + 4, False),
            Column("naïve ☃", 25, -1, False),
        ),
    )


def test_type() -> None:
    payload = b"Y" + struct.pack(">I", 16386) + text("public") + text("channel_kind")
    assert parse_message(payload) == TypeInfo(16386, "public", "channel_kind")


def test_insert_with_every_column_kind() -> None:
    payload = b"I" + struct.pack(">I", 7) + b"N" + tuple_data("42", None, UNCHANGED, b"\x00\x01")
    assert parse_message(payload) == Insert(7, ("42", None, UNCHANGED, b"\x00\x01"))


def test_insert_text_is_utf8() -> None:
    payload = b"I" + struct.pack(">I", 7) + b"N" + tuple_data("Zürich ☃", "")
    assert parse_message(payload) == Insert(7, ("Zürich ☃", ""))


def test_update_with_only_the_new_row() -> None:
    payload = b"U" + struct.pack(">I", 7) + b"N" + tuple_data("1", "new")
    assert parse_message(payload) == Update(7, ("1", "new"), None, None)


@pytest.mark.parametrize("kind", ["K", "O"])
def test_update_with_the_old_key_or_row(kind: str) -> None:
    payload = (
        b"U" + struct.pack(">I", 7) + kind.encode() + tuple_data("1", None)
        + b"N" + tuple_data("2", "x")
    )  # fmt: skip
    assert parse_message(payload) == Update(7, ("2", "x"), ("1", None), kind)


@pytest.mark.parametrize("kind", ["K", "O"])
def test_delete(kind: str) -> None:
    payload = b"D" + struct.pack(">I", 9) + kind.encode() + tuple_data("5", None)
    assert parse_message(payload) == Delete(9, ("5", None), kind)


def test_truncate() -> None:
    payload = b"T" + struct.pack(">ib", 2, 3) + struct.pack(">II", 16391, 3_000_000_000)
    assert parse_message(payload) == Truncate(3, (16391, 3_000_000_000))


@pytest.mark.parametrize("flags", [0, 1])
def test_logical_message(flags: int) -> None:
    payload = (
        b"M" + struct.pack(">bq", flags, 0x55) + text("audit") + struct.pack(">i", 3) + b"\xffab"
    )
    assert parse_message(payload) == LogicalMessage(bool(flags), 0x55, "audit", b"\xffab")


def test_a_message_type_of_a_later_protocol_is_returned_to_skip() -> None:
    payload = b"S" + struct.pack(">ib", 77, 1)  # Stream Start: protocol 2 only
    assert parse_message(payload) == UnknownMessage("S", payload)


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"", "empty"),
        (b"B\x00\x00", "truncated"),
        (b"I" + struct.pack(">IBh", 7, ord("N"), 1) + b"t\x00\x00\x00\x09ab", "9 bytes"),
        (b"I" + struct.pack(">IBh", 7, ord("N"), 1) + b"t\xff\xff\xff\xfe", "-2 bytes"),
        (b"I" + struct.pack(">IBh", 7, ord("N"), 2) + b"n", "truncated"),
        (b"I" + struct.pack(">IBh", 7, ord("N"), 1) + b"x", "column kind"),
        (b"I" + struct.pack(">I", 7) + b"X", "expected 'N'"),
        (b"U" + struct.pack(">I", 7) + b"K" + tuple_data("1") + b"K", "new tuple"),
        (b"D" + struct.pack(">I", 7) + b"N" + tuple_data("1"), "old key"),
        (b"Y" + struct.pack(">I", 1) + b"public", "NUL"),
    ],
)  # fmt: skip
def test_malformed_messages_raise_protocol_errors(payload: bytes, complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        parse_message(payload)


# Captured from PostgreSQL 18 (the embedded server) with proto_version 1 and messages on: a
# table `pay (id bigint PRIMARY KEY, ref text, at timestamptz, amount numeric(12,2),
# ch chan, ok boolean, f float8)` where `chan` is an enum, then INSERT two rows, UPDATE,
# REPLICA IDENTITY FULL and UPDATE, DELETE, a delete by key, two logical messages, an insert
# under a replication origin and a TRUNCATE.
REAL_BEGIN = "420000000001af8780000303fc660a21db000002f4"
REAL_TYPE = "59000040027075626c6963006368616e00"
REAL_RELATION = (
    "52000040077075626c696300706179006400070169640000000014ffffffff007265660000000019ffffffff"
    "00617400000004a0ffffffff00616d6f756e7400000006a4000c00060063680000004002ffffffff006f6b00"
    "00000010ffffffff006600000002bdffffffff"
)
REAL_INSERT = (
    "49000040074e0007740000000131740000000272317400000018323032362d30312d30322030333a30343a30"
    "352e352b3030740000000531322e333474000000066f6e6c696e657400000001747400000003312e35"
)
REAL_INSERT_NULLS = (
    "49000040074e00077400000001326e740000001d323032362d31312d32342030333a35313a34382e37313234"
    "36382b30307400000004312e30306e74000000016674000000034e614e"
)
REAL_COMMIT = "43000000000001af87800000000001af87b0000303fc660a21db"
REAL_UPDATE_OLD_ROW = (
    "55000040074f0007740000000131740000000272317400000018323032362d30312d30322030333a30343a30"
    "352e352b3030740000000539392e303074000000066f6e6c696e657400000001747400000003312e354e0007"
    "740000000131740000000272317400000018323032362d30312d30322030333a30343a30352e352b30307400"
    "00000539382e303074000000066f6e6c696e657400000001747400000003312e35"
)
REAL_DELETE_KEY = "44000040074b00077400000001336e6e6e6e6e6e"
REAL_MESSAGE = "4d010000000001af8ec0706678000000000568656c6c6f"
REAL_ORIGIN = "4f00000000000000ab6f7269673100"
REAL_TRUNCATE = "54000000010000004007"


def real(hex_bytes: str) -> object:
    return parse_message(bytes.fromhex(hex_bytes))


def test_real_transaction_from_postgres_18() -> None:
    begin, commit = real(REAL_BEGIN), real(REAL_COMMIT)
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert begin.final_lsn == commit.commit_lsn == parse_lsn("0/1AF8780")
    assert commit.end_lsn == parse_lsn("0/1AF87B0") > commit.commit_lsn
    assert begin.commit_time == commit.commit_time
    assert begin.commit_time.year == 2026 and begin.commit_time.tzinfo is UTC

    relation = real(REAL_RELATION)
    assert isinstance(relation, Relation)
    assert (relation.namespace, relation.name, relation.replica_identity) == ("public", "pay", "d")
    assert [(c.name, c.type_oid, c.is_key) for c in relation.columns] == [
        ("id", INT8, True), ("ref", 25, False), ("at", TIMESTAMPTZ, False),
        ("amount", NUMERIC, False), ("ch", 16386, False), ("ok", BOOL, False),
        ("f", FLOAT8, False),
    ]  # fmt: skip
    enum = real(REAL_TYPE)
    assert enum == TypeInfo(16386, "public", "chan")

    insert = real(REAL_INSERT)
    assert insert == Insert(
        relation.oid, ("1", "r1", "2026-01-02 03:04:05.5+00", "12.34", "online", "t", "1.5")
    )
    nulls = real(REAL_INSERT_NULLS)
    assert isinstance(nulls, Insert) and nulls.new[1] is None and nulls.new[6] == "NaN"
    assert isinstance(insert, Insert)
    pairs = zip(relation.columns, insert.new, strict=True)
    typed = [typed_value(column.type_oid, value) for column, value in pairs]
    assert typed == [
        1, "r1", datetime(2026, 1, 2, 3, 4, 5, 500_000, tzinfo=UTC), Decimal("12.34"),
        "online", True, 1.5,
    ]  # fmt: skip


def test_real_changes_other_than_inserts_from_postgres_18() -> None:
    update = real(REAL_UPDATE_OLD_ROW)
    assert isinstance(update, Update) and update.old_kind == "O"
    assert update.old is not None and (update.old[3], update.new[3]) == ("99.00", "98.00")
    assert real(REAL_DELETE_KEY) == Delete(16391, ("3", None, None, None, None, None, None), "K")
    assert real(REAL_MESSAGE) == LogicalMessage(True, parse_lsn("0/1AF8EC0"), "pfx", b"hello")
    assert real(REAL_ORIGIN) == Origin(0xAB, "orig1")
    assert real(REAL_TRUNCATE) == Truncate(0, (16391,))


@pytest.mark.parametrize(
    ("type_oid", "wire", "expected"),
    [
        (BOOL, "t", True),
        (BOOL, "f", False),
        (INT4, "-12", -12),
        (INT8, "9007199254740993", 9_007_199_254_740_993),
        (FLOAT8, "1.5e-07", 1.5e-07),
        (NUMERIC, "0.10", Decimal("0.10")),
        (TIMESTAMPTZ, "2026-01-02 03:04:05.123456+05:30",
         datetime(2026, 1, 2, 3, 4, 5, 123_456, tzinfo=UTC) + timedelta(hours=-5, minutes=-30)),
        (TIMESTAMP, "2026-01-02 03:04:05", datetime(2026, 1, 2, 3, 4, 5)),
        (TIMESTAMPTZ, "infinity", "infinity"),  # not a datetime: stays text for the core to refuse
        (INT4, "12abc", "12abc"),
        (25, "plain text", "plain text"),
        (16386, "online", "online"),  # an enum: its label
        (INT4, None, None),
        (INT4, UNCHANGED, UNCHANGED),
        (INT4, b"\x00\x00\x00\x01", b"\x00\x00\x00\x01"),
    ],
)  # fmt: skip
def test_typed_values(type_oid: int, wire: object, expected: object) -> None:
    assert typed_value(type_oid, wire) == expected  # type: ignore[arg-type]


def test_a_numeric_nan_is_a_float_nan() -> None:
    value = typed_value(NUMERIC, "NaN")
    assert isinstance(value, float) and math.isnan(value)


@pytest.mark.parametrize("lsn", [0, 0x1AF87B0, 0x16_B374D848, 2**63 - 1])
def test_lsn_text_round_trip(lsn: int) -> None:
    assert parse_lsn(format_lsn(lsn)) == lsn
    assert format_lsn(0x16_B374D848) == "16/B374D848"


def test_not_an_lsn() -> None:
    with pytest.raises(ValueError, match="not an LSN"):
        parse_lsn("1234")
