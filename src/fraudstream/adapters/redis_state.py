"""Feature-state checkpoints in Redis, shared by every worker of a consumer group.

Every worker keeps the state of the whole stream (see `runners/worker.py`), so any worker's
checkpoint serves any other: a worker that restarts, or takes over partitions, loads the newest
checkpoint it may use and reads the log on from the positions stored with it, instead of from the
log's beginning.

A checkpoint is the state's arrays as an `.npz` blob (plain arrays, loaded without pickle),
stored in parts of at most `part_bytes` (Redis refuses a value over 512 MB, and a state at
2 k tx/s passes that within minutes), and a small JSON document: for every partition the next
offset the state has not seen, the number of parts, the worker that wrote it and when. An
index (a sorted set by time) keeps the newest `keep` and a few older ones spaced by doubling
spans of time, within a budget of bytes (a state of GBs would otherwise fill Redis's memory
with a dozen copies); the rest are deleted as new ones arrive, and every key expires after
`ttl_s` in case nothing arrives.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import redis

log = logging.getLogger("fraudstream.state")
_SCALES = 16
"""Spans of 2, 4, ... 65 536 seconds (18 hours)."""


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    id: str
    offsets: dict[int, int]
    """partition -> the first offset the state has not seen."""
    worker: str
    created_ms: int
    size_bytes: int
    parts: int = 1
    """Redis values the state blob is split into."""


class CheckpointStore:
    """Save and find feature-state checkpoints under one namespace (group and topic)."""

    def __init__(
        self,
        url: str,
        namespace: str,
        keep: int = 6,
        ttl_s: int = 7 * 86_400,
        part_bytes: int = 64 << 20,
        budget_bytes: int = 8 << 30,
    ) -> None:
        self._url = url
        self._redis = redis.Redis.from_url(url, socket_timeout=30)
        self._ns = namespace
        self._keep = keep
        self._ttl_s = ttl_s
        self._part_bytes = part_bytes
        self._budget_bytes = budget_bytes

    def reopened(self) -> CheckpointStore:
        """The same store on a connection of its own (for a forked process: a socket must not
        be shared with the parent)."""
        return CheckpointStore(
            self._url, self._ns, self._keep, self._ttl_s, self._part_bytes, self._budget_bytes
        )

    def _key(self, *parts: str) -> str:
        return ":".join((self._ns, *parts))

    def save(
        self, arrays: Mapping[str, npt.NDArray[np.generic]], offsets: Mapping[int, int], worker: str
    ) -> CheckpointInfo:
        """Store a checkpoint of `arrays` taken at `offsets`; returns what was stored.

        The npz archive goes to Redis part by part as NumPy writes it, so no copy of the
        whole archive is ever held: a checkpoint of a GB state costs one part of memory."""
        checkpoint_id = f"{worker}-{uuid.uuid4().hex[:12]}"
        parts = _PartWriter(
            lambda n, data: self._redis.set(self._part_key(checkpoint_id, n), data, ex=self._ttl_s),
            self._part_bytes,
        )
        np.savez(parts, **arrays)  # type: ignore[arg-type]
        parts.close()
        info = CheckpointInfo(
            id=checkpoint_id,
            offsets=dict(offsets),
            worker=worker,
            created_ms=int(time.time() * 1000),
            size_bytes=parts.size_bytes,
            parts=parts.count,
        )
        meta = {
            "offsets": {str(p): o for p, o in info.offsets.items()},
            "worker": worker,
            "created_ms": info.created_ms,
            "size_bytes": info.size_bytes,
            "parts": info.parts,
        }
        pipe = self._redis.pipeline(transaction=True)  # the meta last: listed only when whole
        pipe.set(self._key("checkpoint", info.id, "meta"), json.dumps(meta), ex=self._ttl_s)
        pipe.zadd(self._key("checkpoints"), {info.id: info.created_ms})
        pipe.expire(self._key("checkpoints"), self._ttl_s)
        pipe.execute()
        self._trim()
        return info

    def _trim(self) -> None:
        """Keep the newest `keep`, and at every scale of 2^k seconds the first checkpoint of
        each of the last two 2^k-second spans: a worker taking over a partition whose owner
        died needs one from before that owner's last commit, which may be minutes old."""
        index = self._key("checkpoints")
        entries = [
            (m.decode(), int(ms)) for m, ms in self._redis.zrange(index, 0, -1, withscores=True)
        ]
        kept = {checkpoint_id for checkpoint_id, _ in entries[-self._keep :]}
        for scale in range(1, _SCALES + 1):
            first_of_span: dict[int, str] = {}
            for checkpoint_id, created_ms in entries:  # oldest first
                first_of_span.setdefault(created_ms // (1000 << scale), checkpoint_id)
            kept |= {first_of_span[span] for span in sorted(first_of_span)[-2:]}
        metas = self._metas([checkpoint_id for checkpoint_id, _ in entries])
        kept = self._within_budget([c for c, _ in reversed(entries) if c in kept], metas)
        old = [checkpoint_id for checkpoint_id, _ in entries if checkpoint_id not in kept]
        if not old:
            return
        pipe = self._redis.pipeline(transaction=True)
        for checkpoint_id in old:
            parts = int(metas.get(checkpoint_id, {}).get("parts", 1))
            pipe.delete(*self._part_keys(checkpoint_id, parts))
            pipe.delete(self._key("checkpoint", checkpoint_id, "meta"))
        pipe.zrem(index, *old)
        pipe.execute()

    def _metas(self, checkpoint_ids: list[str]) -> dict[str, dict[str, object]]:
        """The meta documents of the given checkpoints that still have one."""
        if not checkpoint_ids:
            return {}
        raws = self._redis.mget([self._key("checkpoint", c, "meta") for c in checkpoint_ids])
        return {c: json.loads(raw) for c, raw in zip(checkpoint_ids, raws, strict=True) if raw}

    def _within_budget(
        self, newest_first: list[str], metas: Mapping[str, Mapping[str, object]]
    ) -> set[str]:
        """The newest checkpoints whose sizes add up to at most the budget; the two newest
        always (a takeover usually needs the second newest: the newest may have folded past
        the committed offsets of batches still in flight)."""
        kept: set[str] = set()
        total = 0
        for n, checkpoint_id in enumerate(newest_first):
            size = metas.get(checkpoint_id, {}).get("size_bytes", 0)
            total += size if isinstance(size, int) else 0
            if n >= 2 and total > self._budget_bytes:
                break
            kept.add(checkpoint_id)
        return kept

    def _part_keys(self, checkpoint_id: str, parts: int) -> list[str]:
        return [self._part_key(checkpoint_id, n) for n in range(parts)]

    def _part_key(self, checkpoint_id: str, n: int) -> str:
        return self._key("checkpoint", checkpoint_id, f"state:{n}")

    def newest_first(self) -> Iterator[CheckpointInfo]:
        """Every stored checkpoint, newest first."""
        for raw_id in self._redis.zrevrange(self._key("checkpoints"), 0, -1):
            checkpoint_id = raw_id.decode()
            raw = self._redis.get(self._key("checkpoint", checkpoint_id, "meta"))
            if raw is None:
                continue  # trimmed or expired meanwhile
            meta = json.loads(raw)
            yield CheckpointInfo(
                id=checkpoint_id,
                offsets={int(p): int(o) for p, o in meta["offsets"].items()},
                worker=str(meta["worker"]),
                created_ms=int(meta["created_ms"]),
                size_bytes=int(meta["size_bytes"]),
                parts=int(meta.get("parts", 1)),  # older checkpoints: one part
            )

    def newest_within(self, ceilings: Mapping[int, int]) -> CheckpointInfo | None:
        """The newest checkpoint that has seen no offset at or past `ceilings[p]` of any given
        partition (a partition it does not mention counts as unseen, offset 0)."""
        for info in self.newest_first():
            if all(info.offsets.get(p, 0) <= ceiling for p, ceiling in ceilings.items()):
                return info
        return None

    def load(self, info: CheckpointInfo) -> dict[str, npt.NDArray[np.generic]] | None:
        """The checkpoint's arrays, or None when it was deleted since it was listed."""
        parts = [self._redis.get(key) for key in self._part_keys(info.id, info.parts)]
        if any(part is None for part in parts):
            return None
        blob = b"".join(parts)  # type: ignore[arg-type]
        with np.load(io.BytesIO(blob), allow_pickle=False) as loaded:
            return {name: loaded[name] for name in loaded.files}

    def clear(self) -> None:
        """Delete every checkpoint of this namespace."""
        keys = list(self._redis.scan_iter(match=self._key("*"), count=1000))
        if keys:
            self._redis.delete(*keys)

    def close(self) -> None:
        self._redis.close()


class _PartWriter(io.RawIOBase):
    """A write-only stream that hands its bytes on in parts of `part_bytes` (the last one
    shorter) to `put(index, data)`, as they fill. Not seekable: `zipfile`, and so `np.savez`,
    then writes the archive front to back."""

    def __init__(self, put: Callable[[int, bytes], object], part_bytes: int) -> None:
        super().__init__()
        self._put = put
        self._part_bytes = part_bytes
        self._pending = bytearray()
        self.count = 0
        self.size_bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._pending += data
        self.size_bytes += len(data)
        while len(self._pending) >= self._part_bytes:
            self._flush_part(self._part_bytes)
        return len(data)

    def close(self) -> None:
        if not self.closed and (self._pending or self.count == 0):
            self._flush_part(len(self._pending))
        super().close()

    def _flush_part(self, size: int) -> None:
        self._put(self.count, bytes(self._pending[:size]))
        del self._pending[:size]
        self.count += 1
