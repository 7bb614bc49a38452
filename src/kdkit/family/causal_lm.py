"""The causal-LM family (GPT/Llama-like): instruction data (prompt masked, response trained on), token-level
methods, perplexity on response tokens and ROUGE-L of greedy answers.

Extra files in the output dir: ``teacher_generations.jsonl`` (``generation.source: teacher``) and
``generations/<split>.jsonl`` (the student's greedy answers used for ROUGE-L).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, PreTrainedModel

from kdkit.align import require_offsets, vocabulary_matches
from kdkit.config import Config, ModelConfig, TrainConfig
from kdkit.data.encode import same_tokenizer
from kdkit.data.lm import (
    LMCollator,
    LMData,
    LMDataset,
    LMEncoded,
    LMSplit,
    encode_lm,
    load_lm_data,
    shift_labels,
)
from kdkit.data.lm_cross import CrossCollator, CrossDataset, encode_cross
from kdkit.errors import KdkitError, note
from kdkit.eval.lm import perplexity
from kdkit.eval.lm_evaluate import check_prompt_room, eval_sets, lm_loader, lm_metrics
from kdkit.eval.metrics import check_metrics, default_best_metric
from kdkit.family.base import Family, Job, RunData, Student, Teacher, report_truncation
from kdkit.family.cross_cache import cross_cache_job, cross_provenance, read_cross_cache
from kdkit.family.on_policy import OnPolicy
from kdkit.losses.ensemble import mixture_logits
from kdkit.methods import METHODS
from kdkit.methods.base import LM_TASKS, Batch, LossContext, Resources
from kdkit.methods.lm_base import LMTaskLoss, cross_refusal
from kdkit.models import (
    LMOutputs,
    build_lm_student,
    check_cross_pair,
    check_lm_pair,
    count_parameters,
    freeze,
    lm_forward,
    lm_logits,
    load_causal_lm,
    load_tokenizer,
    with_pad_token,
)
from kdkit.teacher.build import (
    DTYPES,
    CacheJob,
    lm_provenance,
    open_cache,
    pack_topk,
    to_device,
    topk_examples,
)
from kdkit.teacher.cache import TeacherCache
from kdkit.teacher.generations import GENERATIONS, teacher_generations


class CausalLMFamily(Family):
    name = "causal_lm"
    tasks = LM_TASKS
    finetune_method = LMTaskLoss

    def check(self, config: Config, job: Job) -> None:
        super().check(config, job)
        if config.teacher.finetune is not None:
            raise KdkitError(
                "teacher.finetune is for classifiers; for causal_lm fine-tune the teacher with "
                "`kdkit finetune --which teacher` and point teacher.model at its output dir"
            )
        if not config.teacher.model and not job.model.model:
            raise KdkitError("set teacher.model (and student.layers / num_layers) or student.model")
        check_prompt_room(config)  # before training: ROUGE-L runs after it

    def check_cache_use(self, config: Config, method: Any) -> None:
        super().check_cache_use(config, method)
        if config.generation.on_policy > 0:
            raise KdkitError(
                "cache.dir cannot serve generation.on_policy > 0: the student's own generations change every "
                "step; set cache.dir: null (live teacher) or generation.on_policy: 0"
            )

    # --- data and models ----------------------------------------------------------------------------------
    def load_data(self, config: Config, job: Job) -> LMData:
        data = load_lm_data(config.data)
        check_metrics("causal_lm", [self.best_metric(job.train, config.task)], 0)  # before any training
        return data

    def fingerprint(self, data: LMData) -> str:
        splits = [data.split(name) for name in data.available()]
        payload = [[s.prompts, s.responses, s.references] for s in splits]
        return hashlib.sha256(json.dumps([data.available(), payload]).encode()).hexdigest()

    def metric_names(self, config: Config, data: LMData) -> list[str]:
        return ["perplexity", *(["rouge_l"] if config.eval.rouge else [])]

    def best_metric(self, train: TrainConfig, task: str = "causal_lm") -> str:
        return train.best_metric or default_best_metric("causal_lm")

    def build_student(self, model: ModelConfig, base: str | None, data: LMData) -> Student:
        name = base or model.model
        assert name is not None
        student, layers = build_lm_student(model, name)
        tokenizer = with_pad_token(load_tokenizer(model.tokenizer or model.model or name))
        return Student(student, tokenizer, layers)

    def load_teacher(
        self, config: Config, name: str, student: Student, job: Job, accelerator: Accelerator, data: LMData
    ) -> Teacher:
        tokenizer = with_pad_token(load_tokenizer(config.teacher.tokenizer or name))
        same = same_tokenizer(student.tokenizer, tokenizer)
        if not same:  # refused before the teacher's weights are loaded
            check_cross_config(config, student.tokenizer, tokenizer, job.cached)
        if job.served and not same:
            raise KdkitError(
                "teacher.server needs a teacher with the student's tokenizer; for another tokenizer use the live "
                "teacher or `kdkit cache`"
            )
        if job.cached and not same:  # the cache holds the teacher's rows at its own positions
            return Teacher(name, tokenizer, None, None, same_tokenizer=False)
        if (
            job.cached or job.served
        ):  # the teacher's weights are never loaded; its tokenizer is checked like a live one's
            return Teacher(
                name, tokenizer, None, check_lm_pair(student.tokenizer, tokenizer, student.model, None)
            )
        model = freeze(load_causal_lm(name)).to(accelerator.device)
        if not same:
            check_cross_pair(student.tokenizer, tokenizer, student.model, model)
            return Teacher(name, tokenizer, model, None, same_tokenizer=False)
        return Teacher(
            name, tokenizer, model, check_lm_pair(student.tokenizer, tokenizer, student.model, model)
        )

    def encode(
        self,
        config: Config,
        job: Job,
        data: LMData,
        student: Student,
        teacher: Teacher | None,
        accelerator: Accelerator,
        out: Path,
    ) -> RunData:
        tokenizer, max_length = student.tokenizer, job.model.max_length
        train_split = data.split("train")
        if teacher is not None and config.generation.source == "teacher":  # text: any tokenizer pair
            train_split = teacher_generations(
                teacher.model,
                teacher.tokenizer,
                train_split,
                config.generation,
                max_length=max_length,
                chat_template=config.data.chat_template,
                out_dir=Path(config.cache.dir)
                if job.cached
                else out,  # a cache keeps the responses it covers
                accelerator=accelerator,
            )
        if teacher is not None and spans_mode(config, teacher):
            return self._encode_cross(config, job, data, train_split, student, teacher, accelerator)
        train_enc = encode_lm(
            train_split, tokenizer, max_length, config.data.chat_template, config.data.train_on_prompt
        )
        report_truncation(
            "train", train_enc.num_truncated, len(train_enc), f"{job.which}.max_length", max_length
        )
        loaders = {}
        if data.has("validation"):
            loaders["validation"] = lm_loader(data.split("validation"), tokenizer, config, accelerator)
        truncated = {"train": train_enc.num_truncated}
        return RunData(
            LMDataset(train_enc),
            LMCollator(tokenizer.pad_token_id),
            loaders,
            truncated,
            extra={"train": train_enc},
        )

    def _encode_cross(
        self,
        config: Config,
        job: Job,
        data: LMData,
        train_split: LMSplit,
        student: Student,
        teacher: Teacher,
        accelerator: Accelerator,
    ) -> RunData:
        """Both models' tokens and the aligned spans of every training response (``kdkit.data.lm_cross``)."""
        refuse_prompt_spans(config)
        max_length = job.model.max_length
        enc = encode_cross(
            train_split, student.tokenizer, teacher.tokenizer, max_length,
            teacher_max_length(config, job, teacher), config.data.chat_template,
        )  # fmt: skip
        if enc.aligned_tokens == 0:
            raise KdkitError(
                "no response token of the training data aligns between the student's and the teacher's "
                "tokenizers (their character offsets never end at the same place); check both tokenizers"
            )
        if not teacher.same_tokenizer:
            note(
                f"cross-tokenizer distillation: {enc.coverage:.1%} of the student's {enc.response_tokens} "
                "training response tokens lie in aligned spans (the rest get the CE term only)"
            )
        report_truncation("train", enc.student.num_truncated, len(enc), f"{job.which}.max_length", max_length)
        loaders = {}
        if data.has("validation"):
            loaders["validation"] = lm_loader(
                data.split("validation"), student.tokenizer, config, accelerator
            )
        skip_eos = bool(getattr(config.method, "skip_eos", False))
        merge = str(getattr(config.method, "merge", "first"))
        return RunData(
            CrossDataset(enc),
            CrossCollator(student.tokenizer.pad_token_id, teacher.tokenizer.pad_token_id, skip_eos, merge),
            loaders,
            {"train": enc.student.num_truncated},
            same_tokenizer=False,
            extra={
                "train": enc.student,
                "teacher_tokenizer": teacher.tokenizer,
                "teacher_max_length": teacher_max_length(config, job, teacher),
                "cross": enc,
                "student_tokenizer": student.tokenizer,
            },
        )

    def loss_context(
        self,
        config: Config,
        job: Job,
        data: LMData,
        student: Student,
        teacher: Teacher | None,
        run_data: RunData,
        resources: Resources,
    ) -> LossContext:
        teacher_config = teacher.model_config() if teacher is not None else None
        spans = not run_data.same_tokenizer
        return LossContext(
            "causal_lm",
            0,
            teacher_config,
            student.model.config,
            student.layers,
            not spans,
            _vocab(student, teacher),
            seed=job.train.seed,
            resources=resources,
            teacher_vocab_size=len(teacher.tokenizer) if spans and teacher is not None else None,
            matched=vocabulary_matches(student.tokenizer, teacher.tokenizer) if spans and teacher else None,
        )

    # --- teacher cache ------------------------------------------------------------------------------------
    def open_cache(self, config: Config, data: LMData, teacher: Teacher, run_data: RunData) -> TeacherCache:
        if "cross" in run_data.extra:  # span losses: the teacher's rows at its own positions
            enc, student_tok = run_data.extra["cross"], run_data.extra["student_tokenizer"]
            return open_cache(
                config, cross_provenance(config, teacher.name, teacher.tokenizer, student_tok, enc)
            )
        train_enc: LMEncoded = run_data.extra["train"]
        return open_cache(config, lm_provenance(config, teacher.name, teacher.tokenizer, train_enc))

    def read_cache(self, cache: TeacherCache, batch: Batch, device: torch.device) -> LMOutputs:
        if "align" in batch:
            return read_cross_cache(cache, batch, device)
        _, mask = shift_labels(batch)
        top = cache.topk(batch["idx"], mask.sum(1).tolist())
        top = type(top)(
            top.indices.to(device), top.logprobs.to(device), top.target_logprobs.to(device), top.tail
        )
        return LMOutputs(None, None, None, topk=top)

    def mix_teachers(self, config: Config, outputs: list[LMOutputs], weights: list[float]) -> LMOutputs:
        if any(out.topk is not None for out in outputs):  # refused before training (kdkit.family.base)
            raise KdkitError(
                "teacher.combine: mixture needs every teacher's full distribution (live teachers)"
            )
        logits = [lm_logits(out).detach() for out in outputs]
        vocab = min(z.shape[-1] for z in logits)  # same tokenizer: heads differ only by padding rows
        temperature = float(getattr(config.method, "temperature", 1.0))
        mixed = mixture_logits([z[..., :vocab] for z in logits], weights, temperature)
        return LMOutputs(None, None, None, logits=mixed)

    def cache_job(self, config: Config, teacher_name: str, accelerator: Accelerator, root: Path) -> CacheJob:
        method = METHODS.get(config.method.name)
        method.check(config.method, "causal_lm")  # a token-level method
        tokenizer = with_pad_token(load_tokenizer(config.teacher.tokenizer or teacher_name))
        student_name = config.student.tokenizer or config.student.model or teacher_name
        student_tok = (
            with_pad_token(load_tokenizer(student_name)) if student_name != teacher_name else tokenizer
        )
        same = same_tokenizer(student_tok, tokenizer)
        if not same:  # refused before the teacher's weights are loaded
            check_cross_config(config, student_tok, tokenizer, cached=True)
        teacher = freeze(load_causal_lm(teacher_name)).to(accelerator.device)
        split = load_lm_data(config.data).split("train")
        max_length = config.student.max_length  # the length training tokenizes to
        if config.generation.source == "teacher":  # generated once, kept in the cache dir for training
            split = teacher_generations(
                teacher, tokenizer, split, config.generation, max_length=max_length,
                chat_template=config.data.chat_template, out_dir=root, accelerator=accelerator,
            )  # fmt: skip
        vocab, k = len(tokenizer), config.cache.top_k
        if k > vocab:
            raise KdkitError(f"cache.top_k is {k}, more than the vocabulary's {vocab} tokens; lower it")
        if not same or getattr(method, "spans_only", False):  # span losses: rows at the teacher's positions
            refuse_prompt_spans(config)
            t_max = max_length if same else max(max_length, config.teacher.max_length)
            enc = encode_cross(
                split, student_tok, tokenizer, max_length, t_max, config.data.chat_template
            )  # as training encodes it
            job = cross_cache_job(config, teacher_name, teacher, (student_tok, tokenizer), enc, accelerator)
            if config.generation.source == "teacher":
                job.meta["generations"] = GENERATIONS
            return job
        encoded = encode_lm(
            split, tokenizer, max_length, config.data.chat_template, config.data.train_on_prompt
        )
        temperature = float(getattr(config.method, "temperature", 1.0))
        dtype = DTYPES[config.cache.dtype]

        def outputs(batch: Batch) -> list[dict[str, torch.Tensor]]:
            out = lm_forward(teacher, to_device(batch["student"], accelerator.device), chunked=True)
            targets, mask = shift_labels(batch)
            mask, targets = mask.to(accelerator.device), targets.to(accelerator.device)
            return topk_examples(out, mask, targets, vocab, k, temperature, dtype)

        meta = {"kind": "topk", "provenance": lm_provenance(config, teacher_name, tokenizer, encoded)}
        meta.update(num_examples=len(encoded), shard_size=config.cache.shard_size, vocab_size=vocab)
        if config.generation.source == "teacher":
            meta["generations"] = GENERATIONS
        return CacheJob(LMDataset(encoded), LMCollator(tokenizer.pad_token_id), outputs, pack_topk, meta)

    # --- training and evaluation ------------------------------------------------------------------------
    def prepare_batch(
        self, config: Config, job: Job, student: Student, run_data: RunData, accelerator: Accelerator
    ) -> Callable[[Batch, int, int], Batch] | None:
        if not job.teaches or config.generation.on_policy <= 0:
            return None
        collate = run_data.collate
        assert isinstance(collate, LMCollator)
        gen, max_length = config.generation, job.model.max_length
        reencode = None
        if isinstance(collate, CrossCollator):  # the samples are decoded and tokenized again for both sides
            teacher_tok, t_max = run_data.extra["teacher_tokenizer"], run_data.extra["teacher_max_length"]
            chat = config.data.chat_template

            def reencode(prompts: list[str], responses: list[str]) -> list[dict[str, Any]]:
                split = LMSplit(prompts, responses, [[r] for r in responses])
                encoded = encode_cross(split, student.tokenizer, teacher_tok, max_length, t_max, chat)
                return [CrossDataset(encoded)[i] for i in range(len(encoded))]

        return OnPolicy(
            student.model, student.tokenizer, gen, collate, max_length, accelerator, reencode,
            train_on_prompt=config.data.train_on_prompt,
        )  # fmt: skip

    def validate_fn(
        self,
        config: Config,
        job: Job,
        data: LMData,
        run_data: RunData,
        student: Student,
        teacher: Teacher | None,
    ) -> Callable[[nn.Module, Accelerator], dict[str, float]]:
        loader = run_data.eval_loaders.get("validation")
        vocab = _vocab(student, teacher)

        def evaluate(model: nn.Module, acc: Accelerator) -> dict[str, float]:
            if loader is None:
                return {}
            scores = perplexity(model, loader, acc, vocab_size=vocab)
            return {k: scores[k] for k in ("perplexity", "bits_per_byte") if k in scores}

        return evaluate

    def load_saved(self, path: Path) -> PreTrainedModel:
        return AutoModelForCausalLM.from_pretrained(path)

    def final_metrics(
        self,
        config: Config,
        data: LMData,
        trained: nn.Module,
        student: Student,
        teacher: Teacher | None,
        run_data: RunData,
        accelerator: Accelerator,
        out: Path,
    ) -> dict[str, Any]:
        """Student (and teacher) perplexity and ROUGE-L on every eval set; generations saved per set."""
        metrics: dict[str, Any] = {}
        model = teacher.model if teacher is not None else None
        tokenizer, vocab = student.tokenizer, _vocab(student, teacher)
        trained.to(accelerator.device)
        for name, split in eval_sets(data, config).items():
            gen_file = out / "generations" / f"{name}.jsonl"
            if accelerator.is_main_process:
                gen_file.parent.mkdir(parents=True, exist_ok=True)
            metrics[name] = lm_metrics(
                trained, tokenizer, split, config, accelerator, vocab_size=vocab, generations_file=gen_file
            )
            if model is not None and config.eval.teacher:  # each model with its own tokenizer
                assert teacher is not None
                t_tok, t_vocab = (tokenizer, vocab) if teacher.same_tokenizer else (teacher.tokenizer, None)
                metrics.setdefault("teacher", {})[name] = lm_metrics(
                    model, t_tok, split, config, accelerator, vocab_size=t_vocab or len(t_tok)
                )
        if model is not None:
            metrics["teacher_parameters"] = count_parameters(model)
        return metrics

    def evaluate_saved(
        self, model_dir: Path, config: Config, splits: list[str] | None, accelerator: Accelerator
    ) -> tuple[dict[str, Any], nn.Module, dict[str, DataLoader], Any, list[str]]:
        model = load_causal_lm(str(model_dir)).to(accelerator.device)
        tokenizer = with_pad_token(load_tokenizer(str(model_dir), model.config.get_text_config()))
        data = load_lm_data(config.data)
        results: dict[str, Any] = {"model": str(model_dir)}
        for name, split in eval_sets(data, config, splits).items():
            results[name] = lm_metrics(
                model, tokenizer, split, config, accelerator, vocab_size=len(tokenizer)
            )
        return results, model, {}, data, self.metric_names(config, data)


