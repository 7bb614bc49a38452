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
    """Metrics of the model saved in ``model_dir`` on the splits of ``config``'s data; for a ReAugKD run
    dir (one with ``kb/``) also under ``"retrieval"``: the same splits with retrieval from its KB."""
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
    kb = _knowledge_base(Path(model_dir))
    results: dict[str, Any] = {"model": model_dir}
    loaders = {}
    for split in splits or config.eval.splits:
        if not data.has(split):
            if splits:  # asked for explicitly
                raise KdkitError(f"split '{split}' is not in the data; available: {data.available()}")
            continue
        part = data.split(split)
        dataset = DistillDataset(part, encode(part, tokenizer, max_length), None)
        loader = torch.utils.data.DataLoader(dataset, batch_size=config.eval.batch_size, collate_fn=collate)
        loaders[split] = accelerator.prepare_data_loader(loader)
        logits, labels = predict_logits(model, loaders[split], accelerator, desc=f"eval {split}")
        results[split] = compute_metrics(config.task, to_predictions(logits, config.task), labels, names)
    if kb is not None:  # a ReAugKD run: the same splits with retrieval from its knowledge base
        from kdkit.fingerprint import split_fingerprint
        from kdkit.retrieval.predictor import RetrievalSettings, evaluate_with_retrieval

        if "train" in loaders:
            train = data.split("train")
            if (
                split_fingerprint(train.texts, train.text_pairs, train.labels)
                != kb.meta["provenance"]["data"]
            ):
                raise KdkitError(
                    "split 'train' differs from the data the knowledge base was built from, so each "
                    "example's own KB entry cannot be excluded; evaluate with the run's own config"
                )
        settings = RetrievalSettings.of_run(model_dir)
        results["retrieval"] = evaluate_with_retrieval(
            model, kb, loaders, accelerator, settings, config.task, names
        )
    return results


def _knowledge_base(model_dir: Path) -> Any:
    """The ReAugKD knowledge base saved in a run dir, or None."""
    from kdkit.retrieval.kb import KnowledgeBase
    from kdkit.retrieval.resolve import KB_DIR

    if not (model_dir / KB_DIR / "meta.json").is_file():
        return None
    return KnowledgeBase.load(model_dir / KB_DIR)


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
