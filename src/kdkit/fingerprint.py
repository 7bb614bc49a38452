"""Fingerprints that tie a derived artifact (a ReAugKD knowledge base, a teacher cache) to what made it:
the model's files and the data's contents. A mismatch means the artifact is stale."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kdkit.io import file_digest

_MODEL_FILES = ("config.json", "*.safetensors", "*.bin", "*.gguf")


def model_fingerprint(name_or_dir: str | Path) -> str:
    """sha256 over a local model dir's config and weight files (names and contents); for a hub id that is
    not a local dir, over the id itself (a new revision under the same id is not detected)."""
    from kdkit.models import resolve_model_name  # late import: models import data, data imports config

    path = Path(resolve_model_name(str(name_or_dir)))
    h = hashlib.sha256()
    if not path.is_dir():
        h.update(f"hub:{name_or_dir}".encode())
        return h.hexdigest()
    files = sorted({f for pattern in _MODEL_FILES for f in path.glob(pattern) if f.is_file()})
    for f in files:
        h.update(f"{f.name}:{file_digest(f)}\n".encode())
    return h.hexdigest()


def split_fingerprint(texts: list[str], text_pairs: list[str] | None, labels: Any) -> str:
    """sha256 over one split's texts, text pairs and labels, in order."""
    h = hashlib.sha256()
    h.update(json.dumps([texts, text_pairs, [float(v) for v in labels]]).encode())
    return h.hexdigest()
