"""Exclusive locks on the dirs kdkit writes (a run's output dir, a teacher cache, a knowledge base, a
converted asset), held for the life of the work, so that two processes never write one dir at once.

The lock is an ``flock`` on ``<dir>/.kdkit.lock``, which records the holder's pid and host. The kernel
releases it when its process dies, even by SIGKILL: a lock left by a killed process is simply taken over
(said on stderr, naming the dead pid). A second process either stops with one line naming the holder
(``wait=False``: runs, caches) or waits for it (``wait=True``: a fine-tuned teacher that two runs need).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from kdkit.errors import KdkitError, note

LOCK = ".kdkit.lock"


def make_dir(path: Path, what: str) -> None:
    """Create ``path`` (and its parents), naming the problem in one line when it cannot be."""
    if path.exists() and not path.is_dir():
        raise KdkitError(f"{what} '{path}' is a file, not a directory; choose a directory")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise KdkitError(f"{what} '{path}' cannot be created: '{parent}' is a file; choose another path")
        if parent.exists():
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise KdkitError(
            f"{what} '{path}' cannot be created ({err.strerror}); choose a writable path"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise KdkitError(f"{what} '{path}' is not writable; fix its permissions or choose another path")


def _holder(fd: int) -> tuple[int, str] | None:
    """(pid, host) recorded in an open lock file, if any."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 256).decode(errors="replace").split()
    if len(text) >= 2 and text[0].isdigit():
        return int(text[0]), text[1]
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def dir_lock(path: Path, what: str, *, wait: bool = False) -> contextlib.AbstractContextManager[None]:
    """Hold the exclusive lock of dir ``path`` (created if missing) for the life of the block.

    ``what`` names the dir in messages ("output dir", "teacher cache", ...). Raises ``KdkitError`` naming
    the holder's pid and host when another process holds it and ``wait`` is False.
    """
    path = Path(path)
    make_dir(path, what)
    return _locked(path / LOCK, path, what, wait)


def path_lock(path: Path, what: str, *, wait: bool = False) -> contextlib.AbstractContextManager[None]:
    """Like ``dir_lock`` for a dir that is replaced as a whole when written (``kdkit.io.atomic_dir``: a
    knowledge base, a converted asset): the lock file sits beside it, ``.<name>.kdkit.lock``."""
    path = Path(path)
    make_dir(path.parent, f"the parent of {what}")
    return _locked(path.parent / f".{path.name}{LOCK}", path, what, wait)


@contextlib.contextmanager
def _locked(lock_file: Path, path: Path, what: str, wait: bool) -> Iterator[None]:
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise KdkitError(f"{what} '{path}': cannot create its lock file ({err.strerror})") from None
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            pid, host = _holder(fd) or (0, "?")
            if not wait:
                raise KdkitError(
                    f"{what} '{path}' is in use by another kdkit process (pid {pid} on {host}); wait for it to "
                    "finish, or use another dir"
                ) from None
            note(f"waiting for kdkit process {pid} on {host}, which holds {what} '{path}'")
            fcntl.flock(fd, fcntl.LOCK_EX)
        held = True
        me, host = os.getpid(), socket.gethostname()
        before = _holder(fd)
        if before is not None and before != (me, host) and before[1] == host and not _alive(before[0]):
            note(f"{what} '{path}': taking over the lock left by process {before[0]} (no longer running)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{me} {host}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            if held:  # a clean release leaves no holder behind (a killed process leaves its pid)
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
