"""The `pgoutput` logical replication protocol, version 1: message bytes in, plain records out.

PostgreSQL's built-in output plugin sends one message per XLogData payload: `R`elation (a
table's columns, sent before the first change to it in a session and again after it changes),
`Y` (a non-built-in type), `B`egin / `C`ommit around each committed transaction, `O`rigin,
`I`nsert / `U`pdate / `D`elete with their tuples, `T`runcate, and `M` (a logical message from
`pg_logical_emit_message`, only when the `messages` option asks for them). The layout of each
is in the PostgreSQL manual, "Logical Replication Message Formats"; all integers are
big-endian, strings are NUL-terminated, LSNs are 64-bit and times are microseconds since
2000-01-01 UTC.

A tuple is a count of columns, then per column `n` (null), `u` (an unchanged TOASTed value the
server did not send), `t` (text: a 32-bit length and the value as its type's output function
writes it) or `b` (binary, only with the `binary` option); `pg_values` types the text by the
column's type OID.

Nothing here does I/O: `parse_message(payload)` is a pure function, tested from bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from fraudstream.core.errors import FraudstreamError

_EPOCH_2000: Final = datetime(2000, 1, 1, tzinfo=UTC)


class ProtocolError(FraudstreamError):
    """Bytes that are not a well-formed pgoutput message (truncated, unknown tuple kind)."""


class Unchanged:
    """An unchanged TOASTed column of an update: the server did not send its value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged()

Value = str | bytes | Unchanged | None
"""A column of a tuple: text, binary, unchanged (not sent) or null."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str
    """`d` default (primary key), `n` nothing, `f` full row, `i` an index."""
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    """The LSN of the transaction's commit record (equals `Commit.commit_lsn`)."""
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    """The end of the commit record: what a client acknowledges once it has the transaction
    (a restart from it skips this transaction; one from `commit_lsn` would send it again)."""
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    new: tuple[Value, ...]
    old: tuple[Value, ...] | None
    """The old key (`old_kind` `K`) or whole old row (`O`, replica identity full), if sent."""
    old_kind: str | None


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old: tuple[Value, ...]
    old_kind: str


@dataclass(frozen=True, slots=True)
class Truncate:
    options: int
    """Bit 1: CASCADE, bit 2: RESTART IDENTITY."""
    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A message type protocol version 1 does not define; kept so a reader can skip it."""

    tag: str
    payload: bytes


Message = (
    Relation | Begin | Commit | Origin | TypeInfo | Insert | Update | Delete | Truncate
    | LogicalMessage | UnknownMessage
)  # fmt: skip


_INT16: Final = struct.Struct(">h")
_INT32: Final = struct.Struct(">i")
_NULL, _UNCHANGED_TOAST, _TEXT, _BINARY = b"nutb"


class _Reader:
    """A cursor over one message's bytes; every read checks that the bytes are there."""

    __slots__ = ("data", "position")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def _take(self, size: int) -> int:
        start = self.position
        if start + size > len(self.data):
            raise ProtocolError(
                f"message {self.data[:1]!r} truncated: wanted {size} bytes at {start}, "
                f"{len(self.data)} in all"
            )
        self.position = start + size
        return start

    def int8(self) -> int:
        return self.data[self._take(1)]

    def int16(self) -> int:
        value: int = struct.unpack_from(">h", self.data, self._take(2))[0]
        return value

    def int32(self) -> int:
        value: int = struct.unpack_from(">i", self.data, self._take(4))[0]
        return value

    def uint32(self) -> int:
        value: int = struct.unpack_from(">I", self.data, self._take(4))[0]
        return value

    def int64(self) -> int:
        value: int = struct.unpack_from(">q", self.data, self._take(8))[0]
        return value

    def char(self) -> str:
        return chr(self.int8())

    def raw(self, size: int) -> bytes:
        start = self._take(size)
        return self.data[start : start + size]

    def string(self) -> str:
        end = self.data.find(b"\x00", self.position)
        if end < 0:
            raise ProtocolError(f"message {self.data[:1]!r}: string without its NUL")
        text = self.data[self.position : end].decode("utf-8", errors="replace")
        self.position = end + 1
        return text

    def timestamp(self) -> datetime:
        return _EPOCH_2000 + timedelta(microseconds=self.int64())

    def tuple_data(self) -> tuple[Value, ...]:
        """TupleData, read in one tight loop: it is most of the bytes of a stream."""
        data = self.data
        end = len(data)
        start = self._take(2)
        position = start + 2
        values: list[Value] = []
        append = values.append
        for _ in range(_INT16.unpack_from(data, start)[0]):
            if position >= end:
                raise ProtocolError(f"message {data[:1]!r} truncated in a tuple")
            kind = data[position]
            position += 1
            if kind == _NULL:
                append(None)
            elif kind == _UNCHANGED_TOAST:
                append(UNCHANGED)
            elif kind in (_TEXT, _BINARY):
                if position + 4 > end:
                    raise ProtocolError(f"message {data[:1]!r} truncated in a tuple")
                length = _INT32.unpack_from(data, position)[0]
                stop = position + 4 + length
                if length < 0 or stop > end:
                    raise ProtocolError(f"message {data[:1]!r}: a tuple value of {length} bytes")
                value = data[position + 4 : stop]
                append(value.decode("utf-8", errors="replace") if kind == _TEXT else value)
                position = stop
            else:
                raise ProtocolError(f"unknown tuple column kind {chr(kind)!r}")
        self.position = position
        return tuple(values)


