"""The encoder-classifier family (GLUE-style classification and regression): tables of texts (and text
pairs) with labels, sequence-classification models, logits, accuracy/F1/correlation metrics."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from kdkit.config import Config, ModelConfig, TrainConfig
from kdkit.data import Collator, DistillDataset, Split, TaskData, encode, load_task_data, same_tokenizer
from kdkit.errors import KdkitError
from kdkit.eval.metrics import agreement, check_metrics, compute_metrics, default_best_metric, default_metrics
from kdkit.eval.predict import predict_logits, to_predictions
from kdkit.family.base import Family, Job, RunData, Student, Teacher, report_truncation
from kdkit.fingerprint import split_fingerprint
from kdkit.losses.ensemble import mixture_logits
from kdkit.methods.base import CLASSIFIER_TASKS, Batch, LossContext, Resources, TaskLoss
from kdkit.models import (
    build_student,
    count_parameters,
    freeze,
    load_teacher_classifier,
    load_tokenizer,
)
from kdkit.models.load import load_trained_classifier
from kdkit.teacher.build import CacheJob, classifier_provenance, open_cache, to_device
from kdkit.teacher.cache import TeacherCache
from kdkit.teacher.check import FIX, judge, judged_metric


def _loader(
    dataset: DistillDataset, collate: Collator, batch_size: int, accelerator: Accelerator
) -> DataLoader:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    return accelerator.prepare_data_loader(loader)


class ClassifierFamily(Family):
    name = "classifier"
    tasks = CLASSIFIER_TASKS
    finetune_method = TaskLoss

    # --- data and models ----------------------------------------------------------------------------------
    def load_data(self, config: Config, job: Job) -> TaskData:
        data = load_task_data(config.data, config.task)
        names = [*self.metric_names(config, data), self.best_metric(job.train, config.task)]
        check_metrics(config.task, names, data.num_labels)  # before any training, not after
        return data

    def fingerprint(self, data: TaskData) -> str:
        parts = [
            split_fingerprint(s.texts, s.text_pairs, s.labels)
            for s in (data.split(name) for name in data.available())
        ]
        return hashlib.sha256(json.dumps([data.available(), parts, data.label_names]).encode()).hexdigest()

    def metric_names(self, config: Config, data: TaskData) -> list[str]:
        return config.eval.metrics or default_metrics(config.task, data.num_labels)

    def best_metric(self, train: TrainConfig, task: str = "classification") -> str:
        return train.best_metric or default_best_metric(task)

    def check_teacher(
        self, config: Config, train: TrainConfig, data: TaskData, teacher: str, accelerator: Accelerator
    ) -> str | None:
        """The teacher's validation metric against the majority class / mean predictor (``teacher.check``):
        from the metrics.json of a teacher kdkit fine-tuned, else by predicting the validation split."""
        if not config.teacher.check or not data.has("validation"):
            return None
        run_metric, split = self.best_metric(train, config.task), data.split("validation")
        metric = judged_metric(run_metric)
        saved = Path(teacher) / "metrics.json"
        value = json.loads(saved.read_text()).get("validation", {}).get(metric) if saved.is_file() else None
        if value is None:  # not fine-tuned by kdkit: run it over the validation split once
            model = freeze(load_teacher_classifier(teacher, config.task, data.label_names))
            loaded = Teacher(teacher, load_tokenizer(config.teacher.tokenizer or teacher), model)
            label = self.labeller(config, loaded, accelerator)
            assert label is not None
            predictions = to_predictions(label(split), config.task)
            value = compute_metrics(config.task, predictions, split.labels, [metric])[metric]
        instead_of = run_metric if metric != run_metric else None
        verdict = judge(config.task, metric, value, np.asarray(split.labels), instead_of)
        if verdict is None:
            return None
        if not verdict.ok:
            raise KdkitError(f"{verdict.describe()}: {FIX}")
        return f"teacher check: {verdict.describe()}"

    def build_student(self, model: ModelConfig, base: str | None, data: TaskData) -> Student:
        name = base or model.model
        assert name is not None
        student, layers = build_student(model, name, data.task, data.label_names)
        tokenizer = load_tokenizer(model.tokenizer or model.model or name)
        return Student(student, tokenizer, layers)

    def load_teacher(
        self, config: Config, name: str, student: Student, job: Job, accelerator: Accelerator, data: TaskData
    ) -> Teacher:
        tokenizer = load_tokenizer(config.teacher.tokenizer or name)
        # with a teacher cache the teacher's weights are never loaded
        model = None if job.cached else freeze(load_teacher_classifier(name, config.task, data.label_names))
        return Teacher(name, tokenizer, model)

    def labeller(
        self, config: Config, teacher: Teacher | None, accelerator: Accelerator
    ) -> Callable[[Split], np.ndarray] | None:
        if teacher is None or teacher.model is None:
            return None
        model, tokenizer = teacher.model, teacher.tokenizer

        def label(split: Split) -> np.ndarray:
            model.to(accelerator.device)
            dataset = DistillDataset(split, encode(split, tokenizer, config.teacher.max_length), None)
            collate = Collator(tokenizer.pad_token_id, None, config.task == "regression")
            loader = _loader(dataset, collate, config.eval.batch_size, accelerator)
            return predict_logits(model, loader, accelerator, desc="teacher labels")[0]

        return label

    def encode(
        self,
        config: Config,
        job: Job,
        data: TaskData,
        student: Student,
        teacher: Teacher | None,
        accelerator: Accelerator,
        out: Path,
    ) -> RunData:
        teacher_tok = teacher.tokenizer if teacher is not None else None
        shared = teacher_tok is None or same_tokenizer(student.tokenizer, teacher_tok)
        s_len, t_len = job.model.max_length, config.teacher.max_length
        splits = list(
            dict.fromkeys(["train", *[s for s in ("validation", *config.eval.splits) if data.has(s)]])
        )
        sets, truncated = {}, {}
        for name in splits:
            split = data.split(name)
            s_enc = encode(split, student.tokenizer, s_len)
            t_enc = None
            if teacher_tok is not None:
                t_enc = s_enc if shared and t_len == s_len else encode(split, teacher_tok, t_len)
            sets[name] = DistillDataset(split, s_enc, t_enc)
            truncated[name] = s_enc.num_truncated
            report_truncation(name, s_enc.num_truncated, len(split), f"{job.which}.max_length", s_len)
        collate = Collator(
            student.tokenizer.pad_token_id,
            teacher_tok.pad_token_id if teacher_tok is not None else None,
            config.task == "regression",
        )
        loaders = {
            s: _loader(sets[s], collate, config.eval.batch_size, accelerator) for s in sets if s != "train"
        }
        return RunData(sets["train"], collate, loaders, truncated, shared)

    def loss_context(
        self,
        config: Config,
        job: Job,
        data: TaskData,
        student: Student,
        teacher: Teacher | None,
        run_data: RunData,
        resources: Resources,
    ) -> LossContext:
        teacher_config = teacher.model_config() if teacher is not None else None
        return LossContext(
            config.task,
            data.num_labels,
            teacher_config,
            student.model.config,
            student.layers,
            run_data.same_tokenizer,
            seed=job.train.seed,
            resources=resources,
        )

    # --- teacher cache ------------------------------------------------------------------------------------
    def open_cache(self, config: Config, data: TaskData, teacher: Teacher, run_data: RunData) -> TeacherCache:
        train_set = run_data.train_set
        assert isinstance(train_set, DistillDataset) and train_set.teacher is not None
        cache = open_cache(config, classifier_provenance(teacher.name, teacher.tokenizer, train_set.teacher))
        if cache.meta.get("num_labels") != data.num_labels:
            raise KdkitError(
                f"teacher cache {cache.root} holds {cache.meta.get('num_labels')} classes, the task has "
                f"{data.num_labels}"
            )
        return cache

    def read_cache(self, cache: TeacherCache, batch: Batch, device: torch.device) -> Any:
        return SimpleNamespace(logits=cache.logits(batch["idx"]).to(device))

    def mix_teachers(self, config: Config, outputs: list[Any], weights: list[float]) -> Any:
        logits = [out.logits.detach() for out in outputs]
        if config.task == "regression":  # one real prediction per example: the weighted mean of the teachers'
            return SimpleNamespace(logits=sum(w * z.float() for w, z in zip(weights, logits, strict=True)))
        temperature = float(getattr(config.method, "temperature", 1.0))
        return SimpleNamespace(logits=mixture_logits(logits, weights, temperature))

    def cache_job(self, config: Config, teacher_name: str, accelerator: Accelerator, root: Path) -> CacheJob:
        data = load_task_data(config.data, config.task)
        tokenizer = load_tokenizer(config.teacher.tokenizer or teacher_name)
        split = data.split("train")
        encoded = encode(split, tokenizer, config.teacher.max_length)
        teacher = freeze(load_teacher_classifier(teacher_name, config.task, data.label_names))
        teacher = teacher.to(accelerator.device)

        def outputs(batch: Batch) -> list[dict[str, torch.Tensor]]:
            logits = teacher(**to_device(batch["student"], accelerator.device)).logits.float().cpu()
            return [{"logits": row} for row in logits]

        def pack(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
            return {"logits": torch.stack([r["logits"] for r in rows])}

        meta = {"kind": "logits", "provenance": classifier_provenance(teacher_name, tokenizer, encoded)}
        meta.update(num_examples=len(encoded), shard_size=config.cache.shard_size, num_labels=data.num_labels)
        collate = Collator(tokenizer.pad_token_id, None, config.task == "regression")
        return CacheJob(DistillDataset(split, encoded, None), collate, outputs, pack, meta)

    # --- training and evaluation ------------------------------------------------------------------------
    def validate_fn(
        self,
        config: Config,
        job: Job,
        data: TaskData,
        run_data: RunData,
        student: Student,
        teacher: Teacher | None,
    ) -> Callable[[nn.Module, Accelerator], dict[str, float]]:
        loader = run_data.eval_loaders.get("validation")
        names = self.metric_names(config, data)

        def evaluate(model: nn.Module, acc: Accelerator) -> dict[str, float]:
            if loader is None:
                return {}
            logits, labels = predict_logits(model, loader, acc, desc="eval")
            return compute_metrics(config.task, to_predictions(logits, config.task), labels, names)

        return evaluate

    def load_saved(self, path: Path) -> PreTrainedModel:
        return AutoModelForSequenceClassification.from_pretrained(path)

    def final_loaders(self, config: Config, run_data: RunData) -> dict[str, DataLoader]:
        return {s: loader for s, loader in run_data.eval_loaders.items() if s in config.eval.splits}

    def final_metrics(
        self,
        config: Config,
        data: TaskData,
        trained: nn.Module,
        student: Student,
        teacher: Teacher | None,
        run_data: RunData,
        accelerator: Accelerator,
        out: Path,
    ) -> dict[str, Any]:
        """Student metrics per split; with a teacher, its metrics and the student-teacher agreement too."""
        task, names = config.task, self.metric_names(config, data)
        model = teacher.model if teacher is not None else None
        metrics: dict[str, Any] = {}
        for split, loader in self.final_loaders(config, run_data).items():
            logits, labels = predict_logits(trained, loader, accelerator, desc=f"eval {split}")
            preds = to_predictions(logits, task)
            metrics[split] = compute_metrics(task, preds, labels, names)
            if model is None or not config.eval.teacher:
                continue
            t_logits, _ = predict_logits(model, loader, accelerator, side="teacher", desc=f"teacher {split}")
            t_preds = to_predictions(t_logits, task)
            metrics.setdefault("teacher", {})[split] = compute_metrics(task, t_preds, labels, names)
            if config.eval.agreement:
                metrics[split]["agreement"] = agreement(task, preds, t_preds)
        if model is not None:
            metrics["teacher_parameters"] = count_parameters(model)
        return metrics

    def evaluate_saved(
        self, model_dir: Path, config: Config, splits: list[str] | None, accelerator: Accelerator
    ) -> tuple[dict[str, Any], nn.Module, dict[str, DataLoader], Any, list[str]]:
        data = load_task_data(config.data, config.task)
        model = load_trained_classifier(str(model_dir), config.task, data.label_names)
        tokenizer = load_tokenizer(str(model_dir), model.config)
        names = self.metric_names(config, data)
        collate = Collator(tokenizer.pad_token_id, None, config.task == "regression")
        results: dict[str, Any] = {"model": str(model_dir)}
        loaders = {}
        for split in splits or config.eval.splits:
            if not data.has(split):
                if splits:  # asked for explicitly
                    raise KdkitError(f"split '{split}' is not in the data; available: {data.available()}")
                continue
            part = data.split(split)
            dataset = DistillDataset(part, encode(part, tokenizer, config.student.max_length), None)
            loaders[split] = _loader(dataset, collate, config.eval.batch_size, accelerator)
            logits, labels = predict_logits(model, loaders[split], accelerator, desc=f"eval {split}")
            results[split] = compute_metrics(config.task, to_predictions(logits, config.task), labels, names)
        return results, model, loaders, data, names
