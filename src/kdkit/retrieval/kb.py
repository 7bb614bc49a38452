"""ReAugKD's knowledge base (Zhang et al., ACL 2023, Section 3): for every training example, the
L2-normalised projected teacher embedding (the key) and the teacher's soft label, with a FAISS index.

On disk (one directory, written atomically)::

    kb.safetensors   keys (N, D) float32, soft_labels (N, C) float32, projection (D, D_teacher) float32
    index.faiss      the FAISS index over the keys (see ``kdkit.retrieval.index``)
    meta.json        version, teacher and data fingerprints, dims, temperature, pooling, index settings,
                     label names, and the sha256 of the two files above (corruption is detected on load)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from kdkit.errors import KdkitError
from kdkit.io import atomic_dir, file_digest
from kdkit.losses.relational import aggregate_neighbours
from kdkit.retrieval.index import IndexSpec, build_index, load_index, save_index, search

KB_VERSION = 1


@dataclass
class KnowledgeBase:
    keys: Tensor  # (N, D) float32, L2-normalised projected teacher embeddings
    soft_labels: Tensor  # (N, C) float32, teacher probabilities at meta["label_temperature"]
    projection: Tensor  # (D, D_teacher) the teacher projection head's weight (y = x W^T)
    meta: dict[str, Any] = field(default_factory=dict)
    index: faiss.Index | None = None

    def __post_init__(self) -> None:
        if self.keys.shape[0] != self.soft_labels.shape[0]:
            raise KdkitError(
                f"knowledge base: {self.keys.shape[0]} keys but {self.soft_labels.shape[0]} soft labels"
            )
        if self.index is None:
            spec = IndexSpec(**self.meta.get("index", {}))
            self.index = build_index(self.keys.numpy(), spec)

    def __len__(self) -> int:
        return self.keys.shape[0]

    @property
    def dim(self) -> int:
        return self.keys.shape[1]

    def search(self, queries: Tensor, k: int, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Cosine top-``k``: (similarities (Q, k), ids (Q, k)); ``exclude`` (Q,) is each query's own id."""
        q = torch.nn.functional.normalize(queries.detach().float().cpu(), dim=-1).numpy()
        ex = None if exclude is None else exclude.detach().cpu().numpy()
        assert self.index is not None
        sims, ids = search(self.index, q, k, ex)
        return torch.from_numpy(sims), torch.from_numpy(ids)

    def retrieve(self, queries: Tensor, k: int, temperature: float, exclude: Tensor | None = None) -> Tensor:
        """The neighbours' soft labels averaged with weights softmax(sim / temperature): (Q, C)."""
        sims, ids = self.search(queries, k, exclude)
        labels = self.soft_labels[ids.clamp(min=0)]  # (Q, k, C); missing ids have weight 0 via their sim
        return aggregate_neighbours(sims, labels, temperature)

    def check_matches(self, provenance: dict[str, Any], where: str | Path) -> None:
        """Refuse a stale KB: one built from another teacher, other training data or other settings.

        ``provenance`` is what this run would build from: ``{"teacher": fingerprint, "data": fingerprint,
        "settings": {...}}``, compared with the ``provenance`` stored in meta.json.
        """
        found = self.meta.get("provenance", {})
        for what, label in (("teacher", "teacher"), ("data", "training data")):
            if found.get(what) != provenance[what]:
                raise KdkitError(
                    f"knowledge base {where} was built from a different {label} (fingerprint "
                    f"{str(found.get(what))[:12]} != {provenance[what][:12]}); rebuild it with "
                    "`kdkit kb build` or remove it"
                )
        theirs = found.get("settings", {})
        for key, value in provenance["settings"].items():
            if theirs.get(key) != value:
                raise KdkitError(
                    f"knowledge base {where} was built with {key}={theirs.get(key)!r}, this run asks for "
                    f"{value!r}; rebuild it with `kdkit kb build` or remove it"
                )

    def save(self, path: str | Path) -> None:
        """Write the KB directory atomically (a reader never sees half a KB)."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            tensors = {"keys": self.keys, "soft_labels": self.soft_labels, "projection": self.projection}
            save_file({k: v.contiguous().float() for k, v in tensors.items()}, tmp / "kb.safetensors")
            assert self.index is not None
            save_index(self.index, tmp / "index.faiss")
            meta = {
                **self.meta,
                "version": KB_VERSION,
                "entries": len(self),
                "dim": self.dim,
                "num_labels": self.soft_labels.shape[1],
                "sha256": {f: file_digest(tmp / f) for f in ("kb.safetensors", "index.faiss")},
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        self.meta = meta

    @classmethod
    def load(cls, path: str | Path) -> KnowledgeBase:
        """Read a KB directory, checking its version and the checksums of its files."""
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.is_file():
            raise KdkitError(
                f"no knowledge base at {path} (meta.json missing); build one with `kdkit kb build`"
            )
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as err:
            raise KdkitError(f"knowledge base {meta_file} is corrupt ({err}); rebuild it") from None
        if meta.get("version") != KB_VERSION:
            raise KdkitError(
                f"knowledge base {path} has version {meta.get('version')}, this kdkit reads {KB_VERSION}; "
                "rebuild it with `kdkit kb build`"
            )
        for name, digest in meta.get("sha256", {}).items():
            file = path / name
            if not file.is_file() or file_digest(file) != digest:
                raise KdkitError(
                    f"knowledge base file {file} is missing or corrupt (checksum); rebuild the KB"
                )
        tensors = load_file(path / "kb.safetensors")
        index = load_index(path / "index.faiss")
        return cls(tensors["keys"], tensors["soft_labels"], tensors["projection"], meta, index)
