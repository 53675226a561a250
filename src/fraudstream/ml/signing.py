"""The key that signs model files (see `ml.artifact`), kept apart so that a worker can find it
without importing the model libraries."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def signing_key(configured: str | None, data_dir: Path) -> bytes:
    """The configured key, or this machine's own (created once, readable by its owner only)
    when none is configured: every worker of a deployment on several machines needs the
    same configured key."""
    if configured:
        return configured.encode()
    path = data_dir / "model-signing.key"
    if not path.exists():  # written aside, then linked: two starting workers agree on one key
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f"{path.name}.{secrets.token_hex(4)}")
        draft.touch(mode=0o600)
        draft.write_text(secrets.token_hex(32))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip().encode()
