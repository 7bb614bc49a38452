"""Latency of a model for `kdkit report`: one fixed forward pass, timed the same way for every model.

Each model (a run dir, or a teacher by name: asset, local dir or hub id, loaded by kdkit's model loading)
gets a batch of ``batch_size`` x ``seq_len`` token ids (seeded random ids of its vocabulary, no padding) on
``device``. After one warm-up pass each, the models take turns: ``repeats`` rounds of one timed forward
pass per model; the median is reported in milliseconds per batch. Tokenization is excluded; a causal LM
computes all logits without a KV cache; a student with retrieval is timed alone (retrieval excluded). A model
with fewer positions than ``seq_len`` is timed at its own maximum (a note on the page says so).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from kdkit.errors import KdkitError
from kdkit.models import count_parameters, load_causal_lm
from kdkit.models.load import _from_pretrained
from kdkit.report.table import Timer


@dataclass
class LatencySettings:
    """How `kdkit report` times models (CLI: --latency-batch-size, --latency-seq-len, --latency-repeats,
    --device)."""

    batch_size: int = 8
    seq_len: int = 128
    repeats: int = 5
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)  # filled while timing (e.g. shorter sequences)

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "repeats"):
            if getattr(self, name) < 1:
                flag = "--latency-" + name.replace("_", "-")
                raise KdkitError(f"latency {name} must be at least 1, got {getattr(self, name)}; fix {flag}")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise KdkitError(f"unknown device '{self.device}'; pass --device cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise KdkitError(f"--device {self.device}: no CUDA GPU is visible here; pass --device cpu")

    def describe(self) -> str:
        threads = f", {torch.get_num_threads()} torch threads" if self.device == "cpu" else ""
        return (
            f"one forward pass of a batch of {self.batch_size} sequences x {self.seq_len} tokens on "
            f"{self.device}{threads}, median of {self.repeats} rounds (models in turns) after a warm-up, "
            "tokenization excluded"
        )


def load_for_timing(name: str, task: str) -> nn.Module:
    """The model ``name`` as kdkit loads it for ``task`` (the classification head's weights do not matter
    for timing, so a base encoder gets a fresh head)."""
    if task == "causal_lm":
        return load_causal_lm(name, dtype=torch.float32)
    return _from_pretrained(AutoModelForSequenceClassification, name)


@dataclass
class _Timed:
    model: nn.Module
    inputs: dict[str, torch.Tensor | bool]
    timings: list[float] = field(default_factory=list)


def _fixed_batch(model: nn.Module, settings: LatencySettings, causal: bool, label: str) -> dict[str, Any]:
    """The timed inputs of ``model``: seeded random ids of its vocabulary, no padding."""
    seq_len = settings.seq_len
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(max_positions, int) and max_positions < seq_len:
        seq_len = max_positions
        settings.notes.append(f"{label} has {max_positions} positions: timed at {max_positions} tokens")
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (settings.batch_size, seq_len), generator=generator)
    ids = ids.to(settings.device)
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if causal:
        inputs["use_cache"] = False  # all logits, no KV cache
    return inputs


@torch.no_grad()
def time_models(
    items: list[tuple[str, str]], settings: LatencySettings
) -> dict[tuple[str, str], tuple[float, int]]:
    """Median milliseconds per forward pass and parameter count of each ``(name, task)``.

    All models are loaded first, then timed in turns (one pass of each per repeat), so that a burst of
    other work on the machine slows every model alike rather than one of them.
    """
    device = torch.device(settings.device)
    timed: dict[tuple[str, str], _Timed] = {}
    for name, task in dict.fromkeys(items):
        try:
            model = load_for_timing(name, task).eval().to(device)
        except KdkitError as err:
            raise KdkitError(f"{err} (while timing it; pass --no-latency to skip latency)") from None
        timed[(name, task)] = _Timed(model, _fixed_batch(model, settings, task == "causal_lm", name))
        model(**timed[(name, task)].inputs)  # warm-up
    for _ in range(settings.repeats):
        for entry in timed.values():
            _sync(device)
            start = time.perf_counter()
            entry.model(**entry.inputs)
            _sync(device)
            entry.timings.append(1000 * (time.perf_counter() - start))
    return {
        key: (statistics.median(entry.timings), count_parameters(entry.model)) for key, entry in timed.items()
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_timer(settings: LatencySettings) -> Timer:
    """A timer for ``kdkit.report.table.measure`` that times with ``settings``."""

    def timer(items: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[float, int]]:
        return time_models(items, settings)

    return timer
