"""The training loop: one function, top to bottom, on Accelerate.

method's per-batch draws -> teacher outputs (a ``TeacherSource``: the live teacher under no_grad in eval mode,
or a cache) -> student forward -> method loss -> backward (accumulated) -> clip -> optimizer/scheduler step
-> log -> eval -> checkpoint. The same loop fine-tunes (no teacher, the family's task loss) and distills (a
registered method); every method is a ``kdkit.methods.base.Method``, so its hooks are called, never looked up.

Determinism: data order is a permutation seeded by (seed, epoch), the DataLoader draws from its own
generator, and checkpoints carry every RNG state, so N straight steps and N/2 + ``--resume`` N/2 give
the same weights.

Interruptions: a run killed at any point (even SIGKILL) and resumed ends as if it had never stopped. It
resumes from the newest sound checkpoint (``kdkit.train.checkpoint``: a corrupt one is skipped with a
warning); what the killed run wrote after that checkpoint is redone: its log records are dropped
(``kdkit.train.logger``), ``best/`` is rewritten by the same evaluations, and the temp dirs of a write it
was killed in are removed. A non-finite loss or weights stop the run before anything of that step is
saved, so the last checkpoint stays the last good state.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm
from transformers import get_scheduler

from kdkit.config import TrainConfig
from kdkit.errors import KdkitError, note
from kdkit.eval.metrics import greater_is_better
from kdkit.io import atomic_dir, remove_leftovers
from kdkit.layout import (
    BEST,
    CARD,
    CONFIG,
    FINAL_STAGING,
    GENERATIONS_DIR,
    LOGS,
    MARKER,
    METRICS,
    TRAINER_STATE,
)
from kdkit.methods.base import Batch, LossOutput, Method
from kdkit.teacher.client import ServerUnavailable
from kdkit.teacher.ensemble import EnsembleOutputs, combine_losses
from kdkit.teacher.source import TeacherSource
from kdkit.train.checkpoint import (
    TrainerState,
    find_resumable,
    list_checkpoints,
    load_checkpoint,
    remove_temp_checkpoints,
    save_checkpoint,
)
from kdkit.train.logger import RunLogger
from kdkit.train.sharding import whole_student


class EpochSampler(Sampler[int]):
    """A random permutation of ``n`` indices that depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class Trainee(nn.Module):
    """Student + the method's loss module (which may own trainable projections): one module for DDP."""

    def __init__(self, student: nn.Module, method: Method) -> None:
        super().__init__()
        self.student = student
        self.loss_fn = method
        # FSDP's transformer-based wrap policy reads the blocks to shard by from the model it is given
        self._no_split_modules = getattr(student, "_no_split_modules", None)

    def forward(self, batch: Batch, teacher_out: Any) -> LossOutput:
        student_out = self.loss_fn.student_forward(self.student, batch)
        if isinstance(teacher_out, EnsembleOutputs):  # several teachers, combine: losses
            results = [self.loss_fn(student_out, out, batch) for out in teacher_out.outputs]
            return combine_losses(results, teacher_out.weights)
        return self.loss_fn(student_out, teacher_out, batch)


@dataclass
class LoopInputs:
    """What the loop needs; built by ``kdkit.train.run``."""

    output_dir: Path
    student: nn.Module
    method: Method  # the loss module and its hooks
    teacher: TeacherSource | None  # None: fine-tuning, no teacher
    train_set: Dataset
    collate: Callable[[list[dict[str, Any]]], Batch]
    evaluate: Callable[[nn.Module, Accelerator], dict[str, float]]  # validation metrics of the student
    best_metric: str
    save_student: Callable[[nn.Module, Path], None]  # writes a loadable model dir
    # the family's own step before the forward passes (e.g. on-policy generations), seeded by (step, micro)
    prepare_batch: Callable[[Batch, int, int], Batch] | None = None


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _batches(
    loader: DataLoader, sampler: EpochSampler, accelerator: Accelerator, start: int
) -> Iterator[Any]:
    """Endless micro-batches over epochs, starting after ``start`` micro-batches (resume)."""
    per_epoch = len(loader)
    epoch, skip = divmod(start, per_epoch)
    while True:
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        sampler.set_epoch(epoch)
        # Accelerate's loaders set their sampler's epoch to how often *they* were iterated: a resumed run
        # iterates a fresh (skipping) loader first, so tell each loader the real epoch
        if hasattr(epoch_loader, "set_epoch"):
            epoch_loader.set_epoch(epoch)
        yield from epoch_loader
        epoch, skip = epoch + 1, 0


