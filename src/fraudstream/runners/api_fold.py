"""The scoring API's copy of the stream's feature state.

Workers keep the feature state of the whole stream in memory (`stream_state.py`), each folding
every partition of the `transactions` topic. The API does the same: it reads every partition,
in the event-time order the aligner gives, and folds what it reads into its own `FeatureState`,
starting from the workers' newest checkpoint when there is one. A request is scored against that
state and folded into it at once; its transaction is then published to the topic, where the
workers fold it too and record the API's decision. So a card's velocity counts are the same
whichever path its transactions took.

Reading its own messages back, the API skips them (they carry its origin id): they are already
in its state. Messages other API processes published are folded, and their signed decisions go
to the replay memory, so a request retried against another process is answered the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from fraudstream.adapters.kafka_sinks import topic_partitions
from fraudstream.core.decision_record import ORIGIN_HEADER, REQUEST_HEADER, DecisionRecord
from fraudstream.core.events import to_frame
from fraudstream.runners.alignment import Arrival, EventTimeAligner
from fraudstream.runners.scoring_step import decode_arrival
from fraudstream.runners.stream_state import StreamState

log = logging.getLogger("fraudstream.api")
_METADATA_TIMEOUT_S = 30.0

Remember = Callable[[str, bytes, DecisionRecord], None]
"""Hears of a decision another API process published: its replay key, body digest, record."""


class StreamFollower:
    """Folds the `transactions` topic into `state.features` in a thread of its own; callers
    that read or change the features hold `lock`."""

    def __init__(
        self,
        *,
        reader: Consumer,
        topic: str,
        state: StreamState,
        origin: str,
        decision_key: bytes,
        remember: Remember,
        max_batch: int = 1000,
        max_wait_s: float = 0.02,
        end_grace_s: float = 0.2,
        max_idle_s: float = 1.0,
    ) -> None:
        self._reader = reader
        self._topic = topic
        self.state = state
        self._origin = origin.encode()
        self._own = (ORIGIN_HEADER, self._origin)
        self._decision_key = decision_key
        self._remember = remember
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._max_idle_s = max_idle_s
        self._aligner = EventTimeAligner(max_buffered=1 << 62, end_grace_s=end_grace_s)
        self.lock = threading.Lock()
        self.ready = threading.Event()
        """Set once every partition was read to its end and folded."""
        self.folded = 0
        self._unread: set[int] = set()
        self._thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> None:
        self._thread = threading.Thread(target=self.run, args=(stop,), name="fold", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def run(self, stop: threading.Event) -> None:
        try:
            self._assign()
            last_release = time.monotonic()
            while not stop.is_set():
                self._read()
                idle = time.monotonic() - last_release > self._max_idle_s
                arrivals = self._aligner.release(
                    self._max_batch, force=idle, now_s=time.monotonic()
                )
                if arrivals:
                    self._fold(arrivals)
                    last_release = time.monotonic()
                elif not self._aligner.buffered:
                    last_release = time.monotonic()
                if not self._unread and not self._aligner.buffered and not self.ready.is_set():
                    log.info("caught up with the stream: %d transactions folded", self.folded)
                    self.ready.set()
        except Exception:
            log.exception("the stream fold stopped; the API answers 503 from now on")
            self.ready.clear()
            raise
        finally:
            self._reader.close()

    def _assign(self) -> None:
        self.state.restart({})  # the newest checkpoint any worker stored, if there is one
        partitions = topic_partitions(self._reader, self._topic, _METADATA_TIMEOUT_S)
        self._unread = set(partitions)
        self._aligner.assign([(self._topic, p) for p in partitions])
        self._reader.assign(
            [
                TopicPartition(self._topic, p, self.state.seen.get(p, OFFSET_BEGINNING))
                for p in partitions
            ]
        )
        log.info("folding %d partitions from %s", len(partitions), self.state.seen or "the start")

    def _read(self) -> None:
        for message in self._reader.consume(self._max_batch, self._max_wait_s):
            partition = message.partition() or 0
            key = (self._topic, partition)
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._aligner.reached_end(key)
                    self._unread.discard(partition)
                else:
                    log.warning("reader: %s", error)
                continue
            raw_headers = message.headers() or []
            if self._own in raw_headers:
                continue  # scored here, and folded then (most of what the API reads: kept cheap)
            headers = dict(raw_headers)
            arrival = decode_arrival(
                message, self._aligner.frontier(key), time.monotonic(), self._decision_key
            )
            if arrival.carried is not None:
                self._learn(arrival.carried, headers.get(REQUEST_HEADER))
            self._aligner.add(key, arrival)

    def _learn(self, record: DecisionRecord, request: bytes | None) -> None:
        """Another API process's answer, for the replay memory: `<digest hex> <replay key>`."""
        if request is None:
            return
        digest, _, replay_key = request.partition(b" ")
        try:
            self._remember(replay_key.decode(), bytes.fromhex(digest.decode()), record)
        except ValueError:
            log.warning("request header of %s not understood", record.transaction_id)

    def _fold(self, arrivals: list[Arrival]) -> None:
        transactions = [a.transaction for a in arrivals if a.transaction is not None]
        if transactions:
            frame = to_frame(transactions).sort("timestamp", maintain_order=True)
            with self.lock:
                self.state.features.advance(frame)
        self.folded += len(transactions)
