"""Causal-LM metrics on a config's eval sets: perplexity on response tokens and ROUGE-L of greedy answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from kdkit.config import Config
from kdkit.data.lm import (
    LMCollator,
    LMData,
    LMDataset,
    LMSplit,
    encode_lm,
    encode_prompts,
    load_lm_file,
)
from kdkit.data.task_data import seeded_subset
from kdkit.errors import KdkitError
from kdkit.eval.lm import generation_scores, perplexity
from kdkit.io import atomic_write_text


def eval_sets(data: LMData, config: Config, splits: list[str] | None = None) -> dict[str, LMSplit]:
    """The eval splits of ``config`` that exist (or those asked for), then ``eval.datasets`` by name.

    ``data.max_eval_samples`` takes a seeded random subset of each extra dataset too.
    """
    sets: dict[str, LMSplit] = {}
    for name in splits or config.eval.splits:
        if data.has(name):
            sets[name] = data.split(name)
        elif splits:
            raise KdkitError(f"split '{name}' is not in the data; available: {data.available()}")
    for name, path in config.eval.datasets.items():
        if splits and name not in splits:
            continue
        split = load_lm_file(path, config.data)
        sets[name] = seeded_subset(split, config.data.max_eval_samples, config.data.split.seed)
    return sets


def lm_loader(
    split: LMSplit, tokenizer: Any, config: Config, accelerator: Accelerator, batch_size: int | None = None
) -> Any:
    enc = encode_lm(split, tokenizer, config.student.max_length, config.data.chat_template)
    loader = torch.utils.data.DataLoader(
        LMDataset(enc),
        batch_size=batch_size or config.eval.batch_size,
        shuffle=False,
        collate_fn=LMCollator(tokenizer.pad_token_id),
    )
    return accelerator.prepare_data_loader(loader)


def check_prompt_room(config: Config) -> None:
    """ROUGE-L generates ``eval.max_new_tokens`` after a prompt cut to the rest of ``student.max_length``:
    refuse a config that leaves the prompt fewer than 2 tokens."""
    room = config.student.max_length - config.eval.max_new_tokens
    if config.eval.rouge and room < 2:
        raise KdkitError(
            f"eval.max_new_tokens ({config.eval.max_new_tokens}) leaves {max(room, 0)} of student.max_length "
            f"({config.student.max_length}) tokens for the prompt of ROUGE-L's generations; raise "
            "student.max_length, lower eval.max_new_tokens, or set eval.rouge: false"
        )


def lm_metrics(
    model: nn.Module,
    tokenizer: Any,
    split: LMSplit,
    config: Config,
    accelerator: Accelerator,
    *,
    vocab_size: int | None = None,
    generations_file: Path | None = None,
) -> dict[str, float]:
    """Perplexity (response tokens) and, with ``eval.rouge``, ROUGE-L (x100) of greedy generations."""
    metrics: dict[str, float] = {}
    ppl = perplexity(
        model, lm_loader(split, tokenizer, config, accelerator), accelerator, vocab_size=vocab_size
    )
    metrics["perplexity"] = ppl["perplexity"]
    for key in ("bits_per_byte", "bits_per_char"):  # tokenizer-free: comparable across tokenizers
        if key in ppl:
            metrics[key] = ppl[key]
    if config.eval.rouge:
        check_prompt_room(config)
        prompt_len = config.student.max_length - config.eval.max_new_tokens
        ids = encode_prompts(split.prompts, tokenizer, prompt_len, config.data.chat_template)
        scores = generation_scores(
            model,
            tokenizer,
            ids,
            split.references,
            max_new_tokens=config.eval.max_new_tokens,
            batch_size=config.eval.batch_size,
        )
        metrics["rouge_l"] = scores["rouge_l"]
        if generations_file is not None and accelerator.is_main_process:
            rows = [
                json.dumps({"prompt": p, "generation": g, "references": r})
                for p, g, r in zip(split.prompts, scores["generations"], split.references, strict=True)
            ]
            atomic_write_text(generations_file, "\n".join(rows) + "\n")
    return metrics
