"""A teacher cache for span losses (a teacher with another tokenizer, or ULD): the teacher's top-k at its own
positions.

A same-tokenizer cache holds the teacher's top-k at the student's response positions. Across tokenizers
the positions differ, so this layout holds, per example, the rows of every teacher position that predicts
the response (``kdkit.data.lm_cross.teacher_rows``): top-k ids and log-probabilities over the teacher's
vocabulary, the log-probability of the teacher's own next token, which gives the merge factor of a span of
several teacher tokens, and the teacher's probability of the tokens both vocabularies share (the hybrid's
split). At training time each aligned span reads the row of its first teacher
token and the target log-probabilities of the others (``kdkit.losses.uld.cached_span_teacher``); the
student's spans come from its own tokenizer, so the rows serve any student whose tokenizer is the one
recorded. Provenance: the teacher, both tokenizers' fingerprints, the teacher's token ids and response
starts, k, dtype and temperature.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from kdkit.align import vocabulary_matches
from kdkit.config import Config
from kdkit.data.lm_cross import CrossCollator, CrossDataset, CrossEncoded, teacher_rows
from kdkit.fingerprint import ids_fingerprint, model_fingerprint, tokenizer_fingerprint
from kdkit.methods.base import Batch
from kdkit.models import LMOutputs, lm_forward
from kdkit.teacher.build import DTYPES, CacheJob, pack_topk, to_device, topk_examples
from kdkit.teacher.cache import TeacherCache


def cross_provenance(
    config: Config, teacher_name: str, teacher_tokenizer: Any, student_tokenizer: Any, encoded: CrossEncoded
) -> dict[str, Any]:
    """What a span cache depends on: teacher, both tokenizers, the teacher's ids and response starts, k,
    storage and temperature."""
    return {
        "kind": "topk",
        "positions": "teacher",
        "teacher": model_fingerprint(teacher_name),
        "tokenizer": tokenizer_fingerprint(teacher_tokenizer),
        "student_tokenizer": tokenizer_fingerprint(student_tokenizer),
        "data": ids_fingerprint(encoded.teacher_ids, [encoded.teacher_starts]),
        "num_examples": len(encoded),
        "vocab_size": len(teacher_tokenizer),
        "top_k": config.cache.top_k,
        "dtype": config.cache.dtype,
        "temperature": float(getattr(config.method, "temperature", 1.0)),
    }


def row_counts(batch: Batch) -> torch.Tensor:
    """(B,) the cached rows of each example of a span batch."""
    lengths = batch["teacher"]["attention_mask"].sum(1)
    return teacher_rows(batch["align"]["teacher_start"], lengths)[1]


def cross_cache_job(
    config: Config,
    teacher_name: str,
    teacher: nn.Module,
    tokenizers: tuple[Any, Any],
    encoded: CrossEncoded,
    accelerator: Accelerator,
) -> CacheJob:
    """The build of a span cache over ``encoded`` (both sides tokenized, as training tokenizes them)."""
    student_tok, teacher_tok = tokenizers
    vocab, k = len(teacher_tok), config.cache.top_k
    temperature = float(getattr(config.method, "temperature", 1.0))
    dtype = DTYPES[config.cache.dtype]
    shared = vocabulary_matches(student_tok, teacher_tok)[1]  # the hybrid's split: its mass per row

    def outputs(batch: Batch) -> list[dict[str, torch.Tensor]]:
        inputs = to_device(batch["teacher"], accelerator.device)
        out = lm_forward(teacher, inputs, chunked=True)
        start, count = teacher_rows(batch["align"]["teacher_start"], inputs["attention_mask"].sum(1).cpu())
        positions = torch.arange(inputs["input_ids"].shape[1] - 1)[None]  # (1, T-1) shifted
        mask = (positions >= start[:, None]) & (positions < (start + count)[:, None])  # (B, T-1)
        mask = mask.to(accelerator.device)
        targets = inputs["input_ids"][:, 1:]
        return topk_examples(out, mask, targets, vocab, k, temperature, dtype, shared.to(accelerator.device))

    meta = {
        "kind": "topk",
        "provenance": cross_provenance(config, teacher_name, teacher_tok, student_tok, encoded),
        "num_examples": len(encoded),
        "shard_size": config.cache.shard_size,
        "vocab_size": vocab,
    }
    collate = CrossCollator(student_tok.pad_token_id, teacher_tok.pad_token_id)
    return CacheJob(CrossDataset(encoded), collate, outputs, pack_topk, meta)


def read_cross_cache(cache: TeacherCache, batch: Batch, device: torch.device) -> LMOutputs:
    """The cached teacher rows of a span batch, in example order (``cache.topk``)."""
    top = cache.topk(batch["idx"], row_counts(batch).tolist())
    names = ("indices", "logprobs", "target_logprobs", "matched_mass")
    moved = {name: getattr(top, name).to(device) for name in names if getattr(top, name) is not None}
    return LMOutputs(None, None, None, topk=replace(top, **moved))
