"""teacher.finetune: the teacher is fine-tuned once on the task, cached in KDKIT_HOME, and reused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import kdkit
from kdkit.config import load_config
from kdkit.teacher.finetuned import teacher_cache_dir
from tests.conftest import tiny_bert, tiny_config


def test_teacher_is_fine_tuned_once_and_reused(
    tiny_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tiny_bert(tmp_path / "base", layers=2)  # saved as a classifier, but we ask for fine-tuning
    raw = tiny_config(base, tiny_csv, tmp_path / "a")
    raw["teacher"]["finetune"] = {"max_steps": 3, "batch_size": 8, "lr": 1e-3}
    raw["student"] = {"layers": [1], "max_length": 16}
    raw["train"]["max_steps"] = 2
    first = kdkit.distill(raw)
    cache = teacher_cache_dir(load_config(raw))
    assert str(cache).startswith(os.environ["KDKIT_HOME"])
    assert (cache / "metrics.json").is_file() and not (cache / "checkpoints").exists()
    assert first.metrics["teacher"]["validation"]["accuracy"] >= 0
    stamp = (cache / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()

    raw["output_dir"] = str(tmp_path / "b")
    kdkit.finetune(raw, which="student")
    assert "using the cached fine-tuned teacher" in capsys.readouterr().err  # a note: stderr
    assert (cache / "model.safetensors").stat().st_mtime_ns == stamp

    raw["teacher"]["finetune"]["lr"] = 5e-4  # other training settings: another teacher
    assert teacher_cache_dir(load_config(raw)) != cache
