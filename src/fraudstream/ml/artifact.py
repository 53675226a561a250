"""Model files that are safe to load: signed, checksummed, and never unpickled.

An artifact is a zip of three members:

* `metadata.json`: kind, version, feature list, training window, evaluation metrics and the
  scorer's own numbers (fill values, anchors, weights), plus the payload's SHA-256;
* `payload`: the model itself in a format that cannot run code when read: LightGBM's text
  model for gradient boosting, a skops file for the Isolation Forest, loaded only when every
  type it names is on our short list of scikit-learn and NumPy types;
* `signature`: HMAC-SHA256 of metadata and payload under the deployment's signing key.

`load_artifact` checks all three before building a scorer and raises `ModelError`, naming
what is wrong, for anything else: a file that is not a zip, a changed byte anywhere, another
key's signature, an unknown kind or a payload type outside the list.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any, Final, Literal

import lightgbm as lgb
import numpy as np
import skops.io as sio

from fraudstream.core.errors import ModelError
from fraudstream.ml.scorers import GradientBoostingScorer, IsolationForestScorer

Kind = Literal["isolation_forest", "gradient_boosting"]
KINDS: Final[tuple[Kind, ...]] = ("isolation_forest", "gradient_boosting")
FORMAT: Final = 1
_MEMBERS: Final = ("metadata.json", "payload", "signature")
_SKOPS_TYPES: Final = frozenset(
    {
        "sklearn.ensemble._iforest.IsolationForest",
        "sklearn.tree._classes.ExtraTreeRegressor",
        "sklearn.tree._tree.Tree",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.random.mtrand.RandomState",
        "numpy.float64",
        "numpy.int64",
        "builtins.int",
        "builtins.float",
        "builtins.str",
        "builtins.list",
        "builtins.dict",
        "builtins.tuple",
        *(
            f"loader:{name}"
            for name in (
                "DictNode",
                "ListNode",
                "TupleNode",
                "JsonNode",
                "TypeNode",
                "NdArrayNode",
                "ObjectNode",
                "TreeNode",
                "None",
            )
        ),
    }
)
"""Every type an Isolation Forest's skops file may name; anything else is refused unread."""

Scorer = IsolationForestScorer | GradientBoostingScorer
__all__ = ["Artifact", "ModelError", "dump_artifact", "load_artifact"]


@dataclass(frozen=True)
class Artifact:
    """A loaded, verified model: its scorer and its metadata."""

    scorer: Scorer
    metadata: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def kind(self) -> Kind:
        kind: Kind = self.metadata["kind"]
        return kind


def dump_artifact(scorer: Scorer, metadata: dict[str, Any], key: bytes) -> bytes:
    """The signed zip for `scorer`; `metadata` is stored with the scorer's own numbers."""
    if isinstance(scorer, GradientBoostingScorer):
        payload = scorer.booster.model_to_string().encode()
        numbers = {"positive_weight": scorer.positive_weight, "explain_at": scorer.explain_at}
    else:
        payload = sio.dumps(scorer.forest)
        numbers = {
            "fill": scorer.fill.tolist(),
            "anchors": scorer.anchors.tolist(),
            "spread": scorer.spread.tolist(),
            "explain_at": scorer.explain_at,
        }
    meta = {
        **metadata,
        "format": FORMAT,
        "version": scorer.version,
        "feature_names": list(scorer.feature_names),
        "scorer": numbers,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    meta_bytes = json.dumps(meta, sort_keys=True, default=str).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", meta_bytes)
        archive.writestr("payload", payload)
        archive.writestr("signature", _sign(key, meta_bytes, payload))
    return buffer.getvalue()


def load_artifact(data: bytes, key: bytes, source: str = "model") -> Artifact:
    """Verify and load an artifact; raises `ModelError` naming `source` and the fault."""
    meta_bytes, payload, signature = _members(data, source)
    if not hmac.compare_digest(signature, _sign(key, meta_bytes, payload)):
        raise ModelError(
            f"{source}: signature does not match: the file was changed after it was signed, "
            "or signed with another key"
        )
    try:
        meta = json.loads(meta_bytes)
        kind = meta["kind"]
        if meta["format"] != FORMAT or kind not in KINDS:
            raise ModelError(f"{source}: format {meta['format']} / kind {kind!r} unknown")
        if hashlib.sha256(payload).hexdigest() != meta["payload_sha256"]:
            raise ModelError(f"{source}: payload checksum does not match its metadata")
        scorer = _scorer(kind, meta, payload, source)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"{source}: malformed model metadata or payload: {error}") from None
    return Artifact(scorer, meta)


def _members(data: bytes, source: str) -> tuple[bytes, bytes, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = sorted(archive.namelist())
            if names != sorted(_MEMBERS):
                raise ModelError(f"{source}: expected members {_MEMBERS}, found {names}")
            meta, payload, signature = (archive.read(name) for name in _MEMBERS)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as error:
        raise ModelError(f"{source}: not a model artifact ({error})") from None
    return meta, payload, signature


def _scorer(kind: Kind, meta: dict[str, Any], payload: bytes, source: str) -> Scorer:
    names = tuple(str(name) for name in meta["feature_names"])
    numbers = meta["scorer"]
    if kind == "gradient_boosting":
        try:
            booster = lgb.Booster(model_str=payload.decode())
        except (lgb.basic.LightGBMError, UnicodeDecodeError) as error:
            raise ModelError(f"{source}: unreadable LightGBM model: {error}") from None
        if booster.num_feature() != len(names):
            raise ModelError(f"{source}: the model and its metadata disagree on its inputs")
        return GradientBoostingScorer(
            meta["version"], names, booster, float(numbers["positive_weight"]),
            float(numbers["explain_at"]),
        )  # fmt: skip
    named = _skops_types(payload, source)
    if not named <= _SKOPS_TYPES:
        outside = sorted(named - _SKOPS_TYPES)
        raise ModelError(f"{source}: payload names types outside the allowed list: {outside}")
    forest = sio.loads(payload, trusted=sorted(n for n in named if not n.startswith("loader:")))
    arrays = {name: np.asarray(numbers[name], dtype=np.float64) for name in _IF_ARRAYS}
    if any(arrays[name].shape != (len(names),) for name in ("fill", "spread")):
        raise ModelError(f"{source}: the model and its metadata disagree on its inputs")
    return IsolationForestScorer(
        meta["version"], names, forest, explain_at=float(numbers["explain_at"]), **arrays
    )


_IF_ARRAYS: Final = ("fill", "anchors", "spread")


def _skops_types(payload: bytes, source: str) -> set[str]:
    """Every type and loader a skops file's schema names, read as JSON (nothing imported).

    skops trusts most of scikit-learn by default; we trust only what an Isolation Forest
    needs, so the whole schema is walked rather than asking skops what it would not trust."""
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise ModelError(f"{source}: unreadable Isolation Forest payload ({error})") from None
    named: set[str] = set()
    pending: list[object] = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if "__class__" in node:
                named.add(f"{node.get('__module__')}.{node['__class__']}")
                named.add(f"loader:{node.get('__loader__')}")
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return named


def _sign(key: bytes, meta: bytes, payload: bytes) -> bytes:
    digest = hmac.new(key, meta, hashlib.sha256)
    digest.update(b"\0")
    digest.update(payload)
    return digest.hexdigest().encode()
