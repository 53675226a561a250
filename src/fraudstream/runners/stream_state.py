"""The feature state a worker keeps: of the whole stream, resumable from Redis checkpoints.

Every worker folds every partition of the `transactions` topic into its state, in the one
event-time order the aligner gives, and scores only the partitions the consumer group assigned
it. So features never depend on how many workers run or which one holds a partition: a merchant
or customer seen on several partitions has the same features as with one worker, and a
partition that moves to another worker (a crash, a scale-out) is scored exactly as before.
Folding costs a decode and a state update per message per worker; rules, models and sinks,
the larger share, are split between workers.

A worker that gains a partition its state has already folded past that partition's committed
offset must rebuild: the transactions from the committed offset on have to be scored as of
their own place in the stream, not as replays. It restarts from the newest checkpoint that has
not seen those offsets (state `redis`), or from the log's beginning (state `memory`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import redis

from fraudstream.adapters.redis_state import CheckpointStore
from fraudstream.core.errors import SnapshotError
from fraudstream.core.features import FeatureConfig, FeatureState
from fraudstream.core.features.snapshot import Arrays

log = logging.getLogger("fraudstream.state")
MAX_PAUSE_SHARE = 0.02
"""Taking a checkpoint's copy stops scoring (about a second per 600 MB of state), so
checkpoints are spaced to keep that pause under this share of the time: a state grown to 600 MB
is checkpointed about every 50 s, not every `checkpoint_interval_s`."""


@dataclass
class StreamState:
    """A `FeatureState` with the next unseen offset of every partition it has folded."""

    config: FeatureConfig
    checkpoints: CheckpointStore | None = None
    checkpoint_interval_s: float = 10.0
    """The shortest time between checkpoints; see `MAX_PAUSE_SHARE` for the longer ones."""
    worker: str = "worker"
    features: FeatureState = field(init=False)
    seen: dict[int, int] = field(init=False, default_factory=dict)
    """partition -> first offset not yet folded into `features`."""
    restored_from: str | None = field(init=False, default=None)
    _last_checkpoint: float = field(init=False, default=0.0)
    _interval_s: float = field(init=False, default=0.0)
    _saved_at: dict[int, int] = field(init=False, default_factory=dict)
    _sender: ThreadPoolExecutor = field(init=False)
    _sending: Future[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.features = FeatureState(self.config)
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self._last_checkpoint = time.monotonic()
        self._interval_s = self.checkpoint_interval_s

    def folded(self, next_offsets: Mapping[int, int]) -> None:
        """The state has folded every message before `next_offsets[p]` of each partition p."""
        for partition, offset in next_offsets.items():
            self.seen[partition] = max(self.seen.get(partition, 0), offset)

    def has_seen(self, partition: int, offset: int) -> bool:
        return self.seen.get(partition, 0) > offset

    def restart(self, ceilings: Mapping[int, int]) -> None:
        """Start over from the newest checkpoint that has seen no partition's offsets from its
        ceiling on (or from nothing); afterwards `seen` says where to read each partition."""
        self.features = FeatureState(self.config)
        self.seen = {}
        self.restored_from = None
        if self.checkpoints is None:
            return
        info = self.checkpoints.newest_within(ceilings)
        arrays = None if info is None else self.checkpoints.load(info)
        if info is None or arrays is None:
            log.info("no usable checkpoint: folding the log from its beginning")
            return
        try:
            self.features = FeatureState.restore(self.config, arrays)
        except SnapshotError as error:
            log.warning("checkpoint %s not usable (%s): folding from the beginning", info.id, error)
            return
        self.seen = dict(info.offsets)
        self.restored_from = info.id
        log.info("state restored from checkpoint %s at %s", info.id, info.offsets)

    def checkpoint_due(self) -> bool:
        return (
            self.checkpoints is not None
            and time.monotonic() - self._last_checkpoint >= self._interval_s
        )

    def save_checkpoint(self, wait: bool = False) -> None:
        """Store the state as it is now (call between batches). The copy is taken here; it is
        serialised and sent in the background (one at a time: while one is on its way, later
        calls are skipped), unless `wait`. A failure is logged and the stream goes on: a
        checkpoint only shortens a later rebuild."""
        if self.checkpoints is None:
            return
        self._last_checkpoint = time.monotonic()
        if self._sending is not None and not self._sending.done():
            if not wait:
                return
            self._sending.result()
        if not self.seen or self.seen == self._saved_at:
            return  # nothing folded since the last one
        self._saved_at = dict(self.seen)
        started = time.perf_counter()
        arrays = self.features.snapshot()
        pause_s = time.perf_counter() - started
        self._interval_s = max(self.checkpoint_interval_s, pause_s / MAX_PAUSE_SHARE)
        self._sending = self._sender.submit(self._send, self.checkpoints, arrays, dict(self.seen))
        if wait:
            self._sending.result()

    def _send(self, store: CheckpointStore, arrays: Arrays, seen: dict[int, int]) -> None:
        try:
            info = store.save(arrays, seen, self.worker)
        except redis.RedisError as error:  # Redis down must not stop scoring
            log.warning("checkpoint not saved: %s", error)
            return
        log.info("checkpoint %s: %d bytes at %s", info.id, info.size_bytes, info.offsets)

    def close(self) -> None:
        self._sender.shutdown(wait=True)
