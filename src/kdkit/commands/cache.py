"""`kdkit cache`: run a config's teacher once over its training set and store its outputs (``cache.dir``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from kdkit.config import Config, load_config
from kdkit.errors import KdkitError
from kdkit.family import family_for
from kdkit.lock import dir_lock
from kdkit.methods import METHODS
from kdkit.runtime import make_accelerator
from kdkit.teacher.build import build_cache, compact_copy
from kdkit.train.run import resolve_teacher


def build_cache_for_config(
    config: str | Path | dict[str, Any] | Config,
    overrides: list[str] | None = None,
    output: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Build (or finish) the teacher cache of ``config`` in ``output`` or ``cache.dir``; returns its dir and
    meta. The teacher is fine-tuned first when ``teacher.finetune`` asks (classifiers)."""
    config = load_config(config, overrides)
    if not (output or config.cache.dir):
        raise KdkitError("set cache.dir (or pass --output DIR): where the teacher cache goes")
    root = Path(output or config.cache.dir or "")
    family = family_for(config.task)
    family.check_cache_use(config, METHODS.get(config.method.name))
    accelerator = make_accelerator(config)

    def job() -> Any:  # loads the data and the teacher: only when there is work to do
        return family.cache_job(config, resolve_teacher(config, accelerator), accelerator, root)

    lock = dir_lock(root, "teacher cache") if accelerator.is_main_process else contextlib.nullcontext()
    with lock:  # one process writes a cache dir at a time
        return root, build_cache(root, job, config.cache, accelerator)


def compact_cache_for_config(
    config: str | Path | dict[str, Any] | Config,
    overrides: list[str] | None,
    output: str | None,
    source: str,
) -> tuple[Path, dict[str, Any]]:
    """Write the plain causal-LM cache ``source`` again in the compact format, in ``output`` or
    ``cache.dir`` (the teacher is not run); returns that dir and its meta."""
    config = load_config(config, overrides)
    if not (output or config.cache.dir):
        raise KdkitError("set cache.dir (or pass --output DIR): where the compact cache goes")
    root = Path(output or config.cache.dir or "")
    if root.resolve() == Path(source).resolve():
        raise KdkitError(f"--compact-from {source} is the destination too; write the compact copy elsewhere")
    with dir_lock(root, "teacher cache"):
        return root, compact_copy(Path(source), root)
