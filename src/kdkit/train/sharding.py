"""FSDP and DeepSpeed ZeRO through Accelerate: the checks before a launch and the whole student after it.

Under DDP every process holds the whole student, so evaluating and saving it is plain. Under FSDP or
ZeRO-3 each process holds a shard of it, and under ZeRO-2 the engine owns it. So the loop gathers the
student whenever it evaluates or saves: ``accelerator.get_state_dict`` (a collective: every process calls
it) gives the full weights on the main process, a broadcast hands them to the others, and each process
loads them into a fresh, unsharded copy of the student, which evaluation (itself split across the
processes, as under DDP) and ``save_pretrained`` use. The copy costs one student's memory per process:
in distillation the student is the small model, so this is the simple choice.

Recipes: ``configs/accelerate/{fsdp,zero2,zero3}.yaml`` (docs/distributed.md).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from kdkit.errors import KdkitError, warn

SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


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


def is_sharded(accelerator: Accelerator) -> bool:
    """True under FSDP or DeepSpeed, where a process does not hold the plain, whole student."""
    return accelerator.distributed_type in SHARDED


def whole_student(accelerator: Accelerator, trainee: nn.Module, student: nn.Module) -> nn.Module:
    """The student as one unsharded module on every process, for evaluation and saving.

    Without sharding: the trained module itself. With FSDP/DeepSpeed: a fresh copy loaded with the
    gathered weights (every process must call this, in the same order: it runs collectives).
    """
    if not is_sharded(accelerator):
        return accelerator.unwrap_model(trainee).student
    state = accelerator.get_state_dict(trainee)  # full weights on the main process
    box: list[Any] = [student_state(state) if accelerator.is_main_process else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return rebuild(student, box[0]).to(accelerator.device)


def student_state(trainee_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``student.`` entries of a ``Trainee`` state dict, with the prefix dropped, on the CPU."""
    prefix = "student."
    return {k[len(prefix) :]: v.detach().cpu() for k, v in trainee_state.items() if k.startswith(prefix)}


def rebuild(student: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A new module of the student's class and config holding ``state`` (a Hugging Face model).

    Tied weights (e.g. an LM head tied to the embeddings) may be missing from ``state``: they are tied
    again. Any other missing or unexpected key is an error, since the copy would be silently wrong.
    """
    config = copy.deepcopy(student.config)
    model = type(student)(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise KdkitError(
            f"the gathered student does not fit its class {type(student).__name__}: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}; report this with the launch config"
        )
    dtype = next(student.parameters()).dtype
    return model.to(dtype)
