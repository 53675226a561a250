"""The Spark runner's stateful step: the whole stream's feature state in Spark's keyed state.

Why one key and not one per card: features are not per card alone. Merchant and terminal
windows count every card's payments, a customer may hold cards on several partitions, and the
lateness watermark is the stream's. The Kafka worker gets these right by folding the whole
stream in one event-time order (`stream_state.py`); here the same fold is one group of
`applyInPandasWithState`, whose state (the `FeatureState` tables, the event-time aligner's held
messages, the next offset of each partition) Spark checkpoints with the query's offsets. A
micro-batch Spark replays after a crash therefore starts from exactly the state its first run
started from and gives the same decisions. Features, rules, models and the decision are the
core's, through `scoring_step.score_arrivals`, the function the worker calls. Per-entity expiry
is the core's own TTL (`FeatureConfig.ttl_us`, by event time), which is what keeps this state
bounded.

The order is the worker's: messages are held per partition and released oldest event first,
only up to what no partition can undercut (`alignment.py`). A partition the source marks as at
the end of its log (`end_of_log`) holds nothing back, so a backlog read with
`trigger(availableNow=True)` is released in full by its last micro-batch, and a live tail as
each micro-batch reaches the end of the log. Spark's own `kafka` format cannot say where a log
ends: its micro-batches are released whole, in event-time order within each (a message older
than the allowed lateness behind one of an earlier micro-batch is then late).
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from fraudstream.config import Settings
from fraudstream.core.decision_record import (
    DECISION_HEADER,
    DECISION_TYPES,
    SIGNATURE_HEADER,
)
from fraudstream.core.decision_record import decision_key as api_decision_key
from fraudstream.core.engine import Engine
from fraudstream.core.events import TRANSACTION_SCHEMA
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.ports import POSITION_COLUMNS, DeadLetter, ScoredBatch
from fraudstream.runners.alignment import Arrival, EventTimeAligner
from fraudstream.runners.scoring_step import decode_arrival, score_arrivals

log = logging.getLogger("fraudstream.spark")

STATE_SCHEMA = "fold binary"
INPUT_COLUMNS = (
    "fold", "partition", "offset", "timestamp_ms", "value", "end_of_log", "decision",
    "decision_mac",
)  # fmt: skip
"""What the scoring step reads from the source frame (`spark_job.source_frame` selects it;
`decision` and `decision_mac` are the scoring API's signed decision headers, or null)."""
DECISION, DEAD_LETTER = "decision", "dead_letter"
SCORED_SCHEMA: dict[str, pl.DataType] = {
    **TRANSACTION_SCHEMA,
    **{k: v for k, v in POSITION_COLUMNS.items() if k != "decided_at"},
    **DECISION_TYPES,
    "decided_at": POSITION_COLUMNS["decided_at"],
}
"""A scored transaction's columns as the worker hands them to the sinks (`ScoredBatch.frame`)."""
OUTPUT_SCHEMA: dict[str, pl.DataType] = {
    "kind": pl.String(),
    **SCORED_SCHEMA,
    "dead_letter_raw": pl.Binary(),
    "dead_letter_error": pl.String(),
    "dead_letter_field": pl.String(),
}
"""One row per scored transaction (`kind` decision) or dead letter (`kind` dead_letter, with
the source position in `kafka_partition` / `kafka_offset` and the broker time in
`ingested_at`)."""
_MAX_BATCH = 5000
_CONCAT_WARNING = "The behavior of DataFrame concatenation with empty or all-NA entries"


@dataclass(frozen=True, slots=True)
class LogRow:
    """One message as Spark read it, seen the way the shared scoring step sees a Kafka one."""

    topic_name: str
    partition_no: int
    offset_no: int
    raw: bytes | None
    millis: int
    decision: bytes | None = None
    decision_mac: bytes | None = None

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        """The scoring API's decision headers, when the message has them."""
        if self.decision is None or self.decision_mac is None:
            return None
        return [(DECISION_HEADER, self.decision), (SIGNATURE_HEADER, self.decision_mac)]

    def topic(self) -> str:
        return self.topic_name

    def partition(self) -> int:
        return self.partition_no

    def offset(self) -> int:
        return self.offset_no

    def value(self) -> bytes | None:
        return self.raw

    def timestamp(self) -> tuple[int, int]:
        return (1, self.millis)


class StreamFold:
    """Feature state, held messages and read positions: what Spark keeps between batches."""

    def __init__(
        self, config: FeatureConfig, topic: str, decision_key: bytes | None = None
    ) -> None:
        self.config = config
        self.topic = topic
        self.decision_key = decision_key
        """Verifies the decisions the scoring API signed (those messages keep them)."""
        self.features = FeatureState(config)
        self.aligner = EventTimeAligner(max_buffered=1 << 62)
        self.next_offsets: dict[int, int] = {}

    def add(self, rows: pd.DataFrame) -> None:
        """Messages of one micro-batch, in offset order per partition; a message at or below
        a partition's last folded offset (a source that read it twice) is skipped."""
        rows = rows.sort_values(["partition", "offset"], kind="stable")
        ends: dict[int, bool] = {}
        columns = INPUT_COLUMNS[1:]
        for p, o, millis, value, at_end, decision, mac in zip(
            *(rows[c].tolist() for c in columns), strict=True
        ):
            if o < self.next_offsets.get(p, 0):
                continue
            self.next_offsets[p] = o + 1
            key = (self.topic, p)
            row = LogRow(self.topic, p, o, _bytes(value), int(millis), _bytes(decision),
                         _bytes(mac))  # fmt: skip
            frontier = self.aligner.frontier(key)
            self.aligner.add(key, decode_arrival(row, frontier, 0.0, self.decision_key))
            ends[p] = True if at_end is None or pd.isna(at_end) else bool(at_end)
        for p, at_end in ends.items():
            self.aligner.reached_end((self.topic, p), at_end)

    def release(self) -> list[Arrival]:
        """Everything that may go now, in event-time order."""
        released: list[Arrival] = []
        while True:
            more = self.aligner.release(1 << 62, now_s=0.0)
            if not more:
                return released
            released += more

    def dump(self) -> bytes:
        """The fold as one `np.savez` blob (plain arrays: loading it unpickles nothing)."""
        arrays: dict[str, np.ndarray] = {
            f"f/{name}": array for name, array in self.features.snapshot().items()
        }
        saved = self.aligner.saved()
        arrays["a/partition"] = np.array([k[1] for k, *_ in saved], dtype=np.int64)
        arrays["a/frontier"] = np.array([f for _, f, _, _ in saved], dtype=np.int64)
        arrays["a/at_end"] = np.array([e for _, _, e, _ in saved], dtype=np.bool_)
        held = [(k[1], a) for k, _, _, queue in saved for a in queue]
        arrays["h/partition"] = np.array([p for p, _ in held], dtype=np.int64)
        arrays["h/offset"] = np.array([a.message.offset() or 0 for _, a in held], np.int64)
        arrays["h/event_us"] = np.array([a.event_us for _, a in held], dtype=np.int64)
        arrays["h/millis"] = np.array([a.message.timestamp()[1] for _, a in held], np.int64)
        messages = [a.message for _, a in held]
        _pack(arrays, "h", [m.value() for m in messages])
        _pack(arrays, "h/decision", [getattr(m, "decision", None) for m in messages])
        _pack(arrays, "h/decision_mac", [getattr(m, "decision_mac", None) for m in messages])
        arrays["n/partition"] = np.array(list(self.next_offsets), dtype=np.int64)
        arrays["n/offset"] = np.array(list(self.next_offsets.values()), dtype=np.int64)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def load(
        cls,
        config: FeatureConfig,
        topic: str,
        blob: bytes | None,
        decision_key: bytes | None = None,
    ) -> StreamFold:
        fold = cls(config, topic, decision_key)
        if blob is None:
            return fold
        with np.load(io.BytesIO(blob), allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
        fold.features = FeatureState.restore(
            config, {k[2:]: v for k, v in arrays.items() if k.startswith("f/")}
        )
        fold.next_offsets = dict(
            zip(arrays["n/partition"].tolist(), arrays["n/offset"].tolist(), strict=True)
        )
        held = _held_arrivals(topic, arrays, decision_key)
        for p, frontier, at_end in zip(
            arrays["a/partition"].tolist(), arrays["a/frontier"].tolist(),
            arrays["a/at_end"].tolist(), strict=True,
        ):  # fmt: skip
            fold.aligner.restore((topic, p), frontier, at_end, held.get(p, []))
        return fold


def _held_arrivals(
    topic: str, arrays: dict[str, np.ndarray], decision_key: bytes | None
) -> dict[int, list[Arrival]]:
    """The held messages, decoded again, each keeping the event time it was held under."""
    held: dict[int, list[Arrival]] = {}
    values = _unpack(arrays, "h")
    count = len(values)
    decisions = _unpack(arrays, "h/decision") or [None] * count  # a fold saved by an older version
    macs = _unpack(arrays, "h/decision_mac") or [None] * count
    for p, offset, event_us, millis, raw, decision, mac in zip(
        arrays["h/partition"].tolist(), arrays["h/offset"].tolist(),
        arrays["h/event_us"].tolist(), arrays["h/millis"].tolist(), values, decisions, macs,
        strict=True,
    ):  # fmt: skip
        # A decoded message takes its own event time again; a rejected one the saved one.
        row = LogRow(topic, p, offset, raw, millis, decision, mac)
        held.setdefault(p, []).append(decode_arrival(row, event_us, 0.0, decision_key))
    return held


def _pack(arrays: dict[str, np.ndarray], prefix: str, values: list[bytes | None]) -> None:
    """Byte strings (or None) as two plain arrays: lengths (-1: None) and the bytes."""
    arrays[f"{prefix}/length"] = np.array([-1 if v is None else len(v) for v in values], np.int64)
    arrays[f"{prefix}/bytes"] = np.frombuffer(b"".join(v or b"" for v in values), dtype=np.uint8)


def _unpack(arrays: dict[str, np.ndarray], prefix: str) -> list[bytes | None]:
    if f"{prefix}/length" not in arrays:
        return []
    data = arrays[f"{prefix}/bytes"].tobytes()
    found: list[bytes | None] = []
    start = 0
    for length in arrays[f"{prefix}/length"].tolist():
        found.append(None if length < 0 else data[start : start + length])
        start += max(length, 0)
    return found


def _bytes(value: Any) -> bytes | None:
    """A binary cell as Spark's pandas frames hold it (bytes, bytearray, None or NaN)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return bytes(value)


def output_frame(batch: ScoredBatch) -> pd.DataFrame:
    """A scored batch as the rows `OUTPUT_SCHEMA` describes."""
    decisions = batch.frame.select(list(SCORED_SCHEMA)).with_columns(pl.lit(DECISION).alias("kind"))
    dead = batch.dead_letters
    columns = {
        "kind": [DEAD_LETTER] * len(dead),
        "kafka_partition": [d.partition for d in dead],
        "kafka_offset": [d.offset for d in dead],
        "ingested_at": [d.received_at for d in dead],
        "dead_letter_raw": [d.raw for d in dead],
        "dead_letter_error": [d.error for d in dead],
        "dead_letter_field": [d.field for d in dead],
    }
    letters = pl.DataFrame(columns, schema={name: OUTPUT_SCHEMA[name] for name in columns})
    both = pl.concat([decisions, letters], how="diagonal_relaxed")
    return both.select(list(OUTPUT_SCHEMA)).to_pandas(use_pyarrow_extension_array=False)


def scored_batch(frame: pl.DataFrame, topic: str) -> ScoredBatch:
    """The rows the scoring step gave (as Spark hands them back) as the sinks' `ScoredBatch`."""
    frame = frame.cast({k: v for k, v in OUTPUT_SCHEMA.items() if k in frame.columns})
    kinds = frame.get_column("kind")
    letters = frame.filter(kinds == DEAD_LETTER)
    return ScoredBatch(
        frame.filter(kinds == DECISION).select(list(SCORED_SCHEMA)),
        tuple(
            DeadLetter(
                topic=topic,
                partition=row["kafka_partition"],
                offset=row["kafka_offset"],
                raw=row["dead_letter_raw"] or b"",
                error=row["dead_letter_error"],
                field=row["dead_letter_field"],
                received_at=row["ingested_at"],
            )
            for row in letters.iter_rows(named=True)
        ),
    )


_ENGINES: dict[str, Callable[[], Engine]] = {}


def _engine(settings: Settings, config: FeatureConfig) -> Engine:
    """The current engine of this Python worker process (rules hot-reloaded, models from the
    registry), made once per process and settings."""
    from fraudstream.runners.serve import engine_source  # noqa: PLC0415 - Spark workers only

    key = settings.model_dump_json()
    if key not in _ENGINES:
        _ENGINES[key] = engine_source(settings, config)
    return _ENGINES[key]()


def _decision_key(settings: Settings) -> bytes:
    """The key the scoring API signs its decisions with (the deployment's signing key's)."""
    from fraudstream.runners.serve import model_signing_key  # noqa: PLC0415 - Spark workers only

    return api_decision_key(model_signing_key(settings))


ScoreFunction = Callable[[Any, Iterator[pd.DataFrame], Any], Iterator[pd.DataFrame]]


def score_stream(topic: str, settings: Settings) -> ScoreFunction:
    """The function `applyInPandasWithState` calls with the stream's one group (no timeout:
    a timeout changes the state's schema and keeps a run-to-the-end query from ending)."""

    def score(key: Any, frames: Iterator[pd.DataFrame], state: Any) -> Iterator[pd.DataFrame]:
        # PySpark's worker concatenates our frames, whose dead-letter columns are mostly null:
        # pandas 2 warns about a future change that does not touch typed Arrow output.
        warnings.filterwarnings("ignore", _CONCAT_WARNING, FutureWarning)
        config = FeatureConfig()
        saved = state.get[0] if state.exists else None
        fold = StreamFold.load(config, topic, saved, _decision_key(settings))
        for frame in frames:
            fold.add(frame)
        released = fold.release()
        engine = _engine(settings, config) if released else None
        for start in range(0, len(released), _MAX_BATCH):
            chunk = released[start : start + _MAX_BATCH]
            assert engine is not None
            yield output_frame(score_arrivals(engine, fold.features, chunk, [True] * len(chunk)))
        state.update((fold.dump(),))

    return score
