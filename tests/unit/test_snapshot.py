"""Feature-state snapshots (what checkpoints store) and scoring a subset of a batch."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest

from fraudstream.core.engine import Engine, available_columns
from fraudstream.core.errors import SnapshotError
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.rules import compile_ruleset, load_default_ruleset_text, parse_ruleset
from fraudstream.generator import GeneratorConfig, generate


@pytest.fixture(scope="module")
def stream() -> pl.DataFrame:
    return generate(GeneratorConfig(seed=7, n_transactions=6_000)).transactions


def _engine() -> Engine:
    spec = parse_ruleset(load_default_ruleset_text())
    return Engine(compile_ruleset(spec, available_columns(FeatureConfig())))


def _through_bytes(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a checkpoint store does: npz bytes out, arrays back, no pickle."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    with np.load(io.BytesIO(buffer.getvalue()), allow_pickle=False) as loaded:
        return {name: loaded[name] for name in loaded.files}


def test_a_restored_state_continues_exactly_where_the_saved_one_stopped(
    stream: pl.DataFrame,
) -> None:
    prefix, suffix = stream.head(4_000), stream.tail(2_000)
    live = FeatureState()
    live.update(prefix)
    restored = FeatureState.restore(FeatureConfig(), _through_bytes(live.snapshot()))
    assert restored.stats() == live.stats()
    assert restored.update(suffix).equals(live.update(suffix))
    assert restored.stats() == live.stats()


def test_a_snapshot_from_another_configuration_is_refused_by_name(stream: pl.DataFrame) -> None:
    state = FeatureState()
    state.update(stream.head(100))
    arrays = state.snapshot()
    other = FeatureConfig(allowed_lateness_us=FeatureConfig().allowed_lateness_us + 1)
    with pytest.raises(SnapshotError, match="params"):
        FeatureState.restore(other, arrays)
    del arrays["card.ints"]
    with pytest.raises(SnapshotError, match=r"card\.ints: missing"):
        FeatureState.restore(FeatureConfig(), arrays)


def test_deciding_a_subset_advances_the_state_by_every_row(stream: pl.DataFrame) -> None:
    batch = stream.head(3_000).sort("timestamp")
    mine = batch.with_columns(decide=pl.col("card_ref").hash(1) % 2 == 0)
    everything = _engine().process(batch, FeatureState())
    subset_state = FeatureState()
    subset = _engine().process(mine, subset_state, decide="decide")
    picked = mine.get_column("decide").to_numpy()
    assert 0 < len(subset) < batch.height
    assert subset.decisions.equals(everything.decisions.filter(pl.Series(picked)))
    whole_state = FeatureState()
    _engine().process(batch, whole_state)
    assert subset_state.stats() == whole_state.stats()
