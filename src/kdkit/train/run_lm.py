"""`finetune` and `distill` for causal LMs (``task: causal_lm``): the same loop as the classifiers, with
instruction data (prompt masked), a token-level method, and perplexity / ROUGE-L evaluation.

Extra files in the output dir: ``teacher_generations.jsonl`` (``generation.source: teacher``) and
``generations/<split>.jsonl`` (the student's greedy answers used for ROUGE-L).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from transformers import AutoModelForCausalLM

from kdkit.config import Config
from kdkit.data.lm import LMCollator, LMDataset, encode_lm, load_lm_data
from kdkit.errors import KdkitError
from kdkit.eval.lm import perplexity
from kdkit.eval.lm_evaluate import eval_sets, lm_loader, lm_metrics
from kdkit.eval.metrics import check_metrics
from kdkit.methods import METHODS
from kdkit.methods.base import LossContext
from kdkit.methods.lm_base import LMTaskLoss
from kdkit.models import (
    build_lm_student,
    check_lm_pair,
    count_parameters,
    freeze,
    load_causal_lm,
    load_model_config,
    load_tokenizer,
)
from kdkit.teacher.build import check_cacheable, lm_provenance, open_cache
from kdkit.train.lm_sources import OnPolicy, teacher_generations
from kdkit.train.loop import LoopInputs, train_loop


def lm_tokenizer(tokenizer: Any) -> Any:
    """Batching needs a pad token: models without one (Llama, SmolLM2) pad with EOS. Padding is masked
    out of attention and labels, so the choice does not change the loss."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise KdkitError(
                "the tokenizer has neither a pad nor an EOS token; set one with tokenizer.add_special_tokens"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def run_lm(
    config: Config,
    accelerator: Accelerator,
    *,
    kind: str,
    which: str,
    resume: bool,
    overwrite: bool,
    stop_after: int | None,
) -> Any:
    from kdkit.train.run import (
        RunResult,
        finished_run,
        prepare_output_dir,
        report_truncation,
        run_summary,
        save_final,
        save_model,
    )

    if kind == "distill":
        METHODS.get(config.method.name).check(config.method, "causal_lm")  # before any loading
    data = load_lm_data(config.data)
    check_metrics("causal_lm", [config.train.best_metric or "perplexity"], 0)  # before any training
    if config.teacher.finetune is not None:
        raise KdkitError(
            "teacher.finetune is for classifiers; for causal_lm fine-tune the teacher with "
            "`kdkit finetune --which teacher` and point teacher.model at its output dir"
        )
    if kind == "finetune" and which == "teacher":
        if not config.teacher.model:
            raise KdkitError("teacher.model is not set; name a hub id, a local dir or an asset (`kdkit ls`)")
        model_cfg, train_cfg = replace(config.teacher, finetune=None), config.train
        teacher_name = config.teacher.model
    else:
        model_cfg, train_cfg = config.student, config.train
        teacher_name = config.teacher.model
        if not teacher_name and not model_cfg.model:
            raise KdkitError("set teacher.model (and student.layers / num_layers) or student.model")
    out = prepare_output_dir(config, resume, overwrite, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if resume and (out / "metrics.json").is_file():
        return finished_run(out, accelerator)
    set_seed(train_cfg.seed)
    student, student_layers = build_lm_student(model_cfg, teacher_name or model_cfg.model)
    tokenizer = lm_tokenizer(load_tokenizer(model_cfg.tokenizer or model_cfg.model or teacher_name))
    max_length = model_cfg.max_length

    teacher, vocab, cached = None, len(tokenizer), kind == "distill" and config.cache.dir is not None
    if kind == "distill":
        if not teacher_name:
            raise KdkitError(
                "distill needs teacher.model; for training without a teacher use `kdkit finetune`"
            )
        teacher_tok = lm_tokenizer(load_tokenizer(config.teacher.tokenizer or teacher_name))
        if cached:  # the teacher's weights are never loaded; its tokenizer is checked like a live one's
            check_cacheable(config)
            vocab = check_lm_pair(tokenizer, teacher_tok, student, None)
        else:
            teacher = freeze(load_causal_lm(teacher_name)).to(accelerator.device)
            vocab = check_lm_pair(tokenizer, teacher_tok, student, teacher)

    train_split = data.split("train")
    if kind == "distill" and config.generation.source == "teacher":
        train_split = teacher_generations(
            teacher,
            tokenizer,
            train_split,
            config.generation,
            max_length=max_length,
            chat_template=config.data.chat_template,
            out_dir=Path(config.cache.dir) if cached else out,  # a cache keeps the responses it covers
            accelerator=accelerator,
        )
    train_enc = encode_lm(train_split, tokenizer, max_length, config.data.chat_template)
    report_truncation("train", train_enc.num_truncated, len(train_enc), f"{which}.max_length", max_length)
    collate = LMCollator(tokenizer.pad_token_id)

    cache = None
    if kind == "distill":
        method = METHODS.get(config.method.name)
        teacher_config = teacher.config if teacher is not None else load_model_config(teacher_name)
        ctx = LossContext("causal_lm", 0, teacher_config, student.config, student_layers, True, vocab)
        loss_fn: nn.Module = method.Loss(config.method, ctx)
        if cached:
            cache = open_cache(config, lm_provenance(config, teacher_name, teacher_tok, train_enc))
    else:
        loss_fn = LMTaskLoss(vocab)

    val_loader = (
        lm_loader(data.split("validation"), tokenizer, config, accelerator)
        if data.has("validation")
        else None
    )

    def evaluate(model: nn.Module, acc: Accelerator) -> dict[str, float]:
        if val_loader is None:
            return {}
        return {"perplexity": perplexity(model, val_loader, acc, vocab_size=vocab)["perplexity"]}

    def save_student(model: nn.Module, path: Path) -> None:
        save_model(accelerator.unwrap_model(model), tokenizer, path)

    prepare = None
    if kind == "distill" and config.generation.on_policy > 0:
        prepare = OnPolicy(student, tokenizer, config.generation, collate, max_length, accelerator)
    best_metric = train_cfg.best_metric or "perplexity"
    inputs = LoopInputs(
        out,
        student,
        loss_fn,
        teacher,
        LMDataset(train_enc),
        collate,
        evaluate,
        best_metric,
        save_student,
        prepare,
        teacher_cache=cache,
    )
    state, finished, student = train_loop(
        inputs, train_cfg, accelerator, resume=resume, stop_after=stop_after
    )
    if not finished:
        return RunResult(out, {"stopped_at_step": state.step})

    best = out / "best"
    if train_cfg.load_best and best.is_dir():
        student.load_state_dict(AutoModelForCausalLM.from_pretrained(best).state_dict())
    metrics = run_summary(kind, config, student, state, {"train": train_enc.num_truncated}, which=which)
    metrics.update(final_lm_metrics(student, teacher, tokenizer, data, config, accelerator, vocab, out))
    if accelerator.is_main_process:
        save_final(out, student, tokenizer, metrics, state)
    accelerator.wait_for_everyone()
    return RunResult(out, metrics)


def final_lm_metrics(
    student: nn.Module,
    teacher: nn.Module | None,
    tokenizer: Any,
    data: Any,
    config: Config,
    accelerator: Accelerator,
    vocab: int,
    out: Path,
) -> dict[str, Any]:
    """Student (and teacher) perplexity and ROUGE-L on every eval set; generations saved per set."""
    metrics: dict[str, Any] = {}
    student.to(accelerator.device)
    for name, split in eval_sets(data, config).items():
        gen_file = out / "generations" / f"{name}.jsonl"
        if accelerator.is_main_process:
            gen_file.parent.mkdir(parents=True, exist_ok=True)
        metrics[name] = lm_metrics(
            student, tokenizer, split, config, accelerator, vocab_size=vocab, generations_file=gen_file
        )
        if teacher is not None and config.eval.teacher:
            metrics.setdefault("teacher", {})[name] = lm_metrics(
                teacher, tokenizer, split, config, accelerator, vocab_size=vocab
            )
    if teacher is not None:
        metrics["teacher_parameters"] = count_parameters(teacher)
    return metrics


__all__ = ["lm_tokenizer", "run_lm"]
