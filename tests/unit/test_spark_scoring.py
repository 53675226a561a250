"""The Spark runner's pure parts, without Spark: the fold kept between micro-batches, the rows
it hands Spark and gets back, the source's offset planning and options."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from fraudstream.adapters.spark_kafka import (
    KafkaStreamReader,
    SourceOptionError,
    limited_ends,
)
from fraudstream.config import load_settings
from fraudstream.core.decision_record import DecisionRecord, encode, sign
from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.features import FeatureConfig
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.generator import GeneratorConfig, generate
from fraudstream.generator.output import encode_json_lines
from fraudstream.runners.scoring_step import score_arrivals
from fraudstream.runners.spark_job import source_options, spark_ddl
from fraudstream.runners.spark_scoring import (
    INPUT_COLUMNS,
    OUTPUT_SCHEMA,
    SCORED_SCHEMA,
    StreamFold,
    output_frame,
    scored_batch,
)

TOPIC = "tx"
PARTITIONS = 3
COMPARED = ["transaction_id", "score", "action", "rules_fired", "reasons", "is_late"]


@pytest.fixture(scope="module")
def engine() -> Engine:
    rules = parse_ruleset(load_default_ruleset_text())
    return Engine(compile_ruleset(rules, available_columns(FeatureConfig())))


@pytest.fixture(scope="module")
def log_rows() -> pd.DataFrame:
    """A generated stream spread over partitions by card, as the source would give it, with a
    malformed message in partition 1."""
    stream = generate(GeneratorConfig(seed=3, n_transactions=1_500, n_customers=120, days=1))
    values = encode_json_lines(stream.transactions)
    cards = stream.transactions.get_column("card_ref").to_list()
    partitions = [sum(card.encode()) % PARTITIONS for card in cards]
    partitions.insert(700, 1)
    values.insert(700, b'{"transaction_id": "broken"')
    offsets: dict[int, int] = {}
    rows = []
    for number, (partition, value) in enumerate(zip(partitions, values, strict=True)):
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        decision, mac = _signed(value, number)
        rows.append((0, partition, offset, 1_700_000_000_000 + number, value, False, decision, mac))
    return pd.DataFrame(rows, columns=list(INPUT_COLUMNS))


KEY = b"k" * 32
CARRIED = range(300, 900, 60)
"""Rows the scoring API decided (signed), among them the 2nd with a forged signature."""
FORGED = CARRIED[1]


def _signed(value: bytes, number: int) -> tuple[bytes | None, bytes | None]:
    """The scoring API's headers for row `number`, if it is one the API decided."""
    if number not in CARRIED:
        return None, None
    transaction_id = msgspec.json.decode(value)["transaction_id"]
    record = DecisionRecord(
        transaction_id=transaction_id, action="decline", score=99.0, rule_score=99.0,
        model_score=None, is_flagged=True, is_late=False, rules_fired=["api_only"],
        reasons=["api_only: decided at the API"], ruleset_version="api-1", model_version=None,
        shadow_score=None, shadow_model_version=None, shadow_rules_fired=["api_shadow"],
        decided_at=datetime(2026, 11, 24, tzinfo=UTC),
    )  # fmt: skip
    raw = encode(record)
    mac = sign(KEY, value, raw)
    return raw, (b"forged" + mac[6:] if number == FORGED else mac)


def _fold_in_parts(engine: Engine, rows: pd.DataFrame, cuts: list[int]) -> pl.DataFrame:
    """Score `rows` cut into micro-batches at `cuts` (per-partition offset prefixes), the fold
    dumped and loaded between them as Spark keeps it; the last one reaches every log's end."""
    blob = None
    scored = []
    bounds = [*cuts, len(rows)]
    for number, stop in enumerate(bounds):
        start = 0 if number == 0 else bounds[number - 1]
        part = rows.iloc[start:stop].copy()
        part["end_of_log"] = number == len(bounds) - 1
        fold = StreamFold.load(FeatureConfig(), TOPIC, blob, KEY)
        fold.add(part)
        released = fold.release()
        if released:
            batch = score_arrivals(engine, fold.features, released, [True] * len(released))
            scored.append(batch)
        blob = fold.dump()
    frames = [batch.frame for batch in scored]
    letters = [letter for batch in scored for letter in batch.dead_letters]
    assert len(letters) == 1 and letters[0].partition == 1
    return pl.concat(frames).select(COMPARED).sort("transaction_id")


def test_a_fold_saved_between_micro_batches_scores_as_one_pass(
    engine: Engine, log_rows: pd.DataFrame
) -> None:
    whole = _fold_in_parts(engine, log_rows, [])
    assert whole.height == 1_500
    assert whole.get_column("score").sum() > 0
    in_parts = _fold_in_parts(engine, log_rows, [200, 650, 701, 1_200])
    assert in_parts.equals(whole)


