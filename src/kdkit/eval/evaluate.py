"""Inference latency of a classifier (the demo's table)."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn


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
