"""A worker process's metrics: the `/metrics` server, and the consumer lag polled beside it.

The worker feeds `WorkerMetrics` per batch itself; what does not belong on its loop lives here:
the HTTP server (started before the worker joins its group, so Prometheus finds it from the
first scrape) and a thread that asks the broker for the lag of the worker's partitions every
few seconds. Both stop with the worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaException

from fraudstream.adapters.kafka_lag import ConsumerLag
from fraudstream.adapters.metrics import WorkerMetrics

log = logging.getLogger("fraudstream.worker")

LAG_INTERVAL_S = 5.0


@dataclass
class WorkerTelemetry:
    """`metrics`, served on `port`, and the lag of the partitions last `assigned`."""

    metrics: WorkerMetrics
    port: int
    lag: ConsumerLag
    interval_s: float = LAG_INTERVAL_S
    _partitions: tuple[int, ...] = ()
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def start(
        cls, name: str, port: int, client: Mapping[str, str], group_id: str, topic: str
    ) -> WorkerTelemetry:
        """Serve worker `name`'s metrics on `port` (0: a free one) and start polling lag."""
        metrics = WorkerMetrics(name)
        telemetry = cls(metrics, metrics.serve(port), ConsumerLag(client, group_id, topic))
        telemetry._thread = threading.Thread(target=telemetry._poll, name="lag", daemon=True)
        telemetry._thread.start()
        log.info("metrics at http://0.0.0.0:%d/metrics", telemetry.port)
        return telemetry

    def assigned(self, partitions: list[int]) -> None:
        """The partitions this worker scores now (the worker's `on_assignment`)."""
        self._partitions = tuple(partitions)

    def _poll(self) -> None:
        while True:
            try:
                reading = self.lag.read(self._partitions)
                self.metrics.lag(reading.partitions, reading.exact)
            except KafkaException as error:  # the broker is away: the gauges keep their value
                log.warning("consumer lag not read: %s", error)
            if self._stop.wait(self.interval_s):
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.metrics.close()
