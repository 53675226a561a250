"""Keep a worker's live and shadow models in step with the registry, without a restart.

`ModelWatcher.poll(engine)` runs between batches. At most every `interval_s` it asks the
registry which versions serve; a changed version (or a changed artifact under the same version)
is fetched, verified (checksum, signature, safe payload, inputs the engine computes) and swapped
into the engine in one assignment. A model that fails any check is logged and remembered, and the
model already serving keeps serving; an unreachable database skips the poll.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

import psycopg

from fraudstream.adapters.model_registry import ROLES, ModelRegistry, Role, Serving
from fraudstream.core.engine import Engine
from fraudstream.core.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from fraudstream.ml.artifact import Scorer

log = logging.getLogger("fraudstream.models")

_Loaded = tuple[str, str]
"""(version, artifact SHA-256) of what an engine role holds."""


class ModelWatcher:
    """Applies the registry's live and shadow models to an engine."""

    def __init__(
        self,
        registry: ModelRegistry,
        key: bytes,
        inputs: Collection[str],
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._key = key
        self._inputs = frozenset(inputs)
        self._interval_s = interval_s
        self._clock = clock
        self._next_poll = 0.0
        self._loaded: dict[Role, _Loaded | None] = dict.fromkeys(ROLES)
        self._refused: set[_Loaded] = set()
        """Artifacts that failed a check: not fetched again until the registry changes."""

    @property
    def serving(self) -> dict[Role, str | None]:
        """The version each role of the engine holds now."""
        return {role: None if held is None else held[0] for role, held in self._loaded.items()}

    def poll(self, engine: Engine) -> None:
        now = self._clock()
        if now < self._next_poll:
            return
        self._next_poll = now + self._interval_s
        try:
            serving = self._registry.serving()
        except psycopg.Error as error:
            log.warning("model registry unreachable, keeping the models in use: %s", error)
            return
        for role in ROLES:
            self._apply(engine, role, serving.get(role))

    def _apply(self, engine: Engine, role: Role, target: Serving | None) -> None:
        if target is None:
            if self._loaded[role] is not None:
                _assign(engine, role, None)
                log.info("%s model retired (was %s)", role, self.serving[role])
                self._loaded[role] = None
            return
        wanted = (target.version, target.sha256)
        if wanted == self._loaded[role] or wanted in self._refused:
            return
        try:
            scorer = self._load(target)
            _assign(engine, role, scorer)
        except (ModelError, ConfigError, psycopg.Error) as error:
            if not isinstance(error, psycopg.Error):  # a database error is retried
                self._refused.add(wanted)
            log.error("%s model %s refused, keeping %s: %s",
                      role, target.version, self.serving[role], error)  # fmt: skip
            return
        log.info("%s model %s -> %s", role, self.serving[role], target.version)
        self._loaded[role] = wanted

    def _load(self, target: Serving) -> Scorer:
        # imported on the first model: LightGBM and skops add seconds to a worker's start
        from fraudstream.ml.artifact import load_artifact  # noqa: PLC0415

        data = self._registry.artifact(target.version)
        source = f"model {target.version}"
        if hashlib.sha256(data).hexdigest() != target.sha256:
            raise ModelError(f"{source}: stored artifact does not match its registered SHA-256")
        scorer = load_artifact(data, self._key, source).scorer
        unknown = [name for name in scorer.feature_names if name not in self._inputs]
        if unknown:
            raise ModelError(f"{source}: needs inputs this worker does not compute: {unknown}")
        return scorer


def _assign(engine: Engine, role: Role, scorer: Scorer | None) -> None:
    if role == "live":
        engine.model = scorer
    else:
        engine.shadow = scorer
