"""Fingerprints that tie a derived artifact (a knowledge base, a teacher cache) to what made it:
the model's files and the data's contents. A mismatch means the artifact is stale."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kdkit.io import file_digest
from kdkit.models.load import resolve_model_name

_MODEL_FILES = ("config.json", "*.safetensors", "*.bin", "*.gguf")


def model_fingerprint(name_or_dir: str | Path) -> str:
    """sha256 over a local model dir's config and weight files (names and contents); for a hub id that is
    not a local dir, over the id itself (a new revision under the same id is not detected)."""
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


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over what turns text into ids: the tokenizer class, vocabulary, special tokens and (fast
    tokenizers) the pipeline (normalizer, pre-tokenizer, model, post-processor)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pipeline = None
    if backend is not None:
        pipeline = json.loads(backend.to_str())
        pipeline.pop("truncation", None)  # call-time settings, not part of how text becomes ids
        pipeline.pop("padding", None)
    payload = [type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens]
    h = hashlib.sha256(json.dumps(payload).encode())
    h.update(json.dumps(pipeline, sort_keys=True).encode())
    return h.hexdigest()


def ids_fingerprint(*columns: Any) -> str:
    """sha256 over token-id columns (lists of lists of ints, or None), in order: ties an artifact to the
    exact inputs a model saw (data, tokenizer, templates and max length at once)."""
    h = hashlib.sha256()
    for column in columns:
        h.update(json.dumps(column).encode())
        h.update(b"|")
    return h.hexdigest()
