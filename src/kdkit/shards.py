"""Checksummed shard files: the unit of resumable work for the teacher cache and the knowledge-base build.

``shard-00000.safetensors`` is written atomically (temp file + rename), then its ``.sha256`` sidecar; a shard
counts as done once both exist and agree, so a build killed at any point redoes only the shard it was in.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

from kdkit.io import atomic_write_text, file_digest, publish, remove_leftovers


def shard_path(root: Path, i: int) -> Path:
    return root / f"shard-{i:05d}.safetensors"


def sum_path(shard: Path) -> Path:
    return shard.with_suffix(".sha256")


def write_shard(
    root: Path, i: int, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write shard ``i`` atomically, then its checksum (the shard counts as done once both exist)."""
    path = shard_path(root, i)
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=root)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        publish(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    atomic_write_text(sum_path(path), file_digest(path) + "\n")


def remove_shard_leftovers(root: Path, names: list[str]) -> None:
    """Delete the temp files that writes killed mid-way left in ``root``: temp shards (``.shard-*``) and
    temp copies of ``names``. Atomic writes create final names only by renaming, so none is complete."""
    remove_leftovers(root, ["shard-*", *names])


def shard_done(root: Path, i: int) -> bool:
    """True when shard ``i`` exists and matches its recorded checksum (a torn or stale shard is redone)."""
    path, sums = shard_path(root, i), sum_path(shard_path(root, i))
    return path.is_file() and sums.is_file() and sums.read_text().strip() == file_digest(path)
