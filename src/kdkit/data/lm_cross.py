"""Causal-LM examples for a teacher with another tokenizer: each model's own tokens, and the aligned spans
between their responses.

Each side renders the prompt its own way (its own chat template and special tokens) and tokenizes it with
its own tokenizer (``encode_lm``); only the response text, the part that is trained, is aligned
(``kdkit.align``): the aligned spans pair the student's and the teacher's response tokens that cover the
same characters. A span is kept only when it lies wholly in both sides' kept tokens (a long example is cut
as ``encode_lm`` cuts it) and its first token has a predicting position on both sides (a token at position
0 has none). The student's labels are unchanged: its cross-entropy term sees every response token.

A batch (``CrossCollator``) carries, beside the student's usual entries, the teacher's own
``{"input_ids", "attention_mask"}`` and an ``"align"`` dict of (B, T_side) tensors, unshifted like the
labels: ``*_groups`` (the batch-wide span id of each response token, -1 elsewhere) and ``*_first`` (True
on each span's base token: its first, or its last with ``merge="last"``), for both sides, ``num_groups``, and ``teacher_start`` (B,): the position of
each example's first teacher response token (a teacher cache holds the rows that predict the response).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kdkit.align import Alignment, Span, align_responses, keep_within
from kdkit.data.lm_encode import LMCollator, LMDataset, LMEncoded, _added_tokens, encode_lm
from kdkit.data.lm_read import LMSplit
from kdkit.errors import KdkitError


@dataclass
class CrossEncoded:
    """A split tokenized for both models: the student's ``LMEncoded``, the teacher's ids, the spans."""

    student: LMEncoded
    teacher_ids: list[list[int]]
    prompts: list[str]  # the prompt texts (on-policy samples are encoded again from text)
    teacher_starts: list[int] = field(default_factory=list)  # per example: the teacher's first response token
    student_spans: list[list[Span]] = field(default_factory=list)  # per example: absolute [start, end)
    teacher_spans: list[list[Span]] = field(default_factory=list)
    eos_span: list[bool] = field(default_factory=list)  # the last span is the two EOS tokens
    aligned_tokens: int = 0  # student response tokens inside a span (the rest are not distilled)
    response_tokens: int = 0  # student response tokens (labels != -100)

    def __len__(self) -> int:
        return len(self.student)

    @property
    def coverage(self) -> float:
        """The fraction of the student's response tokens that are aligned (1.0 when there are none)."""
        return self.aligned_tokens / self.response_tokens if self.response_tokens else 1.0


def _role(err: KdkitError, role: str) -> KdkitError:
    return KdkitError(f"the {role}'s tokenizer: {err}")


def encode_cross(
    split: LMSplit,
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    max_length: int,
    teacher_max_length: int,
    chat_template: bool = False,
) -> CrossEncoded:
    """Tokenize ``split`` for both models (each as ``encode_lm`` does) and align their response tokens."""
    student = encode_lm(split, student_tokenizer, max_length, chat_template)
    try:
        teacher = encode_lm(split, teacher_tokenizer, teacher_max_length, chat_template)
    except KdkitError as err:
        raise _role(err, "teacher") from None
    out = CrossEncoded(student, teacher.input_ids, list(split.prompts))
    pairs = align_responses(student_tokenizer, teacher_tokenizer, split.responses, eos=True)
    s_prefix, t_prefix = len(_added_tokens(student_tokenizer)[0]), len(_added_tokens(teacher_tokenizer)[0])
    for i, (s_ids, t_ids, alignment) in enumerate(pairs):
        s_start = student.prompt_lengths[i] if not split.plain else s_prefix
        t_start = teacher.prompt_lengths[i] if not split.plain else t_prefix
        s_all, t_all = student.input_ids[i], teacher.input_ids[i]
        s_kept, t_kept = _kept(s_all, s_start, s_ids), _kept(t_all, t_start, t_ids)
        spans = keep_within(alignment, s_kept, t_kept)
        s_spans, t_spans = _placed(spans, s_start, t_start)
        out.teacher_starts.append(t_start)
        out.student_spans.append(s_spans)
        out.teacher_spans.append(t_spans)
        out.eos_span.append(bool(spans) and _ends_with_eos(alignment, spans))
        out.aligned_tokens += sum(b - a for a, b in s_spans)
        out.response_tokens += sum(label != -100 for label in student.labels[i])
    return out


def _kept(input_ids: list[int], start: int, ids: list[int]) -> int:
    """How many of the aligned ``ids`` the encoded example holds from ``start`` on (0 when the tokens there
    are not those: the text was split differently in context, and nothing of it is aligned)."""
    kept = min(len(ids), len(input_ids) - start)
    return kept if kept > 0 and input_ids[start : start + kept] == ids[:kept] else 0


