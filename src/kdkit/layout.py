"""The names in a run's output dir, in one place (the run pipeline writes them; reports, resume and
clean-up read them). A run dir holds::

    config.json, model.safetensors, tokenizer files   the student, loadable by transformers as-is
    config.yaml                                       the resolved kdkit config (written when the run starts)
    metrics.json                                      final metrics; written last, it marks a finished run
    trainer_state.json, README.md                     the final trainer state, the model card
    logs/train.jsonl, logs/tb/                        training curves
    checkpoints/step-N/                               resumable state (`--resume`)
    best/                                             the best student so far (removed when the run ends)
    generations/, teacher_generations.jsonl           causal LMs: greedy answers, teacher responses
    .kdkit-run.json                                   marks a kdkit run: version, what it was trained on
    .kdkit.lock                                       held by the process that runs it (kdkit.lock)
    + the method's own files (``Method.run_files``, e.g. a knowledge base)

Only these names are ever deleted by kdkit (`--overwrite`): a user's own files in a run dir stay.
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
GENERATIONS_DIR = "generations"
TEACHER_GENERATIONS = "teacher_generations.jsonl"
MARKER = ".kdkit-run.json"
LOCK = ".kdkit.lock"
FINAL_STAGING = ".final"
# what kdkit writes at the top of a run dir besides the saved model's files (recorded in the marker)
RUN_NAMES = (
    CONFIG, METRICS, TRAINER_STATE, CARD, LOGS, BEST, CHECKPOINTS, GENERATIONS_DIR, TEACHER_GENERATIONS,
    TEACHER_GENERATIONS + ".partial", FINAL_STAGING, MARKER,
)  # fmt: skip
# the files of a saved Hugging Face model and tokenizer (runs written before the marker recorded them)
MODEL_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
    "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "tokenizer.model",
)  # fmt: skip


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
