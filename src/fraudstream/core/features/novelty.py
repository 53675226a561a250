"""First-seen values per card (merchant, country, device), in one walk of the card's chain.

Each record is one value the card has used: a=latest time seen, h=value hash, o=transaction id
of that latest sighting, x=the time seen before that. Reading the features and recording the
event touch the same records, so both happen in the same pass over the chain.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from fraudstream.core.features.kernels import NEVER, NV_HEAD, NV_TAIL
from fraudstream.core.features.pool import NO_CHUNK, Pool, claim_record, release_chunk

N_NOVELTY = 3
NOVELTY_RECORD_FIELDS = 4
"""A record: latest time seen (0), value hash (1), latest txid (2), time seen before (3)."""


@numba.njit(cache=True, nogil=True, inline="always")
def novelty_step(
    novelty: Pool,
    ei: npt.NDArray[np.int64],
    s: int,
    t: int,
    txh: int,
    values: npt.NDArray[np.int64],
    ttl: int,
    out: npt.NDArray[np.float64],
    base: int,
    record: bool,
    horizon: int,
    latest: npt.NDArray[np.float64],
    found: npt.NDArray[np.bool_],
) -> None:
    """Write is_new_* for the event into out[base:base + 3]; when `record`, also note the
    event's values and free chunks whose every sighting is older than `horizon`.

    A feature is 1.0 when the card did not use the value within the TTL before the event,
    0.0 when it did, NaN when the event's value is null (hash 0). For a replayed event the
    sighting it left itself is skipped: the one before it counts. `latest` and `found` are
    scratch arrays of length 3.
    """
    latest[:] = NEVER
    found[:] = False
    previous = NO_CHUNK
    chunk = ei[s, NV_HEAD]
    while chunk != NO_CHUNK:
        following = novelty.m[chunk, 1]
        if record and novelty.m[chunk, 2] < horizon:
            _unlink(novelty, ei, s, previous, chunk, following)
            chunk = following
            continue
        for j in range(novelty.m[chunk, 0]):
            value = novelty.i[chunk, j, 1]
            for f in range(N_NOVELTY):
                if value != values[f] or found[f]:
                    continue
                found[f] = True
                newest_is_self = novelty.i[chunk, j, 2] == txh
                latest[f] = novelty.f[chunk, j, 3] if newest_is_self else novelty.i[chunk, j, 0]
                if record:
                    _see_again(novelty, chunk, j, t, txh)
        previous = chunk
        chunk = following
    for f in range(N_NOVELTY):
        if values[f] == 0:
            out[base + f] = np.nan
            continue
        out[base + f] = 0.0 if latest[f] > t - ttl else 1.0
        if record and not found[f]:
            at, slot = claim_record(novelty, ei[s, NV_HEAD : NV_TAIL + 1], t)
            novelty.i[at, slot, 1] = values[f]
            novelty.i[at, slot, 2] = txh
            novelty.f[at, slot, 3] = NEVER


@numba.njit(cache=True, nogil=True, inline="always")
def _see_again(novelty: Pool, chunk: int, j: int, t: int, txh: int) -> None:
    """Record a new sighting of a known value (events may arrive slightly out of order)."""
    if t >= novelty.i[chunk, j, 0]:
        novelty.f[chunk, j, 3] = float(novelty.i[chunk, j, 0])
        novelty.i[chunk, j, 0] = t
        novelty.i[chunk, j, 2] = txh
        novelty.m[chunk, 2] = max(novelty.m[chunk, 2], t)
    elif t > novelty.f[chunk, j, 3]:
        novelty.f[chunk, j, 3] = float(t)


@numba.njit(cache=True, nogil=True, inline="always")
def _unlink(
    novelty: Pool, ei: npt.NDArray[np.int64], s: int, previous: int, chunk: int, following: int
) -> None:
    if previous == NO_CHUNK:
        ei[s, NV_HEAD] = following
    else:
        novelty.m[previous, 1] = following
    if ei[s, NV_TAIL] == chunk:
        ei[s, NV_TAIL] = previous
    release_chunk(novelty, chunk)
