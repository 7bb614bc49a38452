"""Atomic writes: a file or directory appears complete under its final name, or not at all."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdkit.errors import KdkitError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``.

    The file gets the permissions of a plain ``open()`` (0o666 less the umask), not mkstemp's 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish(tmp: str | Path, path: str | Path) -> None:
    """Give a finished temp file (written by a library, e.g. safetensors or FAISS) plain file permissions,
    flush it to disk and rename it over ``path``."""
    os.chmod(tmp, 0o666 & ~_umask())
    fsync_file(tmp)
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """``atomic_write_bytes`` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp dir beside ``path``; on success it replaces ``path`` (old contents removed last)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # a plain mkdir's permissions, not mkdtemp's 0o700
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_tree(tmp)
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fsync_file(path: str | Path) -> None:
    """Flush a file's data to disk (before a rename publishes it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """Flush every file under ``root`` to disk (before a rename publishes them)."""
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            fsync_file(path)


def remove_leftovers(directory: str | Path, names: list[str]) -> list[Path]:
    """Delete what a killed atomic write of each of ``names`` left in ``directory``: the temp files of
    ``atomic_write_*`` (``.NAME.xxxx``) and the temp/old dirs of ``atomic_dir`` (``.NAME.tmp-*``,
    ``.NAME.old-*``). The final names are never touched. Returns what was removed."""
    removed = []
    for name in names:
        for path in sorted(Path(directory).glob(f".{name}.*")):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def free_bytes(path: str | Path) -> int:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def free_space_hint(path: str | Path) -> str:
    """``"N GiB free on its disk"`` for messages about a failed write."""
    return f"{_size(free_bytes(path))} free on the disk of '{path}'"


def check_free_space(path: str | Path, needed: int, what: str) -> None:
    """Refuse to start a write of about ``needed`` bytes under ``path`` that the disk cannot hold."""
    free = free_bytes(path)
    if needed > free:
        raise KdkitError(
            f"not enough disk space for {what} in '{path}': about {_size(needed)} needed, {_size(free)} free; "
            "free some space or write elsewhere"
        )
