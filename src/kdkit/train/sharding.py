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
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from kdkit.errors import KdkitError

SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)


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