def _accumulate(
    trainee: nn.Module,
    inputs: LoopInputs,
    stream: Iterator[Batch],
    accelerator: Accelerator,
    grad_accum: int,
    state: TrainerState,
) -> dict[str, float]:
    """Forward and backward ``grad_accum`` micro-batches; returns the mean of each loss part."""
    parts_sum: dict[str, float] = {}
    for micro in range(grad_accum):
        batch = next(stream)
        if inputs.prepare_batch is not None:
            batch = inputs.prepare_batch(batch, state.step, micro)
        batch = inputs.method.prepare_batch(batch, state.step, micro)  # the method's own draws
        teacher_out = inputs.teacher.outputs(batch, accelerator) if inputs.teacher is not None else None
        # only the last micro-batch all-reduces gradients across processes
        sync = accelerator.no_sync(trainee) if micro < grad_accum - 1 else contextlib.nullcontext()
        with sync, accelerator.autocast():
            result = trainee(batch, teacher_out)
            accelerator.backward(result.loss / grad_accum)
        for k, v in result.parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + float(v) / grad_accum
        state.examples_seen += len(batch["labels"]) * accelerator.num_processes
    return parts_sum


def _evaluate(
    inputs: LoopInputs, trainee: nn.Module, accelerator: Accelerator, state: TrainerState, logger: RunLogger
) -> None:
    """Validation metrics to the logs; a new best (by inputs.best_metric) is saved to output_dir/best."""
    student = whole_student(accelerator, trainee, inputs.student)  # gathered under FSDP/DeepSpeed
    metrics = inputs.evaluate(student, accelerator)
    logger.log(state.step, {f"eval/{k}": v for k, v in metrics.items()})
    value = metrics.get(inputs.best_metric)
    if value is None:
        return
    higher = greater_is_better(inputs.best_metric)
    if state.best_metric is None or (value > state.best_metric if higher else value < state.best_metric):
        state.best_metric, state.best_step = value, state.step
        if accelerator.is_main_process:
            with atomic_dir(inputs.output_dir / "best") as tmp:
                inputs.save_student(student, tmp)


def _remove_leftovers(out: Path) -> None:
    """Delete what a killed run was writing when it died (temp checkpoint, best/ or final files, a log
    rewrite, generations): never a complete file, which these writes only create by renaming."""
    remove_temp_checkpoints(out)
    remove_leftovers(out, [BEST, FINAL_STAGING, METRICS, TRAINER_STATE, CONFIG, CARD, MARKER])
    shutil.rmtree(out / FINAL_STAGING, ignore_errors=True)  # kdkit.train.output.save_final's staging dir
    remove_leftovers(out / LOGS, ["train.jsonl"])
    for tmp in (out / GENERATIONS_DIR).glob(".*.jsonl.*"):
        tmp.unlink(missing_ok=True)


def _last_good(out: Path) -> str:
    found = list_checkpoints(out)
    return f"last good checkpoint: {found[-1]}, continue from it with --resume" if found else "no checkpoint"


def _check_finite_weights(params: list[torch.Tensor], step: int, out: Path) -> None:
    # FSDP2 holds DTensors: each process checks its own shard (a NaN anywhere stops the process holding it)
    local = [p.to_local() if hasattr(p, "to_local") else p for p in params]
    if not all(bool(torch.isfinite(p).all()) for p in local):
        raise KdkitError(
            f"the weights are not finite after step {step} (the loss was finite); lower train.lr or use "
            f"mixed_precision=no ({_last_good(out)})"
        )


