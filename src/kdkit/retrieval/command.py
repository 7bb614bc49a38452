"""`kdkit kb build`: ReAugKD's knowledge base of a config's teacher over its training data, built ahead of
`kdkit distill` (which finds it in ``<output_dir>/kb``), with the config's ``reaugkd`` settings (the defaults
for another method). The KB dir appears complete or not at all, and an interrupted build resumes its
teacher pass when rerun (``kdkit.retrieval.resolve``)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from kdkit.config import Config, load_config
from kdkit.data import Collator, DistillDataset, encode, load_task_data
from kdkit.errors import KdkitError
from kdkit.lock import dir_lock, path_lock
from kdkit.models import freeze, load_model_config, load_teacher_classifier, load_tokenizer
from kdkit.retrieval.kb import KnowledgeBase
from kdkit.retrieval.resolve import KB_DIR, build_and_save, kb_settings, provenance
from kdkit.runtime import make_accelerator
from kdkit.subcommand import CommandEnv, MethodCommand


def build_kb_for_config(
    config: Config | dict[str, Any] | str | Path,
    overrides: list[str] | None = None,
    output: str | Path | None = None,
    *,
    resolve_teacher: Callable[[Config, Accelerator], str],
) -> tuple[Path, KnowledgeBase]:
    """Write the KB to ``output`` (default ``<output_dir>/kb``); ``resolve_teacher`` names the teacher to
    load (``kdkit.train.run.resolve_teacher``: fine-tuned first when ``teacher.finetune`` asks)."""
    config = load_config(config, overrides)
    if config.task != "classification":
        raise KdkitError(f"a knowledge base needs task: classification (ReAugKD), got '{config.task}'")
    target = Path(output) if output else Path(config.output_dir) / KB_DIR
    if target.exists() and not target.is_dir():  # before the teacher pass, not after it
        raise KdkitError(
            f"--output '{target}' is a file; a knowledge base is a directory: choose another path"
        )
    accelerator = make_accelerator(config)
    # the run dir's lock when the KB goes into it (a distill there must wait), else the KB dir's own
    lock = dir_lock(target.parent, "output dir") if output is None else path_lock(target, "knowledge base")
    with lock if accelerator.is_main_process else contextlib.nullcontext():
        return _build(config, target, accelerator, resolve_teacher)


def _build(
    config: Config,
    target: Path,
    accelerator: Accelerator,
    resolve_teacher: Callable[[Config, Accelerator], str],
) -> tuple[Path, KnowledgeBase]:
    data = load_task_data(config.data, config.task)
    teacher_name = resolve_teacher(config, accelerator)
    teacher = freeze(load_teacher_classifier(teacher_name, config.task, data.label_names))
    tokenizer = load_tokenizer(config.teacher.tokenizer or teacher_name)
    student_config = load_model_config(config.student.model or teacher_name)
    dim = (config.student.config_overrides or {}).get("hidden_size", student_config.hidden_size)
    train = data.split("train")
    enc = encode(train, tokenizer, config.teacher.max_length)
    train_set = DistillDataset(train, enc, enc)  # the teacher side is what the KB reads
    settings = kb_settings(config.method, dim, config.teacher.max_length)
    prov = provenance(teacher_name, train, settings)
    collate = Collator(tokenizer.pad_token_id)
    kb = build_and_save(
        teacher,
        train_set,
        collate,
        accelerator,
        settings,
        prov,
        data.label_names,
        target,
        config.eval.batch_size,
    )
    return target, kb


def _arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kb_command", required=True)
    about = (
        "build the KB of a config's teacher over its training data; the KB dir appears complete or not "
        "at all, and an interrupted build resumes its teacher pass when rerun (same KB as one straight build)"
    )
    p = sub.add_parser("build", help=about, description=about)
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--output", default=None, help="KB dir (default: <output_dir>/kb, where distill finds it)")


def _run(args: argparse.Namespace, env: CommandEnv) -> dict[str, Any]:
    path, kb = build_kb_for_config(
        args.config, args.overrides, args.output, resolve_teacher=env.resolve_teacher
    )
    return {"kb": str(path), "entries": len(kb), "dim": kb.dim, "index": kb.meta["index"]["kind"]}


KB_COMMAND = MethodCommand(
    name=KB_DIR,
    help="ReAugKD knowledge bases: `kdkit kb build --config FILE`",
    add_arguments=_arguments,
    run=_run,
)
