"""The teacher to distill from: as named, or fine-tuned on the task first and cached in KDKIT_HOME.

With ``teacher.finetune`` set, the teacher is fine-tuned with those training settings on the run's data
and cached under ``$KDKIT_HOME/teachers/<key>``, the key a hash of the teacher settings, the data settings
and the data files' contents, so a second run (or the demo run twice) reuses it. An interrupted
fine-tuning resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

from accelerate import Accelerator

from kdkit.config import Config, kdkit_home
from kdkit.data import resolve_data_path
from kdkit.errors import KdkitError
from kdkit.io import file_digest
from kdkit.structured import to_dict

CACHE_VERSION = 1


def teacher_cache_key(config: Config) -> str:
    """Hash of everything that changes the fine-tuned teacher: model, training, task and data (contents)."""
    data = to_dict(config.data)
    files = {}
    if config.data.dataset is None:
        for split in ("train", "validation", "test"):
            value = getattr(config.data, split)
            if value is not None:
                path = resolve_data_path(value, config.data)
                files[split] = file_digest(path) if path.is_file() else str(path)
    data.pop("root", None)  # where the files live does not matter, what they hold does
    for split in files:
        data.pop(split, None)
    payload = {
        "version": CACHE_VERSION,
        "task": config.task,
        "teacher": to_dict(config.teacher),
        "data": data,
        "files": files,
        "eval_metrics": config.eval.metrics,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def teacher_cache_dir(config: Config) -> Path:
    name = Path(str(config.teacher.model)).name.replace("/", "--")
    return kdkit_home() / "teachers" / f"{name}-{config.task}-{teacher_cache_key(config)}"


def resolve_teacher(config: Config, accelerator: Accelerator) -> str:
    """Name or path of the teacher to load; fine-tunes (or reuses) a cached one when teacher.finetune is set."""
    if not config.teacher.model:
        raise KdkitError("teacher.model is not set; name a hub id, a local dir or an asset (`kdkit ls`)")
    if config.teacher.finetune is None:
        return config.teacher.model
    out = teacher_cache_dir(config)
    if (out / "metrics.json").is_file():
        accelerator.print(f"using the cached fine-tuned teacher {out}")
        return str(out)
    accelerator.print(f"fine-tuning the teacher '{config.teacher.model}' first (cached in {out})")
    from kdkit.train.run import run  # late import: run imports this module

    teacher_run = replace(
        config,
        output_dir=str(out),
        student=replace(config.teacher, finetune=None),
        train=config.teacher.finetune,
        eval=replace(config.eval, agreement=False),
    )
    run(teacher_run, kind="finetune", which="teacher", resume=True, accelerator=accelerator)
    if accelerator.is_main_process:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # optimizer state is not needed any more
    accelerator.wait_for_everyone()
    return str(out)
