"""The method contract: what a distillation method is, and every hook it may add to a run.

A method is one class, a subclass of ``Method`` (itself the run's loss module, an ``nn.Module``), that
declares:

- ``name``, ``paper`` (one line: the paper it follows, for model cards and reports) and ``Config`` (a
  dataclass subclassing ``kdkit.config.MethodConfig``: defaults from the paper, ranges checked in
  ``__post_init__``);
- ``tasks``: the tasks it serves (``CLASSIFIER_TASKS`` or ``LM_TASKS``);
- ``needs_teacher``, ``cacheable`` (whether it can train from `kdkit cache` outputs instead of a live
  teacher) and ``needs_hidden_states(config)``;
- ``run_files``: what it keeps in the run dir beside the student (e.g. a knowledge base), which a rerun of
  the same run may find there.

and may override these hooks (the base class's are no-ops), called by ``kdkit.train.run`` in this order:

    check(config, task)                   before anything is loaded: refuse a task or settings
    extend_data(config, env)              add training examples (labelled by the teacher)
    prepare(config, env) -> resources     work before training, e.g. build a knowledge base
    __init__(config, ctx)                 the loss module (may own trainable parameters)
    prepare_batch(batch, step, micro)     per-batch random draws, seeded by (seed, step, micro-batch)
    teacher_forward / student_forward     the model outputs the loss wants
    forward(student_out, teacher_out, batch) -> LossOutput
    extra_metrics(config, env)            more evaluation at the end (and in `kdkit eval`)
    save_files(out_dir)                   files saved with the student
    predictor(config, run_dir, settings)  what `kdkit predict` serves for a run of this method
    describe_artifacts(config)            what `kdkit validate` checks ahead of a run
    commands()                            subcommands the method adds to `kdkit` (e.g. `kdkit kb build`)

The registry (``kdkit.methods.METHODS``) checks each class against this contract when it is registered, at
import time, and refuses a non-conforming one in one line. The math lives in ``kdkit.losses``; a method
only wires model outputs to it. Fine-tuning without a teacher is a ``Method`` too (``TaskLoss`` here and
``LMTaskLoss`` for causal LMs; not registered: `kdkit finetune` uses them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch.nn.functional as F
from accelerate import Accelerator
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from transformers import PretrainedConfig

from kdkit.config import Config, MethodConfig
from kdkit.errors import KdkitError
from kdkit.subcommand import MethodCommand

CLASSIFIER_TASKS: frozenset[str] = frozenset({"classification", "regression"})
LM_TASKS: frozenset[str] = frozenset({"causal_lm"})
TASKS = CLASSIFIER_TASKS | LM_TASKS

Batch = dict[str, Any]  # a collated batch: "student"/"teacher" model inputs, "labels", "idx", ...
Resources = dict[str, Any]  # what a method's prepare() built, handed to its loss (LossContext.resources)


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
    # causal_lm with a teacher of another tokenizer (``same_tokenizer`` False): the teacher's real vocabulary
    # and the (student ids, teacher ids) of the tokens both vocabularies share (``kdkit.align``)
    teacher_vocab_size: int | None = None
    matched: tuple[Tensor, Tensor] | None = None
    seed: int = 0  # train.seed, for methods that draw random numbers (e.g. MixKD's pairs)
    resources: Resources = field(default_factory=dict)  # what the method's prepare() built


@dataclass
class DataEnv:
    """What ``extend_data`` may use: the run's config and data, and the teacher as a labeller."""

    config: Config
    data: Any  # the family's data (kdkit.data.TaskData for classifiers)
    # teacher outputs (N, C) for a split of new examples; None when the teacher is not loaded (a cache)
    label: Callable[[Any], np.ndarray] | None


