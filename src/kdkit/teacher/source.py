"""Where the teacher's outputs for a training batch come from: the live teacher, a cache built ahead
(`kdkit cache`), or a served teacher (`kdkit teacher serve`, ``kdkit.teacher.served``), read in the shape
the method's loss expects. The training loop asks its source once per micro-batch and never knows which it
has; it also passes its stream of batches through ``stream``, where a source may look ahead (prefetch)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from torch import nn

from kdkit.methods.base import Batch, Method
from kdkit.teacher.cache import TeacherCache


class TeacherSource(Protocol):
    def outputs(self, batch: Batch, accelerator: Accelerator) -> Any:
        """The teacher's outputs for ``batch``, as the method's ``teacher_forward`` would give them."""
        ...

    def stream(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """The training batches, unchanged and in order (a source may start work on upcoming ones)."""
        ...

    def close(self) -> None:
        """Release what the source holds (threads, connections) at the end of training."""
        ...


class _NoLookahead:
    def stream(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        return batches

    def close(self) -> None:
        return None


class LiveTeacher(_NoLookahead):
    """The teacher model itself: frozen, in eval mode, run under no_grad by the method's ``teacher_forward``."""

    def __init__(self, model: nn.Module, method: Method, accelerator: Accelerator) -> None:
        self.model = model.to(accelerator.device)
        self.method = method

    def outputs(self, batch: Batch, accelerator: Accelerator) -> Any:
        with torch.no_grad(), accelerator.autocast():
            return self.method.teacher_forward(self.model, batch)


class CachedTeacher(_NoLookahead):
    """Teacher outputs read from a cache; ``read(cache, batch, device)`` shapes them for the loss (the
    task's family knows how: logits for classifiers, top-k for causal LMs)."""

    def __init__(self, cache: TeacherCache, read: Callable[[TeacherCache, Batch, torch.device], Any]) -> None:
        self.cache = cache
        self.read = read

    def outputs(self, batch: Batch, accelerator: Accelerator) -> Any:
        return self.read(self.cache, batch, accelerator.device)
