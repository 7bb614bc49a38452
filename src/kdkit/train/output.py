"""A run's output dir: claimed when the run starts (one run per dir), and the final files written at the
end in an order that a kill at any point cannot spoil (see ``kdkit.layout`` for what the dir holds)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kdkit.config import Config
from kdkit.errors import KdkitError
from kdkit.io import atomic_dir, atomic_write_json, atomic_write_text
from kdkit.layout import BEST, CONFIG, LOGS, METRICS, TRAINER_STATE
from kdkit.methods.base import Method
from kdkit.models import save_model
from kdkit.report.card import write_model_card
from kdkit.train.checkpoint import TrainerState


def prepare_output_dir(
    config: Config, resume: bool, overwrite: bool, main: bool, keep: tuple[str, ...] = ()
) -> Path:
    """Refuse to mix two runs in one dir: a different run there needs --overwrite (or --resume if same).

    ``keep`` are names the run's method may find there ahead of the run (e.g. a knowledge base built by
    `kdkit kb build`). Only the main process checks and writes (the others would see its config.yaml
    appear); callers wait for it before going on.
    """
    out = Path(config.output_dir)
    saved = out / CONFIG
    if not main:
        return out
    if out.exists() and not resume and not overwrite and _nothing_to_keep(out, keep):
        # a run that failed before its first checkpoint (e.g. a bad column): retrying it needs no flag
        saved.unlink()
        shutil.rmtree(out / LOGS, ignore_errors=True)
    if out.exists() and any(p.name not in keep for p in out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not resume:
            raise KdkitError(
                f"output dir '{out}' already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or set output_dir"
            )
        elif saved.is_file() and saved.read_text() != config.to_yaml():
            raise KdkitError(
                f"output dir '{out}' holds a run with a different config; compare {saved} with your config, "
                "or pass --overwrite"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, config.to_yaml())
    return out


def _nothing_to_keep(out: Path, keep: tuple[str, ...]) -> bool:
    """True when ``out`` holds only what a run writes before its first checkpoint (its config.yaml and
    logs) besides the method's own files: nothing a restart would lose."""
    names = {p.name for p in out.iterdir()}
    return CONFIG in names and names <= {CONFIG, LOGS, *keep}


def finished_metrics(out: Path) -> dict[str, Any] | None:
    """The metrics of a finished run in ``out`` (metrics.json is written last), else None."""
    path = out / METRICS
    return json.loads(path.read_text()) if path.is_file() else None


def save_final(
    out: Path,
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    metrics: dict[str, Any],
    state: TrainerState,
    method: Method,
) -> None:
    """Write the student beside a temp name, move each file over the old one, the method's files, then
    metrics.json last (its presence marks a finished run), then remove best/. Main process only."""
    with atomic_dir(out / ".final") as tmp:
        save_model(student, tokenizer, tmp)
    for item in (out / ".final").iterdir():
        item.replace(out / item.name)  # atomic per file
    (out / ".final").rmdir()
    method.save_files(out)
    atomic_write_json(out / TRAINER_STATE, asdict(state))
    write_model_card(out, metrics)  # README.md: method, paper, teacher, data, metrics, command, versions
    atomic_write_json(out / METRICS, metrics)
    # only now: a run killed before metrics.json is resumed (--resume) and reloads best/ again
    shutil.rmtree(out / BEST, ignore_errors=True)


def finished_run_note(out: Path, accelerator: Accelerator) -> None:
    accelerator.print(f"{out} holds a finished run ({METRICS}); nothing to resume")
