"""Compiled rules as bytecode, and one compiled kernel that runs every rule on every row.

A rule in the compiled subset (see `vector.py`) becomes a short postfix program over a small
stack of (value, known) pairs: values are float64 (Booleans as 0/1), `known` is False for
null. Running all rules of a batch in one compiled loop costs a few nanoseconds per
instruction and row, where a NumPy call per operator cost microseconds each however small
the batch, so a batch of one and a batch of ten thousand take the same path.

Semantics are Polars': three-valued logic (FALSE AND null = FALSE, TRUE OR null = TRUE, a
rule whose answer is null has not fired), and NaN (made only by arithmetic: inputs carry
null as NaN and are read as unknown) is a value that sorts above every number and equals
itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numba
import numpy as np
import numpy.typing as npt

from fraudstream.core.rules.evaluation import Bools, ColumnSource, Floats

# Opcodes. Each instruction is (opcode, argument); the argument is an input row, a constant
# index or an operand count, and 0 where the opcode takes none.
LOAD, LOAD_BOOL, CONST = 0, 1, 2  # push one
ADD, SUB, MUL, DIV = 10, 11, 12, 13  # pop two, push one
GT, GE, LT, LE, EQ, NE = 20, 21, 22, 23, 24, 25
AND, OR = 30, 31
ABS, NOT, IS_NULL, IS_NOT_NULL = 40, 41, 42, 43  # replace the top
COALESCE = 50  # pop `argument`, push one

MAX_STACK: Final = 64
"""Deeper expressions are left to Polars (no hand-written rule comes close)."""

InputKind = Literal["number", "bool", "text"]


@dataclass(frozen=True, slots=True)
class Input:
    """A column a program reads: a number, a Boolean, or `column = literal` for a string."""

    kind: InputKind
    column: str
    literal: str = ""


@dataclass(frozen=True, slots=True)
class RuleProgram:
    """One rule as bytecode: instructions over its own inputs and constants."""

    code: tuple[tuple[int, int], ...]
    inputs: tuple[Input, ...]
    constants: tuple[float, ...]
    depth: int
    """The stack depth the code needs."""


class ProgramSet:
    """Several rule programs linked into one kernel call: shared inputs are read once."""

    def __init__(self, programs: Sequence[RuleProgram]) -> None:
        inputs: dict[Input, int] = {}
        constants: list[float] = []
        code: list[tuple[int, int]] = []
        starts = [0]
        for program in programs:
            for op, local in program.code:
                linked = local
                if op in (LOAD, LOAD_BOOL):
                    linked = inputs.setdefault(program.inputs[local], len(inputs))
                elif op == CONST:
                    constants.append(program.constants[local])
                    linked = len(constants) - 1
                code.append((op, linked))
            starts.append(len(code))
        self.inputs: tuple[Input, ...] = tuple(inputs)
        self.users: list[list[int]] = [
            [j for j, program in enumerate(programs) if spec in program.inputs]
            for spec in self.inputs
        ]
        """Per input, the programs that read it (they fail together when it cannot be read)."""
        self._code = np.array(code, dtype=np.int64).reshape(-1, 2)
        self._constants = np.array(constants, dtype=np.float64)
        self._starts = np.array(starts, dtype=np.int64)
        self._depth = max((program.depth for program in programs), default=1)

    def __len__(self) -> int:
        return int(self._starts.shape[0]) - 1

    def run(self, source: ColumnSource, rows: int) -> tuple[Bools, dict[int, str]]:
        """Hits as a (rows, programs) matrix, and the programs whose inputs failed to read
        (with the reason; their column stays all False)."""
        matrix = np.empty((len(self.inputs), rows), dtype=np.float64)
        failed: dict[int, str] = {}
        for i, spec in enumerate(self.inputs):
            try:
                matrix[i] = _read(source, spec)
            except Exception as error:  # one unreadable column must not stop the batch
                matrix[i] = np.nan
                for j in self.users[i]:
                    failed.setdefault(j, f"{type(error).__name__}: {error}")
        hits = np.zeros((rows, len(self)), dtype=np.bool_)
        if rows and len(self):
            run_programs(self._code, self._constants, self._starts, matrix, self._depth, hits)
        for j in failed:
            hits[:, j] = False
        return hits, failed


def _read(source: ColumnSource, spec: Input) -> Floats:
    """An input as float64 with NaN for null (text: 1.0 where equal to the literal)."""
    if spec.kind == "text":
        hit, known = source.equals(spec.column, spec.literal)
        return np.where(known, hit.astype(np.float64), np.nan)
    return source.number(spec.column)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def run_programs(
    code: npt.NDArray[np.int64],
    constants: npt.NDArray[np.float64],
    starts: npt.NDArray[np.int64],
    inputs: npt.NDArray[np.float64],
    depth: int,
    hits: npt.NDArray[np.bool_],
) -> None:
    """hits[i, j] = program j is TRUE (not FALSE, not null) on row i; `depth` is the deepest
    stack any program needs.

    Each instruction runs over every row before the next one (a stack of columns): the
    dispatch is paid once per instruction, not once per instruction and row.
    """
    n = inputs.shape[1]
    values = np.empty((depth, n), np.float64)
    known = np.empty((depth, n), np.bool_)
    for j in range(starts.shape[0] - 1):
        top = -1
        for pc in range(starts[j], starts[j + 1]):
            op, arg = code[pc, 0], code[pc, 1]
            if op <= CONST:
                top += 1
                _push(op, arg, constants, inputs, values[top], known[top])
            elif op == COALESCE:
                top -= arg - 1
                for k in range(1, arg):
                    _fill_unknown(values[top], known[top], values[top + k], known[top + k])
            elif op >= ABS:
                _unary(op, values[top], known[top])
            else:
                top -= 1
                _binary(op, values[top], known[top], values[top + 1], known[top + 1])
        for i in range(n):
            hits[i, j] = known[top, i] and values[top, i] != 0.0


@numba.njit(cache=True, nogil=True, inline="always")
def _push(
    op: int,
    arg: int,
    constants: npt.NDArray[np.float64],
    inputs: npt.NDArray[np.float64],
    values: npt.NDArray[np.float64],
    known: npt.NDArray[np.bool_],
) -> None:
    if op == CONST:
        values[:] = constants[arg]
        known[:] = True
        return
    row = inputs[arg]
    for i in range(row.shape[0]):
        x = row[i]
        known[i] = not np.isnan(x)
        values[i] = (1.0 if x != 0.0 else 0.0) if op == LOAD_BOOL else x


@numba.njit(cache=True, nogil=True, inline="always")
def _fill_unknown(
    values: npt.NDArray[np.float64],
    known: npt.NDArray[np.bool_],
    other: npt.NDArray[np.float64],
    other_known: npt.NDArray[np.bool_],
) -> None:
    """COALESCE: where the first operand is null, take the next one."""
    for i in range(values.shape[0]):
        if not known[i]:
            values[i], known[i] = other[i], other_known[i]


@numba.njit(cache=True, nogil=True, inline="always")
def _unary(op: int, values: npt.NDArray[np.float64], known: npt.NDArray[np.bool_]) -> None:
    for i in range(values.shape[0]):
        if op == ABS:
            values[i] = abs(values[i])
        elif op == NOT:
            values[i] = 0.0 if values[i] != 0.0 else 1.0
        else:  # IS_NULL / IS_NOT_NULL
            values[i] = 1.0 if known[i] == (op == IS_NOT_NULL) else 0.0
            known[i] = True


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _binary(
    op: int,
    a: npt.NDArray[np.float64],
    a_known: npt.NDArray[np.bool_],
    b: npt.NDArray[np.float64],
    b_known: npt.NDArray[np.bool_],
) -> None:
    """a = a op b, in place; one loop per operator so that each loop is branch-free."""
    n = a.shape[0]
    if op == AND:
        for i in range(n):
            a_true, b_true = a_known[i] and a[i] != 0.0, b_known[i] and b[i] != 0.0
            a_false, b_false = a_known[i] and a[i] == 0.0, b_known[i] and b[i] == 0.0
            a_known[i] = (a_known[i] and b_known[i]) or a_false or b_false
            a[i] = 1.0 if a_true and b_true else 0.0
    elif op == OR:
        for i in range(n):
            a_true, b_true = a_known[i] and a[i] != 0.0, b_known[i] and b[i] != 0.0
            a_known[i] = (a_known[i] and b_known[i]) or a_true or b_true
            a[i] = 1.0 if a_true or b_true else 0.0
    else:
        for i in range(n):
            a_known[i] = a_known[i] and b_known[i]
        if op == ADD:
            a += b
        elif op == SUB:
            a -= b
        elif op == MUL:
            a *= b
        elif op == DIV:
            a /= b
        else:
            _compare(op, a, b)


@numba.njit(cache=True, nogil=True, inline="always")
def _compare(op: int, a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> None:
    """a = 1.0 where `a op b` holds (NaN ordered as Polars orders it), else 0.0."""
    for i in range(a.shape[0]):
        x, y = a[i], b[i]
        if op == GT:
            hit = _greater(x, y)
        elif op == LT:
            hit = _greater(y, x)
        elif op == GE:
            hit = _greater(x, y) or _equal(x, y)
        elif op == LE:
            hit = _greater(y, x) or _equal(x, y)
        elif op == EQ:
            hit = _equal(x, y)
        else:
            hit = not _equal(x, y)
        a[i] = 1.0 if hit else 0.0


@numba.njit(cache=True, nogil=True, inline="always")
def _greater(a: float, b: float) -> bool:
    """a > b with NaN above every number, as Polars orders floats."""
    return a > b or (np.isnan(a) and not np.isnan(b))


@numba.njit(cache=True, nogil=True, inline="always")
def _equal(a: float, b: float) -> bool:
    """a == b with NaN equal to NaN, as Polars compares floats."""
    return a == b or (np.isnan(a) and np.isnan(b))