def test_decisions_the_api_signed_are_kept_and_forged_ones_rescored(
    engine: Engine, log_rows: pd.DataFrame
) -> None:
    """Cut so that carried messages are held in the saved fold between micro-batches."""
    scored = _fold_in_parts(engine, log_rows, [301, 361, 421, 701, 841])
    ids = {int(n): msgspec.json.decode(log_rows.iloc[n]["value"])["transaction_id"]
           for n in CARRIED}  # fmt: skip
    by_id = {row["transaction_id"]: row for row in scored.iter_rows(named=True)}
    for number, transaction_id in ids.items():
        row = by_id[transaction_id]
        if number == FORGED:
            assert row["rules_fired"] != ["api_only"], "a forged signature decides nothing"
        else:
            assert (row["action"], row["score"], row["rules_fired"]) == (
                "decline",
                99.0,
                ["api_only"],
            ), number
    assert scored.get_column("rules_fired").to_list().count(["api_only"]) == len(ids) - 1


def test_messages_a_partition_has_not_caught_up_with_are_held(log_rows: pd.DataFrame) -> None:
    fold = StreamFold(FeatureConfig(), TOPIC)
    first = log_rows[log_rows["partition"] == 0].head(50)
    other = log_rows[log_rows["partition"] == 1].head(5)
    fold.add(pd.concat([first, other]))
    released = fold.release()
    newest_of_slower = max(a.event_us for a in released if a.message.partition() == 1)
    assert all(a.event_us <= newest_of_slower for a in released)
    assert fold.aligner.buffered == 55 - len(released) > 0
    reloaded = StreamFold.load(FeatureConfig(), TOPIC, fold.dump())
    assert reloaded.aligner.buffered == fold.aligner.buffered
    assert reloaded.next_offsets == {0: 50, 1: 5}


def test_a_message_read_twice_is_folded_once(log_rows: pd.DataFrame) -> None:
    fold = StreamFold(FeatureConfig(), TOPIC)
    rows = log_rows.head(40).assign(end_of_log=True)
    fold.add(rows)
    first = len(fold.release())
    fold.add(rows)
    assert first == 40
    assert fold.release() == []


def test_scored_rows_survive_the_trip_through_spark_types(
    engine: Engine, log_rows: pd.DataFrame
) -> None:
    fold = StreamFold(FeatureConfig(), TOPIC)
    fold.add(log_rows.head(800).assign(end_of_log=True))
    released = fold.release()
    batch = score_arrivals(engine, fold.features, released, [True] * len(released))
    assert batch.dead_letters, "the malformed message is in this part"
    table = pa.Table.from_pandas(output_frame(batch), preserve_index=False)
    back = pl.from_arrow(table)
    assert isinstance(back, pl.DataFrame)
    again = scored_batch(back, TOPIC)
    assert again.frame.schema == pl.Schema(SCORED_SCHEMA)
    assert again.frame.equals(batch.frame.select(list(SCORED_SCHEMA)))
    assert again.dead_letters == batch.dead_letters


def test_the_output_schema_in_spark_terms() -> None:
    ddl = spark_ddl(OUTPUT_SCHEMA)
    assert "`rules_fired` array<string>" in ddl
    assert "`timestamp` timestamp" in ddl
    assert "`kafka_offset` bigint" in ddl
    assert ddl.count("`") == 2 * len(OUTPUT_SCHEMA)


def test_a_limit_is_shared_without_passing_a_partition_over() -> None:
    ranges = {0: (0, 9_000), 1: (100, 1_100), 2: (5, 6), 3: (7, 7)}
    assert limited_ends(ranges, None) == {0: 9_000, 1: 1_100, 2: 6, 3: 7}
    ends = limited_ends(ranges, 1_000)
    assert ends == {0: 899, 1: 199, 2: 6, 3: 7}, "in proportion, the one waiting gets one"
    assert sum(ends[p] - start for p, (start, _) in ranges.items()) <= 1_000
    assert limited_ends(ranges, 100_000) == {0: 9_000, 1: 1_100, 2: 6, 3: 7}


def test_source_options_are_checked() -> None:
    with pytest.raises(SourceOptionError, match=r"kafka\.bootstrap\.servers"):
        KafkaStreamReader({"subscribe": "tx"})
    with pytest.raises(SourceOptionError, match="exactly one topic"):
        KafkaStreamReader({"kafka.bootstrap.servers": "h:9092", "subscribe": "a,b"})
    with pytest.raises(SourceOptionError, match="startingOffsets"):
        KafkaStreamReader(
            {"kafka.bootstrap.servers": "h:9092", "subscribe": "a", "startingOffsets": "x"}
        )


def test_the_builtin_format_gets_the_java_clients_sasl_settings() -> None:
    settings = load_settings(
        kafka={
            "bootstrap_servers": "broker:9092",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "key",
            "sasl_password": "secret",
        },
        spark={"source": "kafka", "max_offsets_per_trigger": 10},
    )
    options = source_options(settings)
    assert options["kafka.security.protocol"] == "SASL_SSL"
    assert "kafka.sasl.username" not in options
    assert options["kafka.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.plain.PlainLoginModule required"
        ' username="key" password="secret";'
    )
    assert options["maxOffsetsPerTrigger"] == "10"
    ours = source_options(settings.model_copy(update={"spark": settings.spark.model_copy(
        update={"source": "python"})}))  # fmt: skip
    assert ours["kafka.sasl.username"] == "key"
