"""`finetune` and `distill`: build data, models and loss from a Config, run the loop, write the output dir.

Output dir of a run::

    config.json, model.safetensors, tokenizer files   the student, loadable by transformers as-is
    config.yaml                                       the resolved kdkit config
    metrics.json                                      final metrics (student, teacher, agreement)
    README.md                                         model card (kdkit.report.card)
    logs/train.jsonl, logs/tb/                        training curves
    checkpoints/step-N/                               resumable state (`--resume`)
    kb/                                               ReAugKD: the knowledge base (kdkit.retrieval.kb)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from kdkit.config import Config, load_config
from kdkit.data import Collator, DistillDataset, TaskData, encode, load_task_data, same_tokenizer
from kdkit.errors import KdkitError, warn
from kdkit.eval.metrics import (
    agreement,
    check_metrics,
    compute_metrics,
    default_best_metric,
    default_metrics,
)
from kdkit.eval.predict import predict_logits, to_predictions
from kdkit.io import atomic_dir, atomic_write_json, atomic_write_text
from kdkit.methods import METHODS
from kdkit.methods.base import LossContext, PrepareEnv, TaskLoss
from kdkit.models import (
    build_student,
    count_parameters,
    freeze,
    has_trained_head,
    load_model_config,
    load_tokenizer,
)
from kdkit.train.loop import LoopInputs, train_loop
from kdkit.train.sharding import check_launch
from kdkit.train.teacher import resolve_teacher

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    output_dir: Path
    metrics: dict[str, Any]


def finished_run(out: Path, accelerator: Accelerator) -> RunResult:
    """``--resume`` of a finished run (metrics.json written last): nothing to do, nothing rewritten."""
    accelerator.print(f"{out} holds a finished run (metrics.json); nothing to resume")
    return RunResult(out, json.loads((out / "metrics.json").read_text()))


def prepare_output_dir(config: Config, resume: bool, overwrite: bool, main: bool) -> Path:
    """Refuse to mix two runs in one dir: a different run there needs --overwrite (or --resume if same).

    Only the main process checks and writes (the others would see its config.yaml appear); callers wait
    for it before going on.
    """
    out = Path(config.output_dir)
    saved = out / "config.yaml"
    if not main:
        return out
    if out.exists() and not resume and not overwrite and _nothing_to_keep(out):
        # a run that failed before its first checkpoint (e.g. a bad column): retrying it needs no flag
        saved.unlink()
        shutil.rmtree(out / "logs", ignore_errors=True)
    # a knowledge base built ahead by `kdkit kb build` may sit in the dir alone (ReAugKD reuses it)
    if out.exists() and any(p.name != "kb" for p in out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not resume:
            raise KdkitError(
                f"output dir '{out}' already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or set output_dir"
            )
        elif saved.is_file() and saved.read_text() != config.to_yaml():
            raise KdkitError(
                f"output dir '{out}' holds a run with a different config; compare {saved} with your config, "
                "or pass --overwrite"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, config.to_yaml())
    return out


def _nothing_to_keep(out: Path) -> bool:
    """True when ``out`` holds only what a run writes before its first checkpoint (its config.yaml and
    logs) besides a knowledge base: nothing a restart would lose."""
    names = {p.name for p in out.iterdir()}
    return "config.yaml" in names and names <= {"config.yaml", "logs", "kb"}


def make_accelerator(config: Config) -> Accelerator:
    """The run's Accelerator: one process, DDP, or (on GPUs) FSDP / DeepSpeed ZeRO, as launched."""
    for train in (config.train, config.teacher.finetune):
        if train is not None:
            check_launch(train.grad_accum, train.max_grad_norm)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    from accelerate.state import AcceleratorState

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


def _datasets(
    data: TaskData,
    student_tok: Any,
    teacher_tok: Any | None,
    s_len: int,
    t_len: int,
    splits: list[str],
    length_key: str = "student.max_length",
) -> tuple[dict[str, DistillDataset], bool, dict[str, int]]:
    shared = teacher_tok is None or same_tokenizer(student_tok, teacher_tok)
    sets, truncated = {}, {}
    for name in splits:
        split = data.split(name)
        s_enc = encode(split, student_tok, s_len)
        t_enc = None
        if teacher_tok is not None:
            t_enc = s_enc if shared and t_len == s_len else encode(split, teacher_tok, t_len)
        sets[name] = DistillDataset(split, s_enc, t_enc)
        truncated[name] = s_enc.num_truncated
        report_truncation(name, s_enc.num_truncated, len(split), length_key, s_len)
    return sets, shared, truncated


