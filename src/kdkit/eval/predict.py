"""Batched inference over a DataLoader: logits and predictions, gathered across processes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    loader: DataLoader,
    accelerator: Accelerator,
    side: str = "student",
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` on ``batch[side]`` for every batch; returns (logits (N, C), labels (N,)) in data order.

    ``loader`` must be prepared by ``accelerator`` (or be a plain loader on one process).
    """
    was_training = model.training
    model.eval()
    logits, labels = [], []
    bar = tqdm(loader, desc=desc, leave=False, disable=desc is None or not accelerator.is_local_main_process)
    for batch in bar:
        with accelerator.autocast():
            out = model(**batch[side])
        lg, lb = accelerator.gather_for_metrics((out.logits.float(), batch["labels"]))
        logits.append(lg.cpu())
        labels.append(lb.cpu())
    model.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def to_predictions(logits: np.ndarray, task: str) -> np.ndarray:
    """Class ids (argmax) for classification; the single output for regression."""
    if task == "regression":
        return logits.reshape(-1)
    return logits.argmax(-1)


def describe(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


class ClassifierPredictor:
    """Class probabilities of a saved classifier for texts (what `kdkit predict` serves for a plain run)."""

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = 128) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length

    @torch.no_grad()
    def predict_proba(
        self,
        texts: list[str],
        text_pairs: list[str] | None = None,
        *,
        batch_size: int = 32,
        retrieval: bool = True,
    ) -> np.ndarray:
        """(N, C) softmax of the model's logits (``retrieval`` is ignored: a plain model has none)."""
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = slice(start, start + batch_size)
            pairs = None if text_pairs is None else text_pairs[chunk]
            enc = self.tokenizer(
                texts[chunk],
                pairs,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            out.append(torch.softmax(self.model(**enc).logits.float(), -1))
        return torch.cat(out).numpy() if out else np.zeros((0, self.model.config.num_labels), np.float32)
