"""Write a generated stream to files: JSONL for producers, Parquet for backtests, the labels.

JSONL lines carry the transaction fields only (labels never travel with a transaction), with
timestamps as RFC 3339 in UTC (`...Z`) and null fields left out, so every line decodes with
`fraudstream.core.events.decode_transaction`.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import polars as pl

from fraudstream.generator.simulate import GeneratedStream

_RFC3339: str = "%Y-%m-%dT%H:%M:%S%.6fZ"
_CHUNK = 50_000


def write_jsonl(stream: GeneratedStream, path: str | Path) -> Path:
    """One JSON object per transaction, in stream order."""
    target = _prepare(path)
    with target.open("wb") as out:
        for offset in range(0, stream.transactions.height, _CHUNK):
            lines = encode_json_lines(stream.transactions.slice(offset, _CHUNK))
            if lines:
                out.write(b"\n".join(lines) + b"\n")
    return target


def encode_json_lines(transactions: pl.DataFrame) -> list[bytes]:
    """Each row as the JSON a producer sends: transaction fields only, nulls left out."""
    encoder = msgspec.json.Encoder()
    frame = transactions.with_columns(pl.col("timestamp").dt.strftime(_RFC3339))
    return [
        encoder.encode({k: v for k, v in row.items() if v is not None})
        for row in frame.iter_rows(named=True)
    ]


def write_parquet(stream: GeneratedStream, path: str | Path) -> Path:
    """Transactions with their `is_fraud` and `scenario` columns, for backtests."""
    target = _prepare(path)
    _labelled(stream).write_parquet(target)
    return target


def write_labels(stream: GeneratedStream, path: str | Path) -> Path:
    """Ground truth by transaction id: `.csv` -> CSV, `.jsonl`/`.ndjson` -> JSONL, else Parquet."""
    target = _prepare(path)
    suffix = target.suffix.lower()
    if suffix == ".csv":
        stream.labels.write_csv(target)
    elif suffix in (".jsonl", ".ndjson"):
        stream.labels.write_ndjson(target)
    else:
        stream.labels.write_parquet(target)
    return target


def _labelled(stream: GeneratedStream) -> pl.DataFrame:
    tx_ids, label_ids = stream.transactions["transaction_id"], stream.labels["transaction_id"]
    if tx_ids.len() != label_ids.len() or not (tx_ids == label_ids).all():
        raise ValueError("labels are not aligned with transactions")
    return pl.concat([stream.transactions, stream.labels.drop("transaction_id")], how="horizontal")


def _prepare(path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target