def _placed(spans: Alignment, s_start: int, t_start: int) -> tuple[list[Span], list[Span]]:
    """The spans at absolute positions, without those whose first token has no predicting position."""
    s_out, t_out = [], []
    for (a, b), (c, d) in zip(spans.student, spans.teacher, strict=True):
        if s_start + a == 0 or t_start + c == 0:
            continue
        s_out.append((s_start + a, s_start + b))
        t_out.append((t_start + c, t_start + d))
    return s_out, t_out


def _ends_with_eos(full: Alignment, kept: Alignment) -> bool:
    return kept.student[-1] == full.student[-1] and kept.teacher[-1] == full.teacher[-1]


class CrossDataset(LMDataset):
    """``LMDataset`` items plus ``teacher_ids``, ``student_spans``, ``teacher_spans`` and ``eos_span``."""

    def __init__(self, encoded: CrossEncoded) -> None:
        super().__init__(encoded.student)
        self.cross = encoded

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        item.update(
            prompt=self.cross.prompts[i],
            teacher_ids=self.cross.teacher_ids[i],
            teacher_start=self.cross.teacher_starts[i],
            student_spans=self.cross.student_spans[i],
            teacher_spans=self.cross.teacher_spans[i],
            eos_span=self.cross.eos_span[i],
        )
        return item


def _groups(
    rows: Sequence[Sequence[Span]], length: int, offsets: list[int], last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    groups = torch.full((len(rows), length), -1, dtype=torch.long)
    first = torch.zeros((len(rows), length), dtype=torch.bool)
    for b, spans in enumerate(rows):
        for g, (a, e) in enumerate(spans, start=offsets[b]):
            groups[b, a:e] = g
            first[b, e - 1 if last else a] = True
    return groups, first


class CrossCollator(LMCollator):
    """``LMCollator``'s batch with the teacher's own padded ids and the span tensors (module docstring).

    ``skip_eos`` drops each example's EOS span (GOLD's ``uld_skip_*_eos``); the student's CE still trains
    its EOS. ``merge`` names the token whose predicting distribution scores a span of several tokens:
    ``"first"`` (GOLD's ``"observed"`` rule) or ``"last"`` (GOLD's ``"bayesian"``), see ``kdkit.losses.uld``."""

    def __init__(
        self, pad_id: int, teacher_pad_id: int, skip_eos: bool = False, merge: str = "first"
    ) -> None:
        super().__init__(pad_id)
        if merge not in ("first", "last"):
            raise ValueError(f"merge must be 'first' or 'last', got {merge!r}")
        self.teacher_pad_id, self.skip_eos, self.merge = teacher_pad_id, skip_eos, merge

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(items)
        rows = [list(item["teacher_ids"]) for item in items]
        size = (len(rows), max(len(r) for r in rows))
        ids = torch.full(size, self.teacher_pad_id, dtype=torch.long)
        mask = torch.zeros(size, dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[b, : len(row)] = 1
        batch["teacher"] = {"input_ids": ids, "attention_mask": mask}
        batch["prompts"] = [item["prompt"] for item in items]
        s_rows, t_rows = [], []
        for item in items:
            cut = 1 if self.skip_eos and item["eos_span"] else 0
            s_rows.append(item["student_spans"][: len(item["student_spans"]) - cut])
            t_rows.append(item["teacher_spans"][: len(item["teacher_spans"]) - cut])
        counts = [len(r) for r in s_rows]
        offsets = [sum(counts[:b]) for b in range(len(counts))]
        last = self.merge == "last"
        s_groups, s_first = _groups(s_rows, batch["labels"].shape[1], offsets, last)
        t_groups, t_first = _groups(t_rows, size[1], offsets, last)
        batch["align"] = {
            "student_groups": s_groups,
            "student_first": s_first,
            "teacher_groups": t_groups,
            "teacher_first": t_first,
            "num_groups": sum(counts),
            "teacher_start": torch.tensor([item["teacher_start"] for item in items], dtype=torch.long),
        }
        return batch


def teacher_rows(starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of the teacher's (shifted) positions a teacher cache holds, per example: (first, count), each
    (B,). Rows are the positions that predict the response, ``[max(start - 1, 0), length - 1)`` for a
    response starting at ``start`` in a sequence of ``length`` tokens (EOS included): independent of the
    student's tokenizer, so the spans of any student map onto them."""
    first = (starts - 1).clamp(min=0)
    return first, (lengths - 1 - first).clamp(min=0)
