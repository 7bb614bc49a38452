"""Checkpoints: full training state (Accelerate ``save_state``) written atomically, verified, found, pruned.

``checkpoints/step-N/`` holds the student and the loss module (``model.safetensors``), the optimizer, every
process's RNG states, the LR scheduler and ``trainer_state.json``. That file is written last, inside a temp
dir that is then renamed, so a killed save never leaves a half checkpoint under a final name; it also holds
the sha256 of every other file of the checkpoint (``files``), checked on ``--resume``: a truncated or
corrupt checkpoint is named and skipped for the one before it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from kdkit.errors import KdkitError, warn
from kdkit.io import atomic_write_json, check_free_space, file_digest, free_space_hint, fsync_file
from kdkit.layout import checkpoint_dir, checkpoint_step, step_dirs

STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.pt"
MANIFEST = "files"  # key of trainer_state.json: {relative path: sha256} of the checkpoint's other files
_TEMP_PREFIXES = (".tmp-step-", ".old-step-", ".del-step-")


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    best_metric: float | None = None
    best_step: int | None = None
    examples_seen: int = 0
    train_seconds: float = 0.0


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (with a state file), oldest first."""
    return [p for p in step_dirs(output_dir) if (p / STATE_FILE).is_file()]


def _manifest(path: Path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != STATE_FILE)
    for p in files:  # on disk before the rename publishes them
        fsync_file(p)
    return {p.relative_to(path).as_posix(): file_digest(p) for p in files}


def remove_temp_checkpoints(output_dir: Path) -> None:
    """Clean up after a killed save or prune (main process only).

    A kill between the two renames of a re-saved step leaves no ``step-N`` but its new (``.tmp-step-N``)
    and old (``.old-step-N``) copies: the complete one is promoted to ``step-N`` (the new one first). Then
    every temp dir goes: a save's unfinished ``.tmp-step-N``, a swap's ``.old-step-N`` and a prune's
    ``.del-step-N``.
    """
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return
    steps = {p.name.rsplit("-", 1)[-1] for p in root.iterdir() if p.name.startswith(_TEMP_PREFIXES[:2])}
    for n in sorted(steps):
        final = root / f"step-{n}"
        for candidate in (root / f".tmp-step-{n}", root / f".old-step-{n}"):
            if not final.exists() and candidate.is_dir() and checkpoint_problem(candidate) is None:
                os.replace(candidate, final)
    for p in root.iterdir():
        if p.name.startswith(_TEMP_PREFIXES):
            shutil.rmtree(p, ignore_errors=True)


def _discard(path: Path) -> None:
    """Delete a checkpoint dir so that a kill part-way never leaves a half of it under its own name: renamed
    to ``.del-step-N`` first (one atomic step), then removed."""
    doomed = path.parent / f".del-{path.name}"
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def save_checkpoint(
    accelerator: Accelerator, output_dir: Path, state: TrainerState, scheduler: Any, keep: int
) -> Path:
    """Save into a temp dir, then rename to ``checkpoints/step-N``: a crash leaves no half checkpoint.

    Checkpoints of later steps (left by a run that was resumed from before them, e.g. past a corrupt one)
    are removed, then all but the newest ``keep``.
    """
    root = checkpoint_dir(output_dir)
    final = root / f"step-{state.step}"
    tmp = root / f".tmp-step-{state.step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        check_free_space(root, _expected_size(output_dir, accelerator), f"checkpoint step-{state.step}")
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
    except (OSError, RuntimeError) as err:  # a full disk shows as either (torch: "enforce fail at ...")
        shutil.rmtree(tmp, ignore_errors=True)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise KdkitError(
            f"writing checkpoint step-{state.step} in '{root}' failed ({first}); {free_space_hint(root)}; "
            "the checkpoints before it are intact: free space, then continue with --resume"
        ) from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        # written last, with the checksums of everything else: marks the checkpoint complete
        atomic_write_json(tmp / STATE_FILE, {**asdict(state), MANIFEST: _manifest(tmp)})
        if final.exists():  # the same step saved again (a resumed run): swap, never a moment without it
            old = root / f".old-step-{state.step}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        for path in step_dirs(output_dir):
            if checkpoint_step(path) > state.step:
                _discard(path)
        for old_checkpoint in step_dirs(output_dir)[:-keep]:
            _discard(old_checkpoint)
    accelerator.wait_for_everyone()
    return final


def _expected_size(output_dir: Path, accelerator: Accelerator) -> int:
    """Bytes the next checkpoint takes: the newest one's size, else the weights and two AdamW moments."""
    found = list_checkpoints(output_dir)
    if found:
        return sum(p.stat().st_size for p in found[-1].rglob("*") if p.is_file())
    params = [p for model in getattr(accelerator, "_models", []) for p in model.parameters()]
    return 3 * sum(p.numel() * p.element_size() for p in params)


def _read_state(path: Path) -> TrainerState:
    """The trainer state of checkpoint ``path`` (its state file, less the manifest)."""
    saved = json.loads((path / STATE_FILE).read_text())
    return TrainerState(**{k: v for k, v in saved.items() if k != MANIFEST})


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint ``path`` cannot be resumed from (naming the file), or None when it is sound.

    Checks that the state file parses and that every file in its manifest is there with its sha256.
    Checkpoints written before manifests existed are taken as they are.
    """
    state_file = path / STATE_FILE
    if not state_file.is_file():
        return f"{state_file} is missing (incomplete checkpoint)"
    try:
        _read_state(path)
    except (ValueError, TypeError) as err:
        return f"{state_file} is unreadable ({str(err).splitlines()[0]})"
    for name, digest in json.loads(state_file.read_text()).get(MANIFEST, {}).items():
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        if file_digest(file) != digest:
            return f"{file} is corrupt (sha256 mismatch)"
    return None


def find_resumable(output_dir: Path) -> Path | None:
    """The newest sound checkpoint; a corrupt newer one is named in a warning and skipped. None when there
    is no checkpoint; a KdkitError naming each when none is sound."""
    bad = []
    for path in reversed(step_dirs(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            for skipped, why in bad:
                warn(f"checkpoint {skipped} is unusable: {why}; resuming from {path.name} instead")
            return path
        bad.append((path, problem))
    if bad:
        raise KdkitError(
            f"no usable checkpoint in {checkpoint_dir(output_dir)}: "
            + "; ".join(why for _, why in bad)
            + "; delete the checkpoints dir to start over (or pass --overwrite)"
        )
    return None


def load_checkpoint(accelerator: Accelerator, path: Path, scheduler: Any) -> TrainerState:
    """Restore model, optimizer, RNG states (Accelerate) and the LR scheduler; return the trainer state."""
    try:
        state = _read_state(path)
        accelerator.load_state(str(path))
        scheduler.load_state_dict(torch.load(path / SCHEDULER_FILE, weights_only=False))
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise KdkitError(
            f"checkpoint '{path}' is unreadable ({first}); delete it to resume from an earlier one"
        ) from None
    return state
