"""`kdkit finetune` and `kdkit distill`: one pipeline for both families of tasks, with or without a teacher.

    config -> family -> data -> teacher and student -> the method's data and resources -> loss -> loop
    -> best student -> final metrics -> output dir

What differs between classifiers and causal LMs is asked of the run's family (``kdkit.family``); what
differs between methods, of the method (``kdkit.methods.base.Method``). `kdkit finetune` is the same run
with the family's task loss and no teacher. The output dir is described in ``kdkit.layout``.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from kdkit.config import Config, load_config
from kdkit.errors import KdkitError, note
from kdkit.family import Family, Job, family_for
from kdkit.fingerprint import model_fingerprint
from kdkit.layout import BEST, CHECKPOINTS, METRICS
from kdkit.lock import dir_lock
from kdkit.methods.base import DataEnv, EvalEnv, PrepareEnv
from kdkit.models import count_parameters, save_model
from kdkit.runtime import make_accelerator
from kdkit.teacher.cache import require_complete
from kdkit.teacher.finetuned import teacher_cache_dir
from kdkit.train.checkpoint import TrainerState
from kdkit.train.loop import LoopInputs, train_loop
from kdkit.train.output import (
    finished_metrics,
    prepare_output_dir,
    refuse_foreign_dir,
    refuse_shared_dirs,
    save_final,
)
from kdkit.train.teachers import check_other_teachers, check_teachers, teacher_source, teachers_fingerprint


@dataclass
class RunResult:
    output_dir: Path
    metrics: dict[str, Any]


def run(
    config: Config | dict[str, Any] | str | Path,
    overrides: list[str] | None = None,
    *,
    kind: str = "distill",
    which: str = "student",
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
    accelerator: Accelerator | None = None,
    wait: bool = False,
    check_config: bool = True,
) -> RunResult:
    """Fine-tune (``kind="finetune"``: the ``which`` model, task loss only) or distill a student.

    The output dir is locked for the life of the run (``kdkit.lock``): another process stops with one line,
    or with ``wait`` waits for it. ``check_config=False`` resumes a dir whose name already says what it
    holds (a fine-tuned teacher's) whatever else its config says.
    """
    config = load_config(config, overrides)
    if stop_after is not None and stop_after < 1:
        raise KdkitError(f"--stop-after must be >= 1 (steps to run before stopping), got {stop_after}")
    refuse_shared_dirs(Path(config.output_dir))
    accelerator = accelerator or make_accelerator(config)
    family = family_for(config.task)
    job = family.job(config, kind, which)
    family.check(config, job)  # the method and the settings, before anything is loaded
    check_teachers(config, family, job)  # several teachers: each one's settings, and how they combine
    if job.cached and config.cache.dir:  # before the teacher is fine-tuned: a missing cache stops the run now
        require_complete(Path(config.cache.dir))
    data = family.load_data(config, job)  # metric names are checked here too: before any training
    base = _base_model(
        config, job, accelerator, overwrite
    )  # the teacher (fine-tuned first if asked), or None
    if job.teaches and base and (line := family.check_teacher(config, job.train, data, base, accelerator)):
        note(line)  # a teacher not worth distilling stops the run here, before the student trains
    if base:
        check_other_teachers(config, family, job, data, accelerator)
    if accelerator.is_main_process:
        refuse_foreign_dir(Path(config.output_dir), job.method.run_files)  # before its lock file is made
    lock = dir_lock(Path(config.output_dir), "output dir", wait=wait) if accelerator.is_main_process else None
    with lock or contextlib.nullcontext():
        inputs = _inputs(config, family, data, base)
        out = prepare_output_dir(
            config, resume, overwrite, accelerator.is_main_process, job.method.run_files, inputs, check_config
        )
        accelerator.wait_for_everyone()
        if resume and (done := finished_metrics(out)) is not None:
            note(f"{out} holds a finished run (metrics.json); nothing to resume")
            return RunResult(out, done)
        return _train(config, accelerator, family, job, data, base, out, resume, stop_after)


def _train(
    config: Config,
    accelerator: Accelerator,
    family: Family,
    job: Job,
    data: Any,
    base: str | None,
    out: Path,
    resume: bool,
    stop_after: int | None,
) -> RunResult:
    """The run in its claimed output dir: models, the method, the loop, the final metrics and files."""
    set_seed(job.train.seed)  # a base model's new head is initialised now: seeded
    student = family.build_student(job.model, base, data)
    teacher = (
        family.load_teacher(config, base, student, job, accelerator, data) if job.teaches and base else None
    )
    label = family.labeller(config, teacher, accelerator)
    data, added = job.method.extend_data(job.method_config, DataEnv(config, data, label))
    run_data = family.encode(config, job, data, student, teacher, accelerator, out)
    resources = {}
    if teacher is not None:
        env = PrepareEnv(
            config, teacher.model, teacher.name, student.model, run_data.train_set, run_data.collate,
            accelerator, out, getattr(data, "label_names", None),
        )  # fmt: skip
        resources = job.method.prepare(job.method_config, env)
    method = job.method(
        job.method_config, family.loss_context(config, job, data, student, teacher, run_data, resources)
    )
    source = teacher_source(family, config, job, data, teacher, student, run_data, method, accelerator)

    def save_student(model: nn.Module, path: Path) -> None:
        save_model(accelerator.unwrap_model(model), student.tokenizer, path)

    inputs = LoopInputs(
        out,
        student.model,
        method,
        source,
        run_data.train_set,
        run_data.collate,
        family.validate_fn(config, job, data, run_data, student, teacher),
        family.best_metric(job.train, config.task),
        save_student,
        family.prepare_batch(config, job, student, run_data, accelerator),
    )
    state, finished, trained = train_loop(
        inputs, job.train, accelerator, resume=resume, stop_after=stop_after
    )
    if not finished:
        return RunResult(out, {"stopped_at_step": state.step})

    if job.train.load_best and (out / BEST).is_dir():
        trained.load_state_dict(family.load_saved(out / BEST).state_dict())
    metrics = run_summary(job, config, trained, state, run_data.truncated)
    if added:
        metrics["augmented"] = added
    metrics.update(family.final_metrics(config, data, trained, student, teacher, run_data, accelerator, out))
    eval_env = EvalEnv(
        trained, family.final_loaders(config, run_data), data, accelerator, config.task,
        family.metric_names(config, data), out, resources, run_data.eval_loaders.get("validation"),
        teacher.model if teacher is not None else None, family.best_metric(job.train, config.task),
    )  # fmt: skip
    metrics.update(job.method.extra_metrics(job.method_config, eval_env))
    if accelerator.is_main_process:
        save_final(out, trained, student.tokenizer, metrics, state, method)
    accelerator.wait_for_everyone()
    return RunResult(out, metrics)


def _base_model(config: Config, job: Job, accelerator: Accelerator, overwrite: bool) -> str | None:
    """What the trained model starts from: the teacher (the student is cut from it; fine-tuned first when
    ``teacher.finetune`` asks), the configured teacher for `finetune --which teacher`, or None when the
    student names its own model and no teacher takes part."""
    if job.which == "teacher":
        return config.teacher.model
    if not config.teacher.model:
        if job.model.model:
            return None
        raise KdkitError("teacher.model is not set; name a hub id, a local dir or an asset (`kdkit ls`)")
    return resolve_teacher(config, accelerator, overwrite=overwrite)


def _inputs(config: Config, family: Family, data: Any, base: str | None) -> dict[str, Any]:
    """What the run trains on, fingerprinted (recorded when it starts, checked by --resume)."""
    source = config.data.dataset or config.data.train
    inputs = {"data": {"what": f"the data ({source})", "fingerprint": family.fingerprint(data)}}
    if base is not None:
        inputs["teacher"] = {"what": f"the teacher '{base}'", "fingerprint": model_fingerprint(base)}
        if (others := teachers_fingerprint(config)) is not None:
            inputs["teachers"] = others
    return inputs


def resolve_teacher(config: Config, accelerator: Accelerator, *, overwrite: bool = False) -> str:
    """Name or path of the teacher to load; fine-tunes (or reuses) a cached one when teacher.finetune is set.

    The fine-tuned teacher is kept under ``$KDKIT_HOME/teachers/<key>`` (``kdkit.teacher.finetuned``), the
    key a hash of what it depends on (model, data, fine-tune settings), so any config that wants the same
    teacher shares it, whatever its other settings. An interrupted fine-tuning resumes from its last
    checkpoint (``overwrite``: starts over); two processes that want the same new teacher take turns (the
    second waits for the first's lock, then finds it finished).
    """
    if not config.teacher.model:
        raise KdkitError("teacher.model is not set; name a hub id, a local dir or an asset (`kdkit ls`)")
    if config.teacher.finetune is None:
        return config.teacher.model
    out = teacher_cache_dir(config)
    if (out / METRICS).is_file():
        note(f"using the cached fine-tuned teacher {out}")
        return str(out)
    note(f"fine-tuning the teacher '{config.teacher.model}' first (cached in {out})")
    teacher_run = replace(
        config,
        output_dir=str(out),
        student=replace(config.teacher, finetune=None),
        train=config.teacher.finetune,
        eval=replace(config.eval, agreement=False),
    )
    run(
        teacher_run, kind="finetune", which="teacher", resume=not overwrite, overwrite=overwrite,
        accelerator=accelerator, wait=True, check_config=False,
    )  # fmt: skip
    if accelerator.is_main_process:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # optimizer state is not needed any more
    accelerator.wait_for_everyone()
    return str(out)


def run_summary(
    job: Job, config: Config, student: nn.Module, state: TrainerState, truncated: dict[str, int]
) -> dict[str, Any]:
    """The head of metrics.json: what ran, how big, how long, and how many inputs were truncated
    (fine-tuning also says ``which`` model of the config it trained: teacher or student)."""
    summary: dict[str, Any] = {
        "kind": job.kind,
        "method": job.method.name,
        "parameters": count_parameters(student),
        "steps": state.step,
        "best_step": state.best_step,
        "train_seconds": round(state.train_seconds, 2),
        "truncated": truncated,
    }
    if job.kind == "finetune":
        summary["which"] = job.which
    return summary


def finetune(
    config: Config | dict[str, Any] | str | Path,
    overrides: list[str] | None = None,
    *,
    which: str = "teacher",
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
) -> RunResult:
    """Fine-tune the teacher (default) or the student of ``config`` on its task, without distillation.

    Returns the output dir and final metrics. ``config`` is a YAML path, a dict or a ``Config``;
    ``overrides`` are dotted ``key=value`` strings.
    """
    if which not in ("teacher", "student"):
        raise KdkitError(f"which must be 'teacher' or 'student', got '{which}'")
    kwargs = {"resume": resume, "overwrite": overwrite, "stop_after": stop_after}
    return run(config, overrides, kind="finetune", which=which, **kwargs)


def distill(
    config: Config | dict[str, Any] | str | Path,
    overrides: list[str] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
) -> RunResult:
    """Distill the teacher of ``config`` into its student with ``config.method``.

    Returns the output dir and final metrics. ``config`` is a YAML path, a dict or a ``Config``.
    """
    return run(config, overrides, kind="distill", resume=resume, overwrite=overwrite, stop_after=stop_after)


__all__ = ["RunResult", "distill", "finetune", "resolve_teacher", "run"]
