"""Teacher generations as training responses (sequence-level KD, Kim and Rush, EMNLP 2016).

The teacher answers every
  training prompt once, before training; the answers are stored beside the run in
  ``teacher_generations.jsonl`` and replace the ground-truth responses. Generation is written in blocks to
  ``teacher_generations.partial.jsonl`` (appended and flushed), so a killed run resumes where it stopped;
  each block has its own seed, so a resumed run generates exactly what an uninterrupted one would.
The answers are stored as text and tokenized again for training like ground-truth responses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from torch import nn

from kdkit.config import GenerationConfig
from kdkit.data.lm import LMSplit, encode_prompts, with_responses
from kdkit.errors import KdkitError, note
from kdkit.eval.lm import generate_tokens
from kdkit.layout import TEACHER_GENERATIONS

GENERATIONS = TEACHER_GENERATIONS
_BLOCK_BATCHES = 8  # generate batches per block written to the partial file


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: drop it and everything after
                break
    return rows


def teacher_generations(
    teacher: nn.Module | None,
    tokenizer: Any,
    split: LMSplit,
    gen: GenerationConfig,
    *,
    max_length: int,
    chat_template: bool,
    out_dir: Path,
    accelerator: Accelerator,
) -> LMSplit:
    """``split`` with its responses replaced by the teacher's (generated once, cached in ``out_dir``)."""
    final = out_dir / GENERATIONS
    if teacher is None and not final.is_file():  # training from a teacher cache built without them
        raise KdkitError(
            f"generation.source is teacher but the teacher cache {out_dir} has no {GENERATIONS}; rebuild the "
            "cache with this config (`kdkit cache`)"
        )
    if accelerator.is_main_process and not final.is_file():
        _generate_all(teacher, tokenizer, split, gen, max_length, chat_template, out_dir)
    accelerator.wait_for_everyone()
    rows = _read_jsonl(final)
    if [r["prompt"] for r in rows] != split.prompts:
        raise KdkitError(
            f"{final} holds generations for other prompts (the data changed); delete it or pass --overwrite"
        )
    return with_responses(split, [r["response"] for r in rows])


def _generate_all(
    teacher: nn.Module,
    tokenizer: Any,
    split: LMSplit,
    gen: GenerationConfig,
    max_length: int,
    chat_template: bool,
    out_dir: Path,
) -> None:
    partial, final = out_dir / (GENERATIONS + ".partial"), out_dir / GENERATIONS
    done = _read_jsonl(partial) if partial.is_file() else []
    if [r["prompt"] for r in done] != split.prompts[: len(done)]:
        done = []  # other prompts: start over
    # rewrite what is kept (drops a torn last line), then append block by block
    with open(partial, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in done)
    prompt_len = max(1, max_length - gen.max_new_tokens)
    block = gen.batch_size * _BLOCK_BATCHES
    n = len(split.prompts)
    if done:
        note(f"teacher generations: resuming at {len(done)} of {n}")
    for start in range(len(done), n, block):
        prompts = split.prompts[start : start + block]
        ids = encode_prompts(prompts, tokenizer, prompt_len, chat_template)
        new = generate_tokens(
            teacher,
            ids,
            pad_id=tokenizer.pad_token_id,
            eos_id=tokenizer.eos_token_id,
            max_new_tokens=gen.max_new_tokens,
            batch_size=gen.batch_size,
            temperature=gen.temperature,
            top_p=gen.top_p,
            seed=gen.seed * 1_000_003 + start,
            desc=f"teacher generations {start}-{start + len(prompts)} of {n}",
        )
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        with open(partial, "a", encoding="utf-8") as f:
            f.writelines(
                json.dumps({"prompt": p, "response": r.strip()}) + "\n"
                for p, r in zip(prompts, texts, strict=True)
            )
            f.flush()
            os.fsync(f.fileno())
    os.replace(partial, final)