@dataclass
class PrepareEnv:
    """What ``prepare(config, env) -> resources`` may use before training (e.g. ReAugKD builds its knowledge
    base with the teacher over the training set)."""

    config: Config  # the run's config
    teacher: nn.Module | None  # None when training from a teacher cache (cache.dir)
    teacher_name: str  # name or dir the teacher was loaded from (for fingerprints)
    student: nn.Module
    train_set: Dataset  # the training split with its teacher side (kdkit.data.DistillDataset)
    collate: Callable[[list[dict[str, Any]]], Batch]
    accelerator: Accelerator
    output_dir: Path
    label_names: list[str] | None


@dataclass
class EvalEnv:
    """What ``extra_metrics`` may use: the trained student and the eval loaders of the final evaluation.

    At the end of training ``resources`` is what ``prepare`` built; in `kdkit eval` of a saved run it is
    None and ``run_dir`` is the run's dir (the method reads its ``run_files`` from there).
    """

    student: nn.Module
    loaders: dict[str, DataLoader]  # split -> prepared loader (as the family's final metrics use)
    data: Any  # the family's data (the splits the loaders were built from)
    accelerator: Accelerator
    task: str
    metric_names: list[str]
    run_dir: Path
    resources: Resources | None = None
    held_out: DataLoader | None = None  # the validation split, for settings chosen on held-out data
    teacher: nn.Module | None = None  # the live teacher at the end of training (None in `kdkit eval`)
    best_metric: str | None = None  # the metric the run selects by (train.best_metric); None: metric_names[0]

    @property
    def select_metric(self) -> str:
        """The metric that choices made on held-out data go by."""
        return self.best_metric if self.best_metric in self.metric_names else self.metric_names[0]


class Predictor(Protocol):
    """What `kdkit predict` serves: class probabilities for texts (``retrieval=False``: the student alone)."""

    model: nn.Module

    def predict_proba(
        self,
        texts: list[str],
        text_pairs: list[str] | None = None,
        *,
        batch_size: int = 32,
        retrieval: bool = True,
    ) -> np.ndarray: ...


@dataclass
class LossOutput:
    loss: Tensor  # scalar that is back-propagated
    # detached scalars for the logs; "distill" is the distillation part (zero when student == teacher)
    parts: dict[str, Tensor] = field(default_factory=dict)


