"""Checkpoints: full training state (Accelerate ``save_state``) written atomically, found, pruned."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from kdkit.errors import KdkitError
from kdkit.io import atomic_write_json

STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.pt"


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    best_metric: float | None = None
    best_step: int | None = None
    examples_seen: int = 0
    train_seconds: float = 0.0


def checkpoint_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (with a state file), oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(
    accelerator: Accelerator, output_dir: Path, state: TrainerState, scheduler: Any, keep: int
) -> Path:
    """Save into a temp dir, then rename to ``checkpoints/step-N``: a crash leaves no half checkpoint."""
    root = checkpoint_dir(output_dir)
    final = root / f"step-{state.step}"
    tmp = root / f".tmp-step-{state.step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        atomic_write_json(tmp / STATE_FILE, asdict(state))  # written last: marks the checkpoint complete
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path, scheduler: Any) -> TrainerState:
    """Restore model, optimizer, RNG states (Accelerate) and the LR scheduler; return the trainer state."""
    try:
        state = TrainerState(**json.loads((path / STATE_FILE).read_text()))
        accelerator.load_state(str(path))
        scheduler.load_state_dict(torch.load(path / SCHEDULER_FILE, weights_only=False))
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise KdkitError(
            f"checkpoint '{path}' is unreadable ({err}); delete it to resume from an earlier one"
        ) from None
    return state
