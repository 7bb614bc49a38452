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
from kdkit.teacher.build import build_cache
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