class Method(nn.Module):
    """A distillation method (see the module docstring for the contract and the order of the hooks)."""

    name: ClassVar[str]
    paper: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    tasks: ClassVar[frozenset[str]]
    needs_teacher: ClassVar[bool] = True
    cacheable: ClassVar[bool] = True  # can train from `kdkit cache` outputs (no live teacher)
    # causal LMs: can distil from a teacher with another tokenizer (aligned spans, ``kdkit.align``)
    cross_tokenizer: ClassVar[bool] = False
    several_teachers: ClassVar[bool] = (
        True  # can combine several teachers (``teachers:``, per-teacher outputs)
    )
    run_files: ClassVar[tuple[str, ...]] = ()  # names it keeps in the run dir beside the student

    def __init__(self, config: MethodConfig, ctx: LossContext) -> None:
        super().__init__()
        self.check(config, ctx.task)
        self.config = config
        self.task = ctx.task

    # --- declarations that depend on the settings ----------------------------------------------------------
    @classmethod
    def check(cls, config: MethodConfig, task: str) -> None:
        """Raise ``KdkitError`` (one line) when the method cannot run ``task`` with ``config``."""
        if task not in cls.tasks:
            kind = "classifiers and regression" if cls.tasks <= CLASSIFIER_TASKS else "task: causal_lm"
            raise KdkitError(
                f"method '{cls.name}' is for {kind}, not task: {task}; `kdkit ls` lists the methods"
            )

    @classmethod
    def needs_hidden_states(cls, config: MethodConfig) -> bool:
        """Whether the forwards must return every layer's hidden states."""
        return False

    @classmethod
    def can_use_cache(cls, config: MethodConfig) -> bool:
        """Whether a run with ``config`` can read the teacher's outputs from a cache (`kdkit cache`)."""
        return cls.cacheable and not cls.needs_hidden_states(config)

    # --- hooks before training -------------------------------------------------------------------------
    @classmethod
    def extend_data(cls, config: MethodConfig, env: DataEnv) -> tuple[Any, int]:
        """The run's data with the examples the method adds to train, and how many it added."""
        return env.data, 0

    @classmethod
    def prepare(cls, config: MethodConfig, env: PrepareEnv) -> Resources:
        """Work before training whose result reaches the loss as ``LossContext.resources``."""
        return {}

    # --- hooks in the training loop ----------------------------------------------------------------------
    def prepare_batch(self, batch: Batch, step: int, micro: int) -> Batch:
        """The method's own per-batch random draws (seeded by step and micro-batch), shared by both models."""
        return batch

    def student_forward(self, student: nn.Module, batch: Batch) -> Any:
        """The student outputs the loss wants."""
        return student(**batch["student"], output_hidden_states=self.needs_hidden_states(self.config))

    def teacher_forward(self, teacher: nn.Module, batch: Batch) -> Any:
        """The (frozen) teacher's outputs; the loop runs it under no_grad."""
        return teacher(**batch["teacher"], output_hidden_states=self.needs_hidden_states(self.config))

    def forward(self, student_out: Any, teacher_out: Any, batch: Batch) -> LossOutput:
        raise NotImplementedError(f"method '{self.name}' defines no forward")

    # --- hooks after training ------------------------------------------------------------------------------
    @classmethod
    def extra_metrics(cls, config: MethodConfig, env: EvalEnv) -> dict[str, Any]:
        """More sections of metrics.json, ``{section: {split: {metric: value}}}`` (e.g. with retrieval)."""
        return {}

    def save_files(self, out_dir: Path) -> None:
        """Write the method's files beside the saved student (main process only)."""

    @classmethod
    def predictor(cls, config: MethodConfig, run_dir: Path, settings: Mapping[str, Any]) -> Predictor | None:
        """What `kdkit predict` serves for a run dir of this method (None: the plain classifier);
        ``settings`` are the inference settings asked for on the command line (e.g. beta, k)."""
        return None

    @classmethod
    def describe_artifacts(cls, config: MethodConfig) -> list[str]:
        """`kdkit validate`: check what the method reads ahead of a run (raise on a bad one), a line each."""
        return []

    @classmethod
    def commands(cls) -> tuple[MethodCommand, ...]:
        """Subcommands the method adds to `kdkit`."""
        return ()


# hooks a subclass may override; the registry checks that an override keeps the base's parameters
HOOKS = (
    "check",
    "needs_hidden_states",
    "can_use_cache",
    "extend_data",
    "prepare",
    "prepare_batch",
    "student_forward",
    "teacher_forward",
    "forward",
    "extra_metrics",
    "save_files",
    "predictor",
    "describe_artifacts",
    "commands",
)


def task_loss(logits: Tensor, labels: Tensor, task: str) -> Tensor:
    """Cross-entropy on class ids, or MSE on real targets (logits (N, 1) for regression)."""
    if task == "regression":
        return F.mse_loss(logits.float().reshape(-1), labels.float().reshape(-1))
    return F.cross_entropy(logits.float(), labels)


@dataclass
class FinetuneConfig(MethodConfig):
    """Fine-tuning on the task's labels, without a teacher."""

    name: str = "finetune"  # not a registered method: `kdkit finetune` trains with it


class TaskLoss(Method):
    """Supervised fine-tuning without a teacher (the no-KD baseline, and teacher fine-tuning)."""

    name = "finetune"
    paper = "none: fine-tuning on the task's labels, without a teacher"
    Config = FinetuneConfig
    tasks = CLASSIFIER_TASKS
    needs_teacher = False

    def forward(self, student_out: Any, teacher_out: Any, batch: Batch) -> LossOutput:
        loss = task_loss(student_out.logits, batch["labels"], self.task)
        return LossOutput(loss, {"task": loss.detach()})
