"""The long-running processes' heap once they have started.

A worker or API process that imported its web, data and model libraries holds a few hundred
thousand objects that live as long as it does. CPython's cyclic collector walks all of them at
every full collection; in the scoring API under load that was a 75-135 ms pause about once a
second, which made the whole of its p99 latency. `gc.freeze` moves what exists at the end of
start-up out of the collector's sight, so a full collection walks only what was made since.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect what start-up left behind, then stop walking what survived (call it once, when
    start-up is done: imports made, kernels loaded)."""
    gc.collect()
    gc.freeze()