def parse_message(payload: bytes) -> Message:
    """One pgoutput message (protocol version 1) from its bytes; `ProtocolError` if malformed."""
    if not payload:
        raise ProtocolError("empty message")
    reader = _Reader(payload)
    tag = reader.char()
    parser = _PARSERS.get(tag)
    if parser is None:
        return UnknownMessage(tag, payload)
    return parser(reader)


def _begin(reader: _Reader) -> Begin:
    return Begin(final_lsn=reader.int64(), commit_time=reader.timestamp(), xid=reader.uint32())


def _commit(reader: _Reader) -> Commit:
    return Commit(
        flags=reader.int8(),
        commit_lsn=reader.int64(),
        end_lsn=reader.int64(),
        commit_time=reader.timestamp(),
    )


def _origin(reader: _Reader) -> Origin:
    return Origin(commit_lsn=reader.int64(), name=reader.string())


def _relation(reader: _Reader) -> Relation:
    oid, namespace, name = reader.uint32(), reader.string(), reader.string()
    identity = reader.char()
    columns = []
    for _ in range(reader.int16()):
        flags = reader.int8()
        columns.append(
            Column(
                name=reader.string(),
                type_oid=reader.uint32(),
                type_modifier=reader.int32(),
                is_key=bool(flags & 1),
            )
        )
    return Relation(oid, namespace, name, identity, tuple(columns))


def _type(reader: _Reader) -> TypeInfo:
    return TypeInfo(oid=reader.uint32(), namespace=reader.string(), name=reader.string())


def _insert(reader: _Reader) -> Insert:
    oid = reader.uint32()
    _expect(reader, "N", "insert")
    return Insert(oid, reader.tuple_data())


def _update(reader: _Reader) -> Update:
    oid = reader.uint32()
    kind = reader.char()
    old: tuple[Value, ...] | None = None
    old_kind: str | None = None
    if kind in ("K", "O"):
        old, old_kind = reader.tuple_data(), kind
        kind = reader.char()
    if kind != "N":
        raise ProtocolError(f"update: expected the new tuple (N), found {kind!r}")
    return Update(oid, reader.tuple_data(), old, old_kind)


def _delete(reader: _Reader) -> Delete:
    oid = reader.uint32()
    kind = reader.char()
    if kind not in ("K", "O"):
        raise ProtocolError(f"delete: expected the old key (K) or row (O), found {kind!r}")
    return Delete(oid, reader.tuple_data(), kind)


def _truncate(reader: _Reader) -> Truncate:
    count = reader.int32()
    options = reader.int8()
    return Truncate(options, tuple(reader.uint32() for _ in range(count)))


def _message(reader: _Reader) -> LogicalMessage:
    flags = reader.int8()
    lsn, prefix = reader.int64(), reader.string()
    return LogicalMessage(bool(flags & 1), lsn, prefix, reader.raw(reader.int32()))


def _expect(reader: _Reader, wanted: str, what: str) -> None:
    found = reader.char()
    if found != wanted:
        raise ProtocolError(f"{what}: expected {wanted!r}, found {found!r}")


_PARSERS: Final[dict[str, Callable[[_Reader], Message]]] = {
    "B": _begin, "C": _commit, "O": _origin, "R": _relation, "Y": _type, "I": _insert,
    "U": _update, "D": _delete, "T": _truncate, "M": _message,
}  # fmt: skip
