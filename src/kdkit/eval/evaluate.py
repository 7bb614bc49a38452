"""Evaluate a saved model on a config's data, and measure inference latency."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdkit.config import Config, load_config
from kdkit.data import Collator, DistillDataset, encode, load_task_data
from kdkit.errors import KdkitError
from kdkit.eval.metrics import compute_metrics, default_metrics
from kdkit.eval.predict import predict_logits, to_predictions
from kdkit.models import load_classifier, load_tokenizer


def evaluate_saved(
    model_dir: str | Path,
    config: Config | dict[str, Any] | str | Path,
    overrides: list[str] | None = None,
    splits: list[str] | None = None,
) -> dict[str, Any]:
    """Metrics of the model saved in ``model_dir`` on the splits of ``config``'s data."""
    config = load_config(config, overrides)
    if config.task == "causal_lm":
        from kdkit.eval.lm_evaluate import evaluate_lm_saved

        return evaluate_lm_saved(model_dir, config, splits=splits)
    model_dir = str(model_dir)
    data = load_task_data(config.data, config.task)
    model = load_classifier(model_dir, config.task, data.label_names)
    tokenizer = load_tokenizer(model_dir)
    from kdkit.train.run import make_accelerator  # late import: train imports eval

    accelerator = make_accelerator(config)
    names = config.eval.metrics or default_metrics(config.task, data.num_labels)
    collate = Collator(tokenizer.pad_token_id, None, config.task == "regression")
    max_length = config.student.max_length
    results: dict[str, Any] = {"model": model_dir}
    for split in splits or config.eval.splits:
        if not data.has(split):
            if splits:  # asked for explicitly
                raise KdkitError(f"split '{split}' is not in the data; available: {data.available()}")
            continue
        part = data.split(split)
        dataset = DistillDataset(part, encode(part, tokenizer, max_length), None)
        loader = torch.utils.data.DataLoader(dataset, batch_size=config.eval.batch_size, collate_fn=collate)
        logits, labels = predict_logits(
            model, accelerator.prepare_data_loader(loader), accelerator, desc=f"eval {split}"
        )
        results[split] = compute_metrics(config.task, to_predictions(logits, config.task), labels, names)
    return results


@torch.no_grad()
def latency_per_example(
    model: nn.Module,
    tokenizer: Any,
    texts: list[str],
    batch_size: int = 32,
    max_length: int = 128,
    repeats: int = 3,
) -> float:
    """Median seconds per example of ``model`` on ``texts`` in batches (tokenization excluded)."""
    model.eval()
    batches = [
        tokenizer(
            texts[i : i + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        for i in range(0, len(texts), batch_size)
    ]
    model(**batches[0])  # warm-up
    timings = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            model(**b)
        timings.append((time.perf_counter() - t0) / len(texts))
    return sorted(timings)[len(timings) // 2]