def report_truncation(split: str, truncated: int, total: int, key: str, limit: int) -> None:
    """Say how many examples were cut to fit ``key`` (they are also counted in metrics.json)."""
    if truncated:
        warn(
            f"{truncated} of {total} {split} examples are longer than {key}={limit} tokens and were truncated "
            f"(counted under 'truncated' in metrics.json); raise {key} to keep them whole"
        )


def save_model(model: PreTrainedModel, tokenizer: Any, path: Path) -> None:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def _loader(dataset: DistillDataset, collate: Collator, batch_size: int, accelerator: Accelerator) -> Any:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    return accelerator.prepare_data_loader(loader)


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
) -> RunResult:
    """Fine-tune (``kind="finetune"``, the ``which`` model, task loss only) or distill a student."""
    config = load_config(config, overrides)
    accelerator = accelerator or make_accelerator(config)
    task = config.task
    if task == "causal_lm":
        from kdkit.train.run_lm import run_lm

        return run_lm(
            config,
            accelerator,
            kind=kind,
            which=which,
            resume=resume,
            overwrite=overwrite,
            stop_after=stop_after,
        )
    data = load_task_data(config.data, task)
    label_names = data.label_names
    metric_names = config.eval.metrics or default_metrics(task, data.num_labels)
    train_for_best = config.teacher.finetune if kind == "finetune" and which == "teacher" else None
    best_metric = (train_for_best or config.train).best_metric or default_best_metric(task)
    check_metrics(task, [*metric_names, best_metric], data.num_labels)  # before any training, not after
    if kind == "finetune" and which == "teacher":
        if not config.teacher.model:
            raise KdkitError("teacher.model is not set; name a hub id, a local dir or an asset (`kdkit ls`)")
        teacher_name = config.teacher.model
        model_cfg = replace(config.teacher, finetune=None)
        train_cfg = config.teacher.finetune or config.train
    else:
        teacher_name = resolve_teacher(config, accelerator)  # fine-tunes and caches it when asked
        model_cfg, train_cfg = config.student, config.train
    out = prepare_output_dir(config, resume, overwrite, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if resume and (out / "metrics.json").is_file():
        return finished_run(out, accelerator)
    set_seed(train_cfg.seed)  # the head of a base model is initialised now: seeded
    student, student_layers = build_student(model_cfg, teacher_name, task, label_names)
    student_tok = load_tokenizer(model_cfg.tokenizer or model_cfg.model or teacher_name)

    teacher, teacher_tok, cached = None, None, kind == "distill" and config.cache.dir is not None
    if kind == "distill":
        teacher_tok = load_tokenizer(config.teacher.tokenizer or teacher_name)
        if not cached:  # with a teacher cache the teacher's weights are never loaded
            teacher = freeze(load_teacher(teacher_name, config, label_names))
    augmented, resources, cache = 0, {}, None
    if kind == "distill" and not cached:
        data, augmented = _augment(data, config, teacher, teacher_tok, accelerator)
    splits = ["train", *[s for s in ("validation", *config.eval.splits) if data.has(s)]]
    sets, shared, truncated = _datasets(
        data,
        student_tok,
        teacher_tok,
        model_cfg.max_length,
        config.teacher.max_length,
        list(dict.fromkeys(splits)),
        f"{which}.max_length",
    )
    collate = Collator(
        student_tok.pad_token_id, teacher_tok.pad_token_id if teacher_tok else None, task == "regression"
    )
    if kind == "distill":
        method = METHODS.get(config.method.name)
        if hasattr(method, "prepare"):  # e.g. ReAugKD's knowledge base, built with the teacher
            env = PrepareEnv(
                config, teacher, teacher_name, student, sets["train"], collate, accelerator, out, label_names
            )
            resources = method.prepare(config.method, env)
        ctx = LossContext(
            task,
            data.num_labels,
            teacher.config if teacher is not None else load_model_config(teacher_name),
            student.config,
            student_layers,
            shared,
            seed=train_cfg.seed,
            resources=resources,
        )
        loss_fn: nn.Module = method.Loss(config.method, ctx)
        if cached:
            cache = _open_cache(config, loss_fn, teacher_name, teacher_tok, sets["train"], data.num_labels)
    else:
        loss_fn = TaskLoss(task)

    eval_loaders = {
        s: _loader(sets[s], collate, config.eval.batch_size, accelerator) for s in sets if s != "train"
    }

    def evaluate(model: nn.Module, acc: Accelerator) -> dict[str, float]:
        if "validation" not in eval_loaders:
            return {}
        logits, labels = predict_logits(model, eval_loaders["validation"], acc, desc="eval")
        return compute_metrics(task, to_predictions(logits, task), labels, metric_names)

    def save_student(model: nn.Module, path: Path) -> None:
        save_model(accelerator.unwrap_model(model), student_tok, path)

    inputs = LoopInputs(
        out, student, loss_fn, teacher, sets["train"], collate, evaluate, best_metric, save_student,
        teacher_cache=cache,
    )  # fmt: skip
    state, finished, student = train_loop(
        inputs, train_cfg, accelerator, resume=resume, stop_after=stop_after
    )
    if not finished:
        return RunResult(out, {"stopped_at_step": state.step})

    best = out / "best"
    if train_cfg.load_best and best.is_dir():
        loaded = AutoModelForSequenceClassification.from_pretrained(best)
        student.load_state_dict(loaded.state_dict())
    metrics = run_summary(kind, config, student, state, truncated, which=which)
    if augmented:
        metrics["augmented"] = augmented
    final_loaders = {s: loader for s, loader in eval_loaders.items() if s in config.eval.splits}
    metrics.update(final_metrics(student, teacher, final_loaders, accelerator, config, metric_names))
    if "kb" in resources:  # ReAugKD: the same splits with retrieval from the knowledge base
        from kdkit.retrieval.predictor import RetrievalSettings, evaluate_with_retrieval

        settings = RetrievalSettings.of_method(config.method)
        metrics["retrieval"] = evaluate_with_retrieval(
            student, resources["kb"], final_loaders, accelerator, settings, task, metric_names
        )
    if accelerator.is_main_process:
        save_final(out, student, student_tok, metrics, state)
    accelerator.wait_for_everyone()
    return RunResult(out, metrics)


def run_summary(
    kind: str,
    config: Config,
    student: nn.Module,
    state: Any,
    truncated: dict[str, int],
    which: str = "student",
) -> dict[str, Any]:
    """The head of metrics.json: what ran, how big, how long, and how many inputs were truncated
    (fine-tuning also says ``which`` model of the config it trained: teacher or student)."""
    summary = {
        "kind": kind,
        "method": config.method.name if kind == "distill" else "finetune",
        "parameters": count_parameters(student),
        "steps": state.step,
        "best_step": state.best_step,
        "train_seconds": round(state.train_seconds, 2),
        "truncated": truncated,
    }
    if kind == "finetune":
        summary["which"] = which
    return summary


def final_metrics(
    student: nn.Module,
    teacher: nn.Module | None,
    loaders: dict[str, Any],
    accelerator: Accelerator,
    config: Config,
    metric_names: list[str],
) -> dict[str, Any]:
    """Student metrics per split; with a teacher, its metrics and the student-teacher agreement too."""
    task = config.task
    metrics: dict[str, Any] = {}
    for split, loader in loaders.items():
        logits, labels = predict_logits(student, loader, accelerator, desc=f"eval {split}")
        preds = to_predictions(logits, task)
        metrics[split] = compute_metrics(task, preds, labels, metric_names)
        if teacher is None or not config.eval.teacher:
            continue
        t_logits, _ = predict_logits(teacher, loader, accelerator, side="teacher", desc=f"teacher {split}")
        t_preds = to_predictions(t_logits, task)
        metrics.setdefault("teacher", {})[split] = compute_metrics(task, t_preds, labels, metric_names)
        if config.eval.agreement:
            metrics[split]["agreement"] = agreement(task, preds, t_preds)
    if teacher is not None:
        metrics["teacher_parameters"] = count_parameters(teacher)
    return metrics


def save_final(
    out: Path, student: PreTrainedModel, tokenizer: Any, metrics: dict[str, Any], state: Any
) -> None:
    """Write the student beside a temp name, move each file over the old one, then metrics.json last
    (its presence marks a finished run), then remove best/."""
    with atomic_dir(out / ".final") as tmp:
        save_model(student, tokenizer, tmp)
    for item in (out / ".final").iterdir():
        item.replace(out / item.name)  # atomic per file
    (out / ".final").rmdir()
    atomic_write_json(out / "trainer_state.json", asdict(state))
    from kdkit.report.card import write_model_card

    write_model_card(out, metrics)  # README.md: method, paper, teacher, data, metrics, command, versions
    atomic_write_json(out / "metrics.json", metrics)
    # only now: a run killed before metrics.json is resumed (--resume) and reloads best/ again
    shutil.rmtree(out / "best", ignore_errors=True)


def _augment(
    data: TaskData, config: Config, teacher: nn.Module, teacher_tok: Any, accelerator: Accelerator
) -> tuple[TaskData, int]:
    """MixKD augmentation: extra texts from a file or a seq2seq model, labelled by the teacher, appended
    to train (so they join the pool that pairs are drawn from). Returns the data and the count added."""
    from kdkit.data.augment import concat, generate_texts, read_texts, teacher_labelled

    m = config.method
    file, model = getattr(m, "augment_file", None), getattr(m, "augment_model", None)
    if not file and not model:
        return data, 0
    train = data.split("train")
    if file:
        texts, pairs = read_texts(file, config.data)
    else:
        k = m.augment_per_example
        texts = generate_texts(
            model, train.texts, per_example=k, max_new_tokens=m.augment_max_new_tokens, seed=config.train.seed
        )
        pairs = None if train.text_pairs is None else [p for p in train.text_pairs for _ in range(k)]
    teacher.to(accelerator.device)

    def predict(split: Any) -> Any:
        ds = DistillDataset(split, encode(split, teacher_tok, config.teacher.max_length), None)
        collate = Collator(teacher_tok.pad_token_id, None, config.task == "regression")
        loader = _loader(ds, collate, config.eval.batch_size, accelerator)
        return predict_logits(teacher, loader, accelerator, desc="teacher labels")[0]

    extra = teacher_labelled(texts, pairs, predict, config.task)
    log.info(
        "MixKD augmentation: %d teacher-labelled texts added to %d training examples", len(texts), len(train)
    )
    return replace(data, train=concat(train, extra)), len(texts)


def _open_cache(
    config: Config, loss_fn: nn.Module, teacher_name: str, teacher_tok: Any, train_set: Any, num_labels: int
) -> Any:
    """The run's teacher cache (cache.dir), checked against this teacher, tokenizer and training set."""
    from kdkit.teacher.build import check_cacheable, classifier_provenance, open_cache

    check_cacheable(config, loss_fn)
    cache = open_cache(config, classifier_provenance(teacher_name, teacher_tok, train_set.teacher))
    if cache.meta.get("num_labels") != num_labels:
        raise KdkitError(
            f"teacher cache {cache.root} holds {cache.meta.get('num_labels')} classes, the task has {num_labels}"
        )
    return cache


def load_teacher(name: str, config: Config, label_names: list[str] | None) -> PreTrainedModel:
    from kdkit.models import load_classifier, load_model_config

    if not has_trained_head(load_model_config(name)):
        raise KdkitError(
            f"teacher '{config.teacher.model}' has no trained classification head; fine-tune it first "
            "(`kdkit finetune`) or set teacher.finetune to fine-tune it on this task before distilling"
        )
    return load_classifier(name, config.task, label_names)


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
    return run(
        config,
        overrides,
        kind="finetune",
        which=which,
        resume=resume,
        overwrite=overwrite,
        stop_after=stop_after,
    )


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


__all__ = ["RunResult", "distill", "finetune"]
