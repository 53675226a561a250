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
import os
import sys
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
"""Taking a checkpoint stops scoring for a moment: a fork (Linux; milliseconds per GB of state)
or a copy (elsewhere, about a second per 600 MB). Checkpoints are spaced to keep that pause
under this share of the time: a copy of 600 MB means a checkpoint about every 50 s, not every
`checkpoint_interval_s`."""
MAX_WRITE_SHARE = 0.05
"""Writing a checkpoint (serialising it, Redis storing it) takes a core while scoring goes on
beside it; checkpoints are spaced to keep that under this share of the time, so a state of GBs
is not rewritten every few seconds."""
FORK_WRITER = sys.platform == "linux"
"""Where a forked child writes the checkpoint from the state as it was at the fork: its pages
are shared copy-on-write, so scoring goes on at once instead of waiting for a copy. Only on
Linux: forking a process with threads is not safe on macOS."""


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
    _pause_s: float = field(init=False, default=0.0)
    """How long the last checkpoint stopped scoring."""
    _write_s: float = field(init=False, default=0.0)
    """How long the last checkpoint took to write, in the background."""
    _saved_at: dict[int, int] = field(init=False, default_factory=dict)
    _sender: ThreadPoolExecutor = field(init=False)
    _sending: Future[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.features = FeatureState(self.config)
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self._last_checkpoint = time.monotonic()

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
            and time.monotonic() - self._last_checkpoint >= self.interval_s()
        )

    def interval_s(self) -> float:
        """The time until the next checkpoint: `checkpoint_interval_s`, or longer where the
        last one's pause or write would take more than their share of the time."""
        return max(
            self.checkpoint_interval_s,
            self._pause_s / MAX_PAUSE_SHARE,
            self._write_s / MAX_WRITE_SHARE,
        )

    def save_checkpoint(self, wait: bool = False) -> None:
        """Store the state as it is now (call between batches). It is fixed here (a fork, or a
        copy: see `FORK_WRITER`) and written in the background (one at a time: while one is on
        its way, later calls are skipped); `wait` copies it and waits for the write. A failure
        is logged and the stream goes on: a checkpoint only shortens a later rebuild."""
        if self.checkpoints is None:
            return
        self._last_checkpoint = time.monotonic()
        if self._sending is not None and not self._sending.done():
            if not wait:
                return
            self._sending.result()
        if not self.seen or self.seen == self._saved_at:
            return  # nothing folded since the last one
        previous, self._saved_at = self._saved_at, dict(self.seen)
        started = time.perf_counter()
        if FORK_WRITER and not wait:
            try:
                writer = self._fork_writer(self.checkpoints, dict(self.seen))
            except OSError as error:  # no memory or processes left for a child, for now
                log.warning("checkpoint skipped: its writer could not be forked (%s)", error)
                self._saved_at = previous  # the next call tries again
                return
            self._sending = self._sender.submit(self._reap, writer, started)
        else:
            arrays = self.features.snapshot()
            self._sending = self._sender.submit(
                self._send, self.checkpoints, arrays, dict(self.seen)
            )
        self._pause_s = time.perf_counter() - started
        if wait:
            self._sending.result()

    def _fork_writer(self, store: CheckpointStore, seen: dict[int, int]) -> int:
        """Fork a child that writes the state as of now and exits; returns its pid. The child
        touches nothing of the parent's but the state's arrays and logging: not its Kafka
        clients, its threads or its Redis connection."""
        pid = os.fork()
        if pid != 0:
            return pid
        code = 1
        try:
            self._send(store.reopened(), self.features.snapshot(copy=False), seen)
            code = 0
        except BaseException:
            log.exception("checkpoint writer failed")
        finally:
            os._exit(code)  # no atexit hooks, no destructors of the parent's clients

    def _reap(self, pid: int, started: float) -> None:
        """Wait for a forked writer; space the next checkpoint by how long this one took."""
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            log.warning("checkpoint writer %d exited with %d", pid, code)
        self._write_s = time.perf_counter() - started

    def _send(self, store: CheckpointStore, arrays: Arrays, seen: dict[int, int]) -> None:
        started = time.perf_counter()
        try:
            info = store.save(arrays, seen, self.worker)
        except redis.RedisError as error:  # Redis down must not stop scoring
            log.warning("checkpoint not saved: %s", error)
            return
        finally:
            self._write_s = time.perf_counter() - started
        log.info("checkpoint %s: %d bytes at %s", info.id, info.size_bytes, info.offsets)

    def close(self) -> None:
        self._sender.shutdown(wait=True)
