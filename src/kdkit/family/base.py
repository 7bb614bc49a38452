"""What differs between the two families of tasks, behind one interface: encoder classifiers
(classification and regression) and causal LMs. ``kdkit.train.run`` picks the family once, from
``config.task``, and calls it for everything family-specific: reading and encoding data, collating, the
models (classes, loading, how a student is cut), the fine-tuning loss, reading a teacher cache, metrics,
and `kdkit eval` of a saved model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from kdkit.config import Config, ModelConfig, TrainConfig
from kdkit.errors import KdkitError, warn
from kdkit.methods import METHODS
from kdkit.methods.base import Batch, LossContext, Method, MethodConfig, Resources
from kdkit.models import load_model_config
from kdkit.teacher.build import CacheJob
from kdkit.teacher.cache import TeacherCache


@dataclass(frozen=True)
class Job:
    """What one run trains: which model section, with which training settings, and with which method
    (a registered one for `kdkit distill`; the family's task loss for `kdkit finetune`)."""

    kind: str  # "distill" | "finetune"
    which: str  # "student" | "teacher": the model of the config that is trained
    model: ModelConfig
    train: TrainConfig
    method: type[Method]
    method_config: MethodConfig
    cached: bool  # the teacher's outputs come from `kdkit cache` (cache.dir), the teacher is never loaded
    served: bool = False  # ... or from `kdkit teacher serve` (teacher.server), the teacher is never loaded

    @property
    def teaches(self) -> bool:
        """Whether a teacher takes part in the training."""
        return self.method.needs_teacher


@dataclass
class Student:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    layers: list[int] | None  # the teacher layers it was cut from, if it was


@dataclass
class Teacher:
    name: str  # what it was loaded from (a fine-tuned teacher: its cache dir)
    tokenizer: PreTrainedTokenizerBase
    model: nn.Module | None  # None: its outputs are read from a cache
    vocab: int | None = None  # causal LMs: the shared real vocabulary the losses compare
    same_tokenizer: bool = True  # causal LMs: False for a teacher with another tokenizer (aligned spans)

    def model_config(self) -> PretrainedConfig:
        """The teacher's model config (read from its files when its weights are not loaded)."""
        return self.model.config if self.model is not None else load_model_config(self.name)


@dataclass
class RunData:
    """A run's data, encoded for its models."""

    train_set: Dataset
    collate: Callable[[list[dict[str, Any]]], Batch]
    eval_loaders: dict[str, DataLoader]  # split or eval set -> prepared loader (validation first)
    truncated: dict[str, int]  # examples cut to max_length, per split (metrics.json)
    same_tokenizer: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific (e.g. the encoded train split)


class Family(ABC):
    """The family of ``tasks``; one instance per run (``family_for``)."""

    name: ClassVar[str]
    tasks: ClassVar[frozenset[str]]
    finetune_method: ClassVar[type[Method]]  # the task loss of `kdkit finetune`

    # --- plan -----------------------------------------------------------------------------------------
    def job(self, config: Config, kind: str, which: str) -> Job:
        """What a `kind` run of ``config`` trains (``which`` model, for `kdkit finetune`)."""
        if kind not in ("distill", "finetune"):
            raise KdkitError(f"kind must be 'distill' or 'finetune', got '{kind}'")
        if which not in ("student", "teacher"):
            raise KdkitError(f"which must be 'teacher' or 'student', got '{which}'")
        if kind == "distill":
            method: type[Method] = METHODS.get(config.method.name)
            method_config = config.method
        else:
            method = self.finetune_method
            method_config = method.Config()
        if which == "teacher":
            if not config.teacher.model:
                raise KdkitError(
                    "teacher.model is not set; name a hub id, a local dir or an asset (`kdkit ls`)"
                )
            model, train = replace(config.teacher, finetune=None), config.teacher.finetune or config.train
        else:
            model, train = config.student, config.train
        cached = method.needs_teacher and config.cache.dir is not None
        served = method.needs_teacher and which == "student" and config.teacher.server is not None
        return Job(kind, which, model, train, method, method_config, cached, served)

    def check(self, config: Config, job: Job) -> None:
        """Refuse, before anything is loaded, what this family cannot run (the method's own check too)."""
        job.method.check(job.method_config, config.task)
        if job.teaches and not config.teacher.model:
            raise KdkitError(
                f"`kdkit {job.kind}` with method '{job.method.name}' needs teacher.model; name a hub id, a "
                "local dir or an asset (`kdkit ls`), or use `kdkit finetune` to train without a teacher"
            )
        if job.cached:
            self.check_cache_use(config, job.method)
        if job.served:
            if job.cached:
                raise KdkitError("set teacher.server or cache.dir, not both: each replaces the live teacher")
            if config.task != "causal_lm":
                raise KdkitError(
                    "teacher.server serves causal-LM teachers; a classifier's teacher runs live or from cache.dir"
                )
            # a served teacher answers what a cache holds (no hidden states), also for on-policy samples
            Family.check_cache_use(self, config, job.method)
            if config.generation.source == "teacher":
                raise KdkitError(
                    "teacher.server scores text, it does not generate: build generation.source: teacher with "
                    "`kdkit cache` (cache.dir) or the live teacher, or use generation.source: ground_truth"
                )

    def check_cache_use(self, config: Config, method: type[Method]) -> None:
        """Refuse, in one line, the set-ups whose teacher outputs cannot be computed ahead of training."""
        if not method.can_use_cache(config.method):
            raise KdkitError(
                f"method '{method.name}' with these settings needs the live teacher (its hidden states, or "
                "its outputs on inputs made during training), not cached outputs; set cache.dir: null"
                + (", or method.hidden_weight: 0" if method.needs_hidden_states(config.method) else "")
            )

    # --- data and models ----------------------------------------------------------------------------------
    @abstractmethod
    def load_data(self, config: Config, job: Job) -> Any:
        """Read and split the data; check the metric names before any training."""

    @abstractmethod
    def fingerprint(self, data: Any) -> str:
        """sha256 of the examples of every split (a resumed run must train on the same)."""

    @abstractmethod
    def metric_names(self, config: Config, data: Any) -> list[str]:
        """The metrics reported on the eval splits."""

    @abstractmethod
    def best_metric(self, train: TrainConfig, task: str) -> str:
        """The validation metric that picks the best checkpoint."""

    def check_teacher(
        self, config: Config, train: TrainConfig, data: Any, teacher: str, accelerator: Accelerator
    ) -> str | None:
        """Before distilling: one line on whether ``teacher`` is worth it (``kdkit.teacher.check``), or None
        when there is nothing to check; raises ``KdkitError`` when it is not. Default: nothing to check."""
        return None

    @abstractmethod
    def build_student(self, model: ModelConfig, base: str | None, data: Any) -> Student:
        """The model to train, from its own name or cut from ``base`` (the teacher)."""

    @abstractmethod
    def load_teacher(
        self, config: Config, name: str, student: Student, job: Job, accelerator: Accelerator, data: Any
    ) -> Teacher:
        """The teacher (frozen) and its tokenizer; without its weights when ``job.cached``."""

    def labeller(
        self, config: Config, teacher: Teacher | None, accelerator: Accelerator
    ) -> Callable[[Any], np.ndarray] | None:
        """A function that labels a split of new examples with the teacher (methods' ``extend_data``)."""
        return None

    @abstractmethod
    def encode(
        self,
        config: Config,
        job: Job,
        data: Any,
        student: Student,
        teacher: Teacher | None,
        accelerator: Accelerator,
        out: Path,
    ) -> RunData:
        """Tokenize the splits for both models; the training set, collator and eval loaders."""

    @abstractmethod
    def loss_context(
        self,
        config: Config,
        job: Job,
        data: Any,
        student: Student,
        teacher: Teacher | None,
        run_data: RunData,
        resources: Resources,
    ) -> LossContext:
        """What the method needs to build its loss."""

    # --- teacher cache ------------------------------------------------------------------------------------
    @abstractmethod
    def open_cache(self, config: Config, data: Any, teacher: Teacher, run_data: RunData) -> TeacherCache:
        """The run's teacher cache, checked against this run's teacher, tokenizer and training set."""

    @abstractmethod
    def read_cache(self, cache: TeacherCache, batch: Batch, device: torch.device) -> Any:
        """The teacher outputs of a batch, read from the cache in the shape the method's loss expects."""

    @abstractmethod
    def cache_job(self, config: Config, teacher_name: str, accelerator: Accelerator, root: Path) -> CacheJob:
        """What `kdkit cache` runs: the training set as distill tokenizes it, and the teacher's outputs."""

    @abstractmethod
    def mix_teachers(self, config: Config, outputs: list[Any], weights: list[float]) -> Any:
        """Several teachers' outputs for a batch as one teacher's: the weighted mixture of their
        distributions at the method's temperature (``teacher.combine: mixture``, ``kdkit.teacher.ensemble``)."""

    # --- training and evaluation ------------------------------------------------------------------------
    def prepare_batch(
        self, config: Config, job: Job, student: Student, run_data: RunData, accelerator: Accelerator
    ) -> Callable[[Batch, int, int], Batch] | None:
        """The family's own per-batch step before the forwards (causal LMs: on-policy samples), or None."""
        return None

    @abstractmethod
    def validate_fn(
        self,
        config: Config,
        job: Job,
        data: Any,
        run_data: RunData,
        student: Student,
        teacher: Teacher | None,
    ) -> Callable[[nn.Module, Accelerator], dict[str, float]]:
        """The validation metrics computed during training (they pick the best checkpoint)."""

    @abstractmethod
    def load_saved(self, path: Path) -> PreTrainedModel:
        """A model saved by ``save_model`` (the best student, reloaded for the final metrics)."""

    def final_loaders(self, config: Config, run_data: RunData) -> dict[str, DataLoader]:
        """The loaders of the splits reported at the end (a method's extra evaluation uses them too)."""
        return {}

    @abstractmethod
    def final_metrics(
        self,
        config: Config,
        data: Any,
        trained: nn.Module,
        student: Student,
        teacher: Teacher | None,
        run_data: RunData,
        accelerator: Accelerator,
        out: Path,
    ) -> dict[str, Any]:
        """Metrics of the ``trained`` student (and of the teacher) per eval split, as metrics.json holds them."""

    @abstractmethod
    def evaluate_saved(
        self, model_dir: Path, config: Config, splits: list[str] | None, accelerator: Accelerator
    ) -> tuple[dict[str, Any], nn.Module, dict[str, DataLoader], Any, list[str]]:
        """`kdkit eval`: metrics of a saved model on the config's data; also the model, its loaders, the data
        and the metric names (for a method's extra evaluation of the run)."""


def report_truncation(split: str, truncated: int, total: int, key: str, limit: int) -> None:
    """Say how many examples were cut to fit ``key`` (they are also counted in metrics.json)."""
    if truncated:
        warn(
            f"{truncated} of {total} {split} examples are longer than {key}={limit} tokens and were truncated "
            f"(counted under 'truncated' in metrics.json); raise {key} to keep them whole"
        )
