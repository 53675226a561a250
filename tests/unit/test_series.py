"""Columns built through Polars' internal constructors are the frames the public ones build."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from fraudstream.core import series
from fraudstream.core.events import TRANSACTION_SCHEMA, Transaction, event_time_us, to_frame


def _transactions(n: int) -> list[Transaction]:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    return [
        Transaction(
            transaction_id=f"tx-{i}",
            timestamp=start + timedelta(seconds=i),
            amount=12.5 * i,
            card_ref=f"card-{i % 3}" if i % 4 else None,
            customer_id=None if i % 4 else f"cust-{i}",
            merchant_id="café-ü" if i % 2 else "m-1",
            country="DE" if i % 2 else None,
            latitude=48.1 if i % 3 == 0 else None,
            longitude=11.6 if i % 3 == 0 else None,
            channel="online",
        )
        for i in range(n)
    ]


def _public_frame(transactions: list[Transaction]) -> pl.DataFrame:
    """The engine's frame built with nothing but Polars' public constructors."""
    return pl.DataFrame(
        [
            pl.Series(name, [event_time_us(tx) for tx in transactions], pl.Int64).cast(dtype)
            if name == "timestamp"
            else pl.Series(name, [getattr(tx, name) for tx in transactions], dtype)
            for name, dtype in TRANSACTION_SCHEMA.items()
        ]
    )


@pytest.mark.parametrize("n", [0, 1, 17])
def test_to_frame_is_the_public_construction(n: int) -> None:
    built, public = to_frame(_transactions(n)), _public_frame(_transactions(n))
    assert built.schema == public.schema == pl.Schema(TRANSACTION_SCHEMA)
    assert built.equals(public)
    assert built.height == n


def test_without_the_internals_the_public_constructors_are_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(series, "_INTERNAL_MODULES", ("polars.no_such_module",))
    builders = series._Builders()
    assert not builders.direct
    monkeypatch.setattr(series, "BUILDERS", builders)
    assert to_frame(_transactions(5)).equals(_public_frame(_transactions(5)))


def test_typed_series_keeps_nulls_and_dtype() -> None:
    for dtype, values in (
        (pl.String(), ["x", None]),
        (pl.Float64(), [None, 2.5]),
        (pl.Int64(), [3, None]),
        (pl.Boolean(), [None, True]),
    ):
        column = series.typed_series("c", values, dtype)
        assert column.dtype == dtype
        assert column.to_list() == values
