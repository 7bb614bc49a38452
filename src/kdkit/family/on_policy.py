"""On-policy student generations as training responses (GKD, Agarwal et al., ICLR 2024, Algorithm 1).

With a teacher of another tokenizer the samples are decoded to text and tokenized again for both models
(the student's ids may then differ from the sampled ones where its tokenizer would split the text another
way; the text is the same), then aligned like any response.

Before each micro-batch, with probability ``generation.on_policy`` (GKD's lambda), the student answers the
batch's prompts with its current weights and the loss is computed on its own samples (the teacher scores
them). The coin and the sampling are seeded by (seed, step, micro-batch, process), so a resumed run draws
the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch import nn

from kdkit.config import GenerationConfig
from kdkit.data.lm import LMCollator, join_response
from kdkit.eval.lm import generate_tokens
from kdkit.methods.base import Batch


class OnPolicy:
    """``prepare_batch`` for the loop: with probability ``gen.on_policy``, the student's own responses."""

    def __init__(
        self,
        student: nn.Module,
        tokenizer: Any,
        gen: GenerationConfig,
        collate: LMCollator,
        max_length: int,
        accelerator: Accelerator,
        reencode: Callable[[list[str], list[str]], list[dict[str, Any]]] | None = None,
        train_on_prompt: bool = False,
    ) -> None:
        self.student, self.tokenizer, self.gen = student, tokenizer, gen
        self.collate, self.max_length, self.accelerator = collate, max_length, accelerator
        self.reencode, self.train_on_prompt = reencode, train_on_prompt

    def __call__(self, batch: Batch, step: int, micro: int) -> Batch:
        rank = self.accelerator.process_index
        rng = np.random.default_rng([self.gen.seed, step, micro, rank])
        if rng.random() >= self.gen.on_policy:
            return batch
        prompts = batch["prompt_ids"]
        new = generate_tokens(
            self.student,
            prompts,
            pad_id=self.tokenizer.pad_token_id,
            eos_id=self.tokenizer.eos_token_id,
            max_new_tokens=self.gen.max_new_tokens,
            batch_size=len(prompts),
            temperature=self.gen.temperature,
            top_p=self.gen.top_p,
            seed=int(rng.integers(2**31)),
            desc=None,
        )
        eos = self.tokenizer.eos_token_id
        if self.reencode is not None:
            return send_to_device(
                self.collate(self._reencoded(batch["prompts"], new)), self.accelerator.device
            )
        items = []
        for p, r in zip(prompts, new, strict=True):
            # generate_tokens cuts before EOS; a response shorter than max_new_tokens ended with EOS
            complete = len(r) < self.gen.max_new_tokens
            input_ids, labels = join_response(
                p,
                [*r, eos] if complete else r,
                eos,
                self.max_length,
                bos_id=self.tokenizer.bos_token_id,
                train_on_prompt=self.train_on_prompt,
            )
            items.append({"input_ids": input_ids, "labels": labels, "prompt_ids": p})
        return send_to_device(self.collate(items), self.accelerator.device)

    def _reencoded(self, prompts: list[str], new: list[list[int]]) -> list[dict[str, Any]]:
        """A teacher with another tokenizer: the samples as text, tokenized again for both models and aligned
        (``kdkit.data.lm_cross``); a sample cut at ``max_new_tokens`` keeps no EOS (it did not end)."""
        assert self.reencode is not None
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        items = self.reencode(prompts, texts)
        for item, r in zip(items, new, strict=True):
            if len(r) >= self.gen.max_new_tokens and item["eos_span"]:
                open_item(item)
        return items


def open_item(item: dict[str, Any]) -> None:
    """Drop the EOS that encoding appended to both sides of an aligned example, and its span."""
    for key in ("input_ids", "labels"):
        item[key] = item[key][:-1]
    item["teacher_ids"] = item["teacher_ids"][:-1]
    item["student_spans"], item["teacher_spans"] = item["student_spans"][:-1], item["teacher_spans"][:-1]
    item["eos_span"] = False