def spans_mode(config: Config, teacher: Teacher) -> bool:
    """Whether the loss scores aligned spans: a teacher with another tokenizer, or a method that always does
    (ULD)."""
    method = METHODS.get(config.method.name)
    return not teacher.same_tokenizer or bool(getattr(method, "spans_only", False))


def teacher_max_length(config: Config, job: Job, teacher: Teacher) -> int:
    """The teacher side's token budget: the student's, or ``teacher.max_length`` when that is larger (another
    tokenizer may need more tokens for the same text)."""
    if teacher.same_tokenizer:
        return job.model.max_length
    return max(job.model.max_length, config.teacher.max_length)


def refuse_prompt_spans(config: Config) -> None:
    """Span losses (another tokenizer, or a span method) align response text only: no prompt training."""
    if config.data.train_on_prompt:
        raise KdkitError(
            "data.train_on_prompt is true, but span losses (a teacher with another tokenizer, or method "
            f"'{config.method.name}') align only the responses' tokens; set data.train_on_prompt: false"
        )


def check_cross_config(config: Config, student_tok: Any, teacher_tok: Any, cached: bool) -> None:
    """Refuse, in one line, what cannot run with a teacher of another tokenizer."""
    method = METHODS.get(config.method.name)
    if not getattr(method, "cross_tokenizer", False):
        raise KdkitError(cross_refusal(config.method.name))
    if cached and (getattr(config.method, "top_k", None) or config.cache.top_k + 1) > config.cache.top_k:
        note(
            f"from the teacher cache, each span's {config.cache.top_k} largest teacher probabilities "
            "(cache.top_k) are compared exactly and the rest by their mass (exact only with a live teacher)"
        )
    for role, tok in (("student", student_tok), ("teacher", teacher_tok)):
        require_offsets(tok, role)
        if config.data.chat_template and not getattr(tok, "chat_template", None):
            raise KdkitError(
                f"data.chat_template is true but the {role}'s tokenizer ('{tok.name_or_path}') has no chat "
                "template; each model renders the prompt with its own: set data.chat_template: false, or "
                f"give the {role} a tokenizer with one ({role}.tokenizer)"
            )


def _vocab(student: Student, teacher: Teacher | None) -> int:
    """The vocabulary the losses and metrics compare: the teacher's checked size, else the student's."""
    if teacher is not None and teacher.vocab is not None:
        return teacher.vocab
    return len(student.tokenizer)
