"""A captured row as a transaction message, or as a dead letter that says why not.

The column mapping (transaction field -> source column; a field not mapped is read from the
column of the same name when the table has one) is bound to a table's columns once per
`Relation`. Each row becomes a plain dict of the mapped values, is encoded to JSON and decoded
by the core's own strict decoder (`decode_transaction`), so a captured row passes exactly the
validation any other producer's message does; a row that fails becomes a `DeadLetter` naming
the field and the reason.

Only two conveniences are added before validation, both about SQL types rather than values: an
integer column mapped to a text field (a `bigint` id as `transaction_id`) is written in
decimal, and `id_prefix` is put in front of the transaction id. A null or unchanged (TOASTed,
not sent) value leaves its field out, so the schema's default or its "required" error applies.

Dead letters carry the mapped record as their raw bytes, never the whole source row, and any
value that looks like a full card number is masked to its last four digits first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import msgspec
import msgspec.inspect

from fraudstream.adapters.pg_values import converter
from fraudstream.adapters.pgoutput import UNCHANGED, Relation, Value
from fraudstream.core.errors import InvalidTransaction
from fraudstream.core.events import Transaction, decode_transaction, looks_like_card_number
from fraudstream.ports import DeadLetter


def _text_fields() -> frozenset[str]:
    """Transaction fields that hold text; an integer column mapped to one is written in
    decimal."""
    found = set()
    for field in msgspec.inspect.type_info(Transaction).fields:  # type: ignore[attr-defined]
        kind = field.type
        members = kind.types if isinstance(kind, msgspec.inspect.UnionType) else (kind,)
        if any(isinstance(member, msgspec.inspect.StrType) for member in members):
            found.add(field.name)
    return frozenset(found)


TEXT_FIELDS: Final = _text_fields()

FIELDS: Final = frozenset(Transaction.__struct_fields__)

_ENCODER: Final = msgspec.json.Encoder(decimal_format="number")


@dataclass(frozen=True, slots=True)
class Captured:
    """A valid row: its Kafka key (card, else customer) and the transaction's JSON."""

    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class RowPlan:
    """Where each mapped field sits in one relation's tuples, and how its text is typed."""

    relation: Relation
    fields: tuple[tuple[str, int, Callable[[Value], object]], ...]
    missing: tuple[str, ...]
    """Mapped fields whose source column this relation lacks."""


class RowMapper:
    """Maps rows of the source table to transactions (see the module docstring)."""

    def __init__(self, columns: Mapping[str, str], id_prefix: str) -> None:
        unknown = sorted(set(columns) - FIELDS)
        if unknown:
            raise ValueError(f"unknown transaction fields in the column mapping: {unknown}")
        self._columns = dict(columns)
        self._id_prefix = id_prefix

    def plan(self, relation: Relation) -> RowPlan:
        """The field positions in `relation`'s tuples."""
        position = {column.name: index for index, column in enumerate(relation.columns)}
        fields = []
        missing = []
        for field in sorted(FIELDS):
            name = self._columns.get(field, field)
            index = position.get(name)
            if index is None:
                if field in self._columns:
                    missing.append(field)
                continue
            fields.append((field, index, converter(relation.columns[index].type_oid)))
        return RowPlan(relation, tuple(fields), tuple(missing))

    def record(self, plan: RowPlan, values: Sequence[Value]) -> dict[str, object]:
        """The mapped fields of one tuple, typed, before validation."""
        record: dict[str, object] = {}
        for field, index, typed in plan.fields:
            value = typed(values[index]) if index < len(values) else None
            if value is None or value is UNCHANGED:
                continue
            if field in TEXT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            record[field] = value
        if self._id_prefix and isinstance(record.get("transaction_id"), str):
            record["transaction_id"] = self._id_prefix + str(record["transaction_id"])
        return record

    def map(
        self, record: dict[str, object], letter_key: tuple[str, int, int], received_at: datetime
    ) -> Captured | DeadLetter:
        """A valid transaction, or a dead letter under `letter_key`: (source, index, LSN),
        stored as the dead letter's topic, partition and offset."""
        raw = _ENCODER.encode(record)
        try:
            transaction = decode_transaction(raw)
        except InvalidTransaction as error:
            return _dead_letter(record, error, letter_key, received_at)
        reference = transaction.card_ref or transaction.customer_id
        key = None if reference is None else reference.encode()
        return Captured(key, msgspec.json.encode(transaction))


def _dead_letter(
    record: dict[str, object],
    error: InvalidTransaction,
    key: tuple[str, int, int],
    received_at: datetime,
) -> DeadLetter:
    source, index, lsn = key
    return DeadLetter(
        topic=source,
        partition=index,
        offset=lsn,
        raw=_ENCODER.encode(masked(record)),
        error=error.reason,
        field=error.field,
        received_at=received_at,
    )


def masked(record: dict[str, object]) -> dict[str, object]:
    """`record` with every value that looks like a full card number cut to its last four."""
    return {field: _masked(value) for field, value in record.items()}


def _masked(value: object) -> object:
    text = value if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    if text is None or not looks_like_card_number(text):
        return value
    digits = "".join(char for char in text if char.isdigit())
    return "*" * (len(digits) - 4) + digits[-4:]
