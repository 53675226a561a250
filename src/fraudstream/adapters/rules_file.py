"""A ruleset YAML file, hot-reloaded: runners call `poll()` between batches.

`poll()` is a `stat` when nothing changed. When the file's identity, size or modification time
moved, it reads the text, and if the content hash differs it parses and compiles it. A good
file replaces the active ruleset; a bad one is logged and reported, and the previous ruleset
stays active, so a typo in the rules file never stops scoring.

Writers should replace the file atomically (write a temporary file, then rename it over the
old one). A read that overlaps a write in place is detected (the file changed while being
read) and retried at the next poll. Because file times are coarse on some systems, a file
modified within the last `_RACY_SECONDS` is also re-hashed when its stat looks unchanged, so
two quick same-size edits are not missed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import polars as pl

from fraudstream.core.errors import RuleError
from fraudstream.core.rules import CompiledRuleset, compile_ruleset, parse_ruleset

_log = logging.getLogger(__name__)

_RACY_SECONDS: Final = 2.0

_Signature = tuple[int, int, int, int, int]
"""(device, inode, size, mtime ns, ctime ns) of the file."""


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What one `poll()` found.

    `reloaded`: a new ruleset is now active. `error`: the file changed (or vanished) but could
    not be loaded; the previous ruleset, `version`, is still active. `version` is always the
    active ruleset's version after the poll.
    """

    reloaded: bool
    version: str
    previous_version: str | None = None
    error: RuleError | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


class RulesFile:
    """The active compiled ruleset of one YAML file, reloaded on `poll()`.

    Construction loads the file and raises `RuleError` if it cannot be read, parsed or
    compiled. Not thread-safe for concurrent `poll()` calls; reading `.current` from other
    threads is fine (the swap is a single attribute assignment).
    """

    def __init__(
        self, path: str | os.PathLike[str], available_columns: Mapping[str, pl.DataType]
    ) -> None:
        self._path = Path(path)
        self._columns: dict[str, pl.DataType] = dict(available_columns)
        signature, text = self._read()
        self._current = self._compile(text)
        self._signature = signature
        self._digest = _digest(text)
        self._failed_digest: str | None = None
        self._last_error: str | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def current(self) -> CompiledRuleset:
        return self._current

    @property
    def version(self) -> str:
        return self._current.version

    def poll(self) -> ReloadResult:
        """Reload the file if it changed; never raises for a bad or missing file."""
        active = self._current.version
        try:
            signature = _signature(self._path)
        except OSError as error:
            return self._fail(RuleError(None, f"cannot read rules file {self._path}: {error}"))
        if signature == self._signature and not _racy(signature):
            return ReloadResult(reloaded=False, version=active)
        if signature != self._signature:
            self._last_error = None  # a new edit: report its problem even if it reads the same
        return self._reload(signature)

    def _reload(self, signature: _Signature) -> ReloadResult:
        active = self._current.version
        try:
            read_signature, text = self._read()
        except RuleError as error:
            return self._fail(error)
        if read_signature != signature:
            # Changed while we were looking: leave the old signature so the next poll retries.
            return ReloadResult(reloaded=False, version=active)
        digest = _digest(text)
        if digest in (self._digest, self._failed_digest):
            self._signature = signature
            return ReloadResult(reloaded=False, version=active)
        try:
            compiled = self._compile(text)
        except RuleError as error:
            self._signature = signature
            self._failed_digest = digest
            return self._fail(error)
        self._current = compiled
        self._signature = signature
        self._digest = digest
        self._failed_digest = None
        self._last_error = None
        _log.info(
            "rules file %s reloaded: version %s -> %s (%d enabled rules)",
            self._path,
            active,
            compiled.version,
            len(compiled.rules),
        )
        return ReloadResult(reloaded=True, version=compiled.version, previous_version=active)

    def _fail(self, error: RuleError) -> ReloadResult:
        message = str(error)
        if message != self._last_error:  # once per distinct problem, not once per batch
            self._last_error = message
            _log.error(
                "rules file %s not reloaded, keeping version %s: %s",
                self._path,
                self._current.version,
                message,
            )
        return ReloadResult(reloaded=False, version=self._current.version, error=error)

    def _read(self) -> tuple[_Signature, str]:
        """The file's signature (taken after reading) and its text, or `RuleError`."""
        try:
            data = self._path.read_bytes()
            signature = _signature(self._path)
        except OSError as error:
            raise RuleError(None, f"cannot read rules file {self._path}: {error}") from None
        try:
            return signature, data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise RuleError(None, f"rules file {self._path} is not UTF-8: {error}") from None

    def _compile(self, text: str) -> CompiledRuleset:
        return compile_ruleset(parse_ruleset(text), self._columns)


def _signature(path: Path) -> _Signature:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _racy(signature: _Signature) -> bool:
    """Modified so recently that a same-size rewrite might share the timestamp."""
    mtime_seconds = signature[3] / 1e9
    return time.time() - mtime_seconds < _RACY_SECONDS


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
