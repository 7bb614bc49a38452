"""Greedy generation speed of causal LMs, timed the same way for every model (teacher and students).

Each model generates exactly ``new_tokens`` tokens (end-of-sequence ignored, so every model does the same
work) for each prompt, one prompt at a time with the KV cache: the way a chat model answers one user. After
one short warm-up generation per model, the models take turns for ``rounds`` rounds (so that a machine
slowing down or speeding up affects all of them alike); the median tokens/s of the rounds is reported.
Tokenization is excluded.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import torch
from torch import nn

from kdkit.errors import KdkitError


def _generate(model: nn.Module, ids: list[int], new_tokens: int) -> int:
    """Greedy generation of exactly ``new_tokens`` tokens after ``ids``; returns how many were made."""
    prompt = torch.tensor([ids], device=next(model.parameters()).device)
    out = model.generate(  # type: ignore[operator]
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,  # batch 1: never used for padding, set to keep generate from warning
    )
    return int(out.shape[1] - prompt.shape[1])


def greedy_tokens_per_second(
    models: Mapping[str, nn.Module], prompts: list[list[int]], new_tokens: int = 64, rounds: int = 3
) -> dict[str, float]:
    """Median tokens/s of greedy generation per model (see the module docstring for how it is timed)."""
    if not prompts or any(not p for p in prompts):
        raise KdkitError("generation speed needs at least one prompt, each with at least one token")
    if new_tokens < 1 or rounds < 1:
        raise KdkitError(f"generation speed needs new_tokens and rounds >= 1, got {new_tokens} and {rounds}")
    speeds: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model.eval()
            _generate(model, prompts[0], min(4, new_tokens))  # warm-up: first-call allocations
        for _ in range(rounds):
            for name, model in models.items():
                t0 = time.perf_counter()
                made = sum(_generate(model, ids, new_tokens) for ids in prompts)
                speeds[name].append(made / (time.perf_counter() - t0))
    return {name: statistics.median(values) for name, values in speeds.items()}
