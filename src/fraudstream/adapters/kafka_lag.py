"""How far a consumer group is behind on some partitions, asked of the broker.

Lag is the partition's high watermark minus the group's committed offset: what is in the log
but not yet confirmed by every sink. Both come from the broker (`ListOffsets`, `OffsetFetch`)
through an admin client of its own, so reading them never touches the worker's consumers and
can run in any thread.

The embedded broker (Tansu) reports as high watermark the base offset of the partition's last
record batch plus one, not the offset after its last record: there, lag reads low by up to one
record batch (and can come out negative, read as 0). It is recognised by its cluster id, Tansu's
default, which the embedded stack keeps; the reading then says it is not exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

TANSU_CLUSTER_ID = "tansu_cluster"
"""The cluster id Tansu takes unless told otherwise; `fraudstream.stack` does not tell it."""


@dataclass(frozen=True)
class LagReading:
    partitions: dict[int, int]
    """Partition -> high watermark minus committed offset (0 when it comes out below)."""
    exact: bool
    """False on a broker whose high watermark is known to read low (the embedded one)."""


class ConsumerLag:
    """Reads the lag of `group_id` on partitions of `topic`."""

    def __init__(
        self, client: Mapping[str, str], group_id: str, topic: str, timeout_s: float = 5.0
    ) -> None:
        self._admin = AdminClient(dict(client))
        self._group_id = group_id
        self._topic = topic
        self._timeout_s = timeout_s
        self._exact: bool | None = None

    def read(self, partitions: Iterable[int]) -> LagReading:
        """The lag now; raises `KafkaException` when the broker does not answer in time."""
        exact = self._is_exact()
        wanted = [TopicPartition(self._topic, p) for p in sorted(set(partitions))]
        if not wanted:
            return LagReading({}, exact)
        high = self._high_watermarks(wanted)
        committed = self._committed(wanted)
        lag = {p: max(high[p] - max(committed.get(p, 0), 0), 0) for p in high}
        return LagReading(lag, exact)

    def _is_exact(self) -> bool:
        if self._exact is None:  # asked once: a broker does not change what it is
            metadata = self._admin.list_topics(self._topic, timeout=self._timeout_s)
            self._exact = metadata.cluster_id != TANSU_CLUSTER_ID
        return self._exact

    def _high_watermarks(self, partitions: list[TopicPartition]) -> dict[int, int]:
        futures = self._admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in partitions},  # type: ignore[no-untyped-call]
            request_timeout=self._timeout_s,
        )
        return {tp.partition: future.result().offset for tp, future in futures.items()}

    def _committed(self, partitions: list[TopicPartition]) -> dict[int, int]:
        """Committed offsets; a partition with none yet is scored from its start (offset 0)."""
        request = [ConsumerGroupTopicPartitions(self._group_id, partitions)]
        futures = self._admin.list_consumer_group_offsets(request, request_timeout=self._timeout_s)
        found: dict[int, int] = {}
        for future in futures.values():
            for tp in future.result().topic_partitions or []:
                if tp.error is not None:
                    raise KafkaException(tp.error)
                found[tp.partition] = tp.offset
        return found
