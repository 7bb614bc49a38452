"""The run's Accelerator: one process, DDP, or (on GPUs) FSDP / DeepSpeed ZeRO, as launched.

Every command that runs a model (distill, finetune, eval, cache, kb build) makes its Accelerator here, so
launch checks, thread settings and the CPU process group are the same everywhere.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from kdkit.config import Config
from kdkit.errors import KdkitError, warn


def make_accelerator(config: Config) -> Accelerator:
    """The run's Accelerator: one process, DDP, or (on GPUs) FSDP / DeepSpeed, as launched."""
    for train in (config.train, config.teacher.finetune):
        if train is not None:
            check_launch(train.grad_accum, train.max_grad_norm)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, config.train.mixed_precision):
        # Accelerate keeps one precision per process; a later run in the same Python process (API use,
        # notebooks) may ask for another. The process group (PartialState) is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=config.train.mixed_precision, cpu=_multi_cpu())


def _multi_cpu() -> bool:
    """True for several processes without a GPU (``accelerate launch --multi_gpu`` or ``torchrun`` on CPUs).

    Accelerate only starts its CPU process group (gloo) when asked for the CPU; otherwise each process
    would silently train alone on its own copy of the data.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1 and not torch.cuda.is_available()


def check_launch(grad_accum: int, max_grad_norm: float | None) -> None:
    """Refuse an FSDP/DeepSpeed launch that Accelerate would not run as asked (one line each)."""
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if deepspeed and grad_accum > 1:
        # Accelerate's DeepSpeed backward steps the engine on every call unless its own accumulation
        # context is used; kdkit accumulates itself, so it would step once per micro-batch
        raise KdkitError(
            f"DeepSpeed runs need train.grad_accum: 1 (got {grad_accum}); raise train.batch_size or the "
            "number of processes instead"
        )
    if (fsdp or deepspeed) and not torch.cuda.is_available():
        name = "FSDP" if fsdp else "DeepSpeed"
        raise KdkitError(
            f"{name} needs GPUs: Accelerate runs it on GPUs only (on CPUs it would silently fall back to "
            "DDP); on CPUs launch plain DDP (`accelerate launch --multi_gpu --num_processes N -m kdkit.cli ...`)"
        )
    clip = os.environ.get("ACCELERATE_GRADIENT_CLIPPING")
    if deepspeed and clip is not None and max_grad_norm is not None and float(clip) != float(max_grad_norm):
        warn(
            f"under DeepSpeed the recipe's gradient_clipping ({clip}) clips the gradients, not "
            f"train.max_grad_norm ({max_grad_norm}); make them equal to silence this"
        )
