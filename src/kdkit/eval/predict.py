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
