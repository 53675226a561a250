"""The worker's merge of partitions by event time."""

from __future__ import annotations

from fraudstream.runners.alignment import Arrival, EventTimeAligner

P0, P1 = ("t", 0), ("t", 1)


def _arrival(label: str, event_us: int) -> Arrival:
    return Arrival(message=label, transaction=None, rejected=None, event_us=event_us)  # type: ignore[arg-type]


def _labels(arrivals: list[Arrival]) -> list[str]:
    return [str(a.message) for a in arrivals]


def test_a_partition_that_may_still_deliver_holds_back_newer_events() -> None:
    aligner = EventTimeAligner(max_buffered=100)
    aligner.assign([P0, P1])
    for label, t in (("a1", 10), ("a2", 20), ("a3", 30)):
        aligner.add(P0, _arrival(label, t))
    assert aligner.release(10) == [], "P1 has delivered nothing yet: anything could come"
    aligner.add(P1, _arrival("b1", 15))
    assert _labels(aligner.release(10)) == ["a1", "b1"]
    aligner.reached_end(P1)
    assert _labels(aligner.release(10)) == ["a2", "a3"], "a drained partition holds nobody"
    assert aligner.buffered == 0


def test_release_merges_by_event_time_and_respects_the_limit() -> None:
    aligner = EventTimeAligner(max_buffered=100)
    aligner.assign([P0, P1])
    for t in (1, 4, 6):
        aligner.add(P0, _arrival(f"a{t}", t))
    for t in (2, 3, 7):
        aligner.add(P1, _arrival(f"b{t}", t))
    assert _labels(aligner.release(3)) == ["a1", "b2", "b3"]
    assert _labels(aligner.release(10)) == ["a4", "a6"], "7 > P0's frontier 6: b7 waits"


def test_each_partition_leaves_in_offset_order_even_when_out_of_event_order() -> None:
    aligner = EventTimeAligner(max_buffered=100)
    aligner.assign([P0])
    aligner.add(P0, _arrival("late-writer", 50))
    aligner.add(P0, _arrival("earlier-event", 40))
    assert _labels(aligner.release(10)) == ["late-writer", "earlier-event"]


def test_force_full_buffers_and_revocation() -> None:
    aligner = EventTimeAligner(max_buffered=3)
    aligner.assign([P0, P1])
    aligner.add(P0, _arrival("a", 5))
    assert aligner.release(10) == []
    assert _labels(aligner.release(10, force=True)) == ["a"], "idle too long: release anyway"
    for t in (6, 7, 8):
        aligner.add(P0, _arrival(f"a{t}", t))
    assert len(aligner.release(10)) == 3, "full buffers release without waiting for P1"
    aligner.add(P1, _arrival("b", 9))
    aligner.revoke([P1])
    assert aligner.buffered == 0, "a revoked partition's messages are the new owner's to read"


def test_a_dead_letter_travels_in_its_place() -> None:
    aligner = EventTimeAligner(max_buffered=100)
    aligner.assign([P0])
    aligner.add(P0, _arrival("a", 10))
    aligner.add(P0, _arrival("bad", aligner.frontier(P0)))
    aligner.add(P0, _arrival("b", 20))
    assert _labels(aligner.release(10)) == ["a", "bad", "b"]


def test_a_drained_partition_holds_back_for_the_grace_after_an_arrival() -> None:
    """At the end of its log a partition may still get an older event a moment later (the
    producer's batches travel separately): newer events wait `end_grace_s` for it."""
    aligner = EventTimeAligner(max_buffered=100, end_grace_s=0.2)
    aligner.assign([P0, P1])
    aligner.add(P1, Arrival("b1", None, None, 5, arrived_s=0.0))  # type: ignore[arg-type]
    aligner.add(P0, Arrival("a1", None, None, 10, arrived_s=1.0))  # type: ignore[arg-type]
    assert _labels(aligner.release(10, now_s=1.0)) == ["b1"]
    aligner.reached_end(P1)
    assert aligner.release(10, now_s=1.1) == [], "P1 is drained, but only just"
    aligner.add(P1, Arrival("b2", None, None, 8, arrived_s=1.15))  # type: ignore[arg-type]
    aligner.reached_end(P1)
    assert _labels(aligner.release(10, now_s=1.15)) == ["b2"], "8 is below every frontier"
    assert aligner.release(10, now_s=1.19) == []
    assert _labels(aligner.release(10, now_s=1.2)) == ["a1"], "the grace has passed"
