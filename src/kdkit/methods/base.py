"""What every method provides, and the plain task loss used by `kdkit finetune`.

A method module defines:

- ``Config``: a dataclass whose first field is ``name``; defaults from the method's paper, ranges checked
  in ``__post_init__``;
- ``Loss(nn.Module)``: built once per run by ``Loss(config, context)``; it may own trainable parameters
  (e.g. projections), which are optimised and checkpointed with the student but not saved into it;
  ``forward(student_out, teacher_out, batch) -> LossOutput``;
- ``check(config, task)``: raises ``KdkitError`` when the method cannot run on a task;
- ``PAPER``: a one-line citation of the paper it follows (model cards and reports);
- optionally ``prepare(config, env: PrepareEnv) -> dict``: work before training whose result reaches the
  loss as ``LossContext.resources`` (ReAugKD's knowledge base).

The math lives in ``kdkit.losses``; a method only wires model outputs to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig


@dataclass
class LossContext:
    """What a method may need to build its loss."""

    task: str  # "classification" | "regression" | "causal_lm"
    num_labels: int
    teacher_config: PretrainedConfig | None
    student_config: PretrainedConfig
    student_layers: list[int] | None = None  # teacher layers the student was cut from, if it was
    same_tokenizer: bool = True
    vocab_size: int | None = None  # causal_lm: the shared real vocabulary (logits compared on [:vocab_size])
    seed: int = 0  # train.seed, for methods that draw random numbers (e.g. MixKD's pairs)
    resources: dict[str, Any] = field(
        default_factory=dict
    )  # what the method's prepare() built (ReAugKD's KB)


@dataclass
class PrepareEnv:
    """What a method's optional ``prepare(config, env) -> resources`` hook may use before training (e.g.
    ReAugKD builds its knowledge base with the teacher over the training set)."""

    config: Any  # the run's kdkit Config
    teacher: nn.Module | None  # None when training from a teacher cache (cache.dir)
    teacher_name: str  # name or dir the teacher was loaded from (for fingerprints)
    student: nn.Module
    train_set: Any  # DistillDataset of the training split (teacher side included)
    collate: Any
    accelerator: Any
    output_dir: Path
    label_names: list[str] | None


@dataclass
class LossOutput:
    loss: Tensor  # scalar that is back-propagated
    # detached scalars for the logs; "distill" is the distillation part (zero when student == teacher)
    parts: dict[str, Tensor] = field(default_factory=dict)


class MethodSpec(Protocol):
    """The module-level interface of a method (see the module docstring)."""

    Config: type
    Loss: Callable[..., nn.Module]
    needs_teacher: bool

    def check(self, config: Any, task: str) -> None: ...


def task_loss(logits: Tensor, labels: Tensor, task: str) -> Tensor:
    """Cross-entropy on class ids, or MSE on real targets (logits (N, 1) for regression)."""
    if task == "regression":
        return F.mse_loss(logits.float().reshape(-1), labels.float().reshape(-1))
    return F.cross_entropy(logits.float(), labels)


class TaskLoss(nn.Module):
    """Supervised fine-tuning without a teacher (the no-KD baseline, and teacher fine-tuning)."""

    needs_hidden_states = False

    def __init__(self, task: str) -> None:
        super().__init__()
        self.task = task

    def forward(self, student_out: Any, teacher_out: Any, batch: dict[str, Any]) -> LossOutput:
        loss = task_loss(student_out.logits, batch["labels"], self.task)
        return LossOutput(loss, {"task": loss.detach()})
