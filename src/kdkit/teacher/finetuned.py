"""Where a teacher fine-tuned by kdkit (``teacher.finetune``) is kept: ``$KDKIT_HOME/teachers/<key>``.

The key hashes everything that changes the fine-tuned teacher: the teacher settings, the task, the data
settings and the data files' contents (not where they live), so a second run, or the demo run twice,
reuses it. ``kdkit.train.teacher.resolve_teacher`` fine-tunes it there when it is missing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kdkit.config import Config, kdkit_home
from kdkit.data import resolve_data_path
from kdkit.io import file_digest
from kdkit.structured import to_dict

CACHE_VERSION = 1
# teacher settings that do not change the fine-tuned teacher (how it is checked and combined with others)
_NOT_TRAINING = ("check", "weight", "combine")


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
        "teacher": {k: v for k, v in to_dict(config.teacher).items() if k not in _NOT_TRAINING},
        "data": data,
        "files": files,
        "eval_metrics": config.eval.metrics,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def teacher_cache_dir(config: Config) -> Path:
    name = Path(str(config.teacher.model)).name.replace("/", "--")
    return kdkit_home() / "teachers" / f"{name}-{config.task}-{teacher_cache_key(config)}"
