"""The names in a run's output dir, in one place (the run pipeline writes them; reports, resume and
clean-up read them). A run dir holds::

    config.json, model.safetensors, tokenizer files   the student, loadable by transformers as-is
    config.yaml                                       the resolved kdkit config (written when the run starts)
    metrics.json                                      final metrics; written last, it marks a finished run
    trainer_state.json, README.md                     the final trainer state, the model card
    logs/train.jsonl, logs/tb/                        training curves
    checkpoints/step-N/                               resumable state (`--resume`)
    best/                                             the best student so far (removed when the run ends)
    + the method's own files (``Method.run_files``, e.g. a knowledge base)
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.yaml"
METRICS = "metrics.json"
TRAINER_STATE = "trainer_state.json"
CARD = "README.md"
LOGS = "logs"
BEST = "best"
CHECKPOINTS = "checkpoints"


def checkpoint_dir(output_dir: Path) -> Path:
    return output_dir / CHECKPOINTS


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[1])


def step_dirs(output_dir: Path) -> list[Path]:
    """Every ``step-N`` dir, complete or not, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name.split("-")[1].isdigit()]
    return sorted(found, key=checkpoint_step)