def train_loop(
    inputs: LoopInputs,
    train_cfg: TrainConfig,
    accelerator: Accelerator,
    *,
    resume: bool = False,
    stop_after: int | None = None,
) -> tuple[TrainerState, bool, nn.Module]:
    """Train ``inputs.student``; returns the state, whether all steps are done, and the trained student
    as one plain module (``inputs.student`` itself, or under FSDP/DeepSpeed a copy gathered from the
    shards: use it, not ``inputs.student``, for the final evaluation and save)."""
    cfg = train_cfg
    out = inputs.output_dir
    trainee = Trainee(inputs.student, inputs.method)
    optimizer = torch.optim.AdamW(_param_groups(trainee, cfg.weight_decay), lr=cfg.lr)
    sampler = EpochSampler(len(inputs.train_set), cfg.seed)
    loader = DataLoader(
        inputs.train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=inputs.collate,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG for dropout only
    )
    trainee, optimizer, loader = accelerator.prepare(trainee, optimizer, loader)
    steps_per_epoch = max(1, len(loader) // cfg.grad_accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    scheduler_name = "constant_with_warmup" if cfg.scheduler == "constant" else cfg.scheduler
    scheduler = get_scheduler(scheduler_name, optimizer, int(cfg.warmup_ratio * total), total)
    state = TrainerState()
    if accelerator.is_main_process:
        _remove_leftovers(out)
    accelerator.wait_for_everyone()
    checkpoint = find_resumable(out) if resume else None
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint, scheduler)
        note(f"resuming from {checkpoint} (step {state.step} of {total})")
    elif resume:
        note(f"--resume: no checkpoint in {out}, starting from step 0")
    if state.step >= total:
        student = whole_student(accelerator, trainee, inputs.student)
        accelerator.free_memory()
        return state, True, student

    logger = RunLogger(out / "logs", enabled=accelerator.is_main_process, start_step=state.step)
    stream = _batches(loader, sampler, accelerator, start=state.step * cfg.grad_accum)
    if inputs.teacher is not None:
        stream = inputs.teacher.stream(stream)  # a served teacher requests the next batches ahead
    params = [p for p in trainee.parameters() if p.requires_grad]
    bar = tqdm(total=total, initial=state.step, desc="train", disable=not accelerator.is_local_main_process)
    start_step, t0, stopped = state.step, time.perf_counter(), False
    trainee.train()
    while state.step < total:
        try:
            parts_sum = _accumulate(trainee, inputs, stream, accelerator, cfg.grad_accum, state)
        except ServerUnavailable as err:  # the served teacher is gone: say where to continue from
            raise KdkitError(f"{err}; training stopped at step {state.step} ({_last_good(out)})") from None
        if not all(math.isfinite(v) for v in parts_sum.values()):
            raise KdkitError(
                f"loss is {parts_sum} at step {state.step + 1}; lower train.lr or use mixed_precision=no "
                f"({_last_good(out)})"
            )
        if cfg.max_grad_norm is not None:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        bar.update(1)
        bar.set_postfix({k: f"{v:.4f}" for k, v in parts_sum.items()})
        if state.step % cfg.log_every == 0 or state.step == total:
            logger.log(
                state.step,
                {**{f"train/{k}": v for k, v in parts_sum.items()}, "train/lr": scheduler.get_last_lr()[0]},
            )

        last = state.step == total
        stopped = stop_after is not None and state.step - start_step >= stop_after and not last
        evaluate = (cfg.eval_every and state.step % cfg.eval_every == 0) or last
        save = (cfg.save_every and state.step % cfg.save_every == 0) or last or stopped
        if evaluate or save:
            _check_finite_weights(params, state.step, out)  # never save a broken state (best/, checkpoint)
        if evaluate:
            _evaluate(inputs, trainee, accelerator, state, logger)
            trainee.train()
        if save:
            state.train_seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            save_checkpoint(accelerator, out, state, scheduler, cfg.keep_checkpoints)
        if stopped:
            note(f"stopping after {state.step} steps as asked; continue with --resume")
            break
    bar.close()
    logger.close()
    if inputs.teacher is not None:
        inputs.teacher.close()
    state.train_seconds += time.perf_counter() - t0
    accelerator.wait_for_everyone()
    student = whole_student(accelerator, trainee, inputs.student)
    accelerator.free_memory()  # the accelerator may train another model next (e.g. teacher, then student)
    return state, not stopped, student
