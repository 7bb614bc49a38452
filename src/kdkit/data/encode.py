"""Tokenization and batching: one split -> token ids per tokenizer -> padded student/teacher batches.

When the teacher and the student share a tokenizer (``same_tokenizer``), the text is tokenized once and
the same ``Encoded`` serves both; the collator then builds the tensors once and hands both sides the same
dict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from kdkit.data.task_data import Split
from kdkit.errors import KdkitError

_CHUNK = 1024  # examples per tokenizer call: batched for speed, bounded for memory


@dataclass
class Encoded:
    """One split tokenized by one tokenizer (no padding)."""

    input_ids: list[list[int]]  # N lists of L_i <= max_length token ids
    token_type_ids: list[list[int]] | None  # N lists of L_i segment ids (BERT-like), else None
    num_truncated: int  # examples longer than max_length (they were truncated)

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(split: Split, tokenizer: Any, max_length: int) -> Encoded:
    """Tokenize ``split`` (pairs as text/text_pair) with truncation to ``max_length`` tokens, no padding.

    Each chunk is tokenized whole; only the examples that turn out longer than ``max_length`` are
    tokenized again with truncation, so that they can be counted.
    """
    if max_length < 2:
        raise KdkitError(f"max_length must be >= 2 (room for special tokens), got {max_length}")
    input_ids: list[list[int]] = []
    type_ids: list[list[int]] | None = []
    truncated = 0
    for start in range(0, len(split), _CHUNK):
        texts = split.texts[start : start + _CHUNK]
        pairs = None if split.text_pairs is None else split.text_pairs[start : start + _CHUNK]
        out = _tokenize(tokenizer, texts, pairs, None)
        long = [i for i, ids in enumerate(out["input_ids"]) if len(ids) > max_length]
        if long:
            cut = _tokenize(
                tokenizer,
                [texts[i] for i in long],
                None if pairs is None else [pairs[i] for i in long],
                max_length,
            )
            for key in out:
                for j, i in enumerate(long):
                    out[key][i] = cut[key][j]
            truncated += len(long)
        input_ids.extend(out["input_ids"])
        if type_ids is not None and "token_type_ids" in out:
            type_ids.extend(out["token_type_ids"])
        else:
            type_ids = None
    return Encoded(input_ids, type_ids if input_ids else None, truncated)


def _tokenize(tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int | None) -> dict:
    out = tokenizer(
        texts,
        pairs,
        truncation=max_length is not None,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        verbose=False,  # the "longer than the model's maximum" warning: we count and truncate ourselves
    )
    return {k: list(v) for k, v in out.items() if k in ("input_ids", "token_type_ids")}


class DistillDataset(Dataset):
    """Examples of one split with their student (and teacher) token ids.

    ``__getitem__(i)`` -> ``{"idx": i, "labels": int | float, "student": {"input_ids": [...],
    "token_type_ids": [...]?}, "teacher": {...}?}``; when ``teacher is student`` both keys hold the same dict.
    """

    def __init__(self, split: Split, student: Encoded, teacher: Encoded | None = None) -> None:
        for name, enc in (("student", student), ("teacher", teacher)):
            if enc is not None and len(enc) != len(split):
                raise KdkitError(f"{name} encodings have {len(enc)} examples, the split has {len(split)}")
        self.split = split
        self.student = student
        self.teacher = teacher
        self._labels = split.labels.tolist()  # python ints/floats: cheap per-item access

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"idx": i, "labels": self._labels[i], "student": _fields(self.student, i)}
        if self.teacher is self.student:
            item["teacher"] = item["student"]
        elif self.teacher is not None:
            item["teacher"] = _fields(self.teacher, i)
        return item


def _fields(enc: Encoded, i: int) -> dict[str, list[int]]:
    out = {"input_ids": enc.input_ids[i]}
    if enc.token_type_ids is not None:
        out["token_type_ids"] = enc.token_type_ids[i]
    return out


class Collator:
    """Pads a list of ``DistillDataset`` items into a batch, on the right, to the batch's longest.

    Returns ``{"idx": (B,) int64, "labels": (B,) int64 | float32, "student": {"input_ids": (B, L),
    "attention_mask": (B, L), "token_type_ids": (B, L)?}, "teacher": {... (B, L_t)}?}``. The teacher side
    has its own length and padding; it is the same dict as the student side when the items share it.
    """

    def __init__(
        self, student_pad_id: int, teacher_pad_id: int | None = None, regression: bool = False
    ) -> None:
        self.student_pad_id = student_pad_id
        self.teacher_pad_id = teacher_pad_id
        self.regression = regression

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise KdkitError("cannot collate an empty batch")
        dtype = torch.float32 if self.regression else torch.long
        batch: dict[str, Any] = {
            "idx": torch.tensor([item["idx"] for item in items], dtype=torch.long),
            "labels": torch.tensor([item["labels"] for item in items], dtype=dtype),
            "student": _pad([item["student"] for item in items], self.student_pad_id),
        }
        if "teacher" in items[0]:
            if all(item["teacher"] is item["student"] for item in items):
                batch["teacher"] = batch["student"]  # shared tokenizer: same tensors
            elif self.teacher_pad_id is None:
                raise KdkitError("the teacher has its own token ids, so the Collator needs teacher_pad_id")
            else:
                batch["teacher"] = _pad([item["teacher"] for item in items], self.teacher_pad_id)
        return batch


def _pad(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: input_ids (B, L) with pad_id, attention_mask (B, L), token_type_ids 0."""
    lengths = [len(r["input_ids"]) for r in rows]
    size = (len(rows), max(lengths))
    input_ids = torch.full(size, pad_id, dtype=torch.long)
    mask = torch.zeros(size, dtype=torch.long)
    types = torch.zeros(size, dtype=torch.long) if "token_type_ids" in rows[0] else None
    for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        input_ids[b, :n] = torch.tensor(row["input_ids"], dtype=torch.long)
        mask[b, :n] = 1
        if types is not None:
            types[b, :n] = torch.tensor(row["token_type_ids"], dtype=torch.long)
    out = {"input_ids": input_ids, "attention_mask": mask}
    if types is not None:
        out["token_type_ids"] = types
    return out


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` give identical token ids for any text: same class, vocab, special tokens
    and (fast tokenizers) the same normalizer/pre-tokenizer/model/post-processor."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if a.get_vocab() != b.get_vocab() or a.all_special_tokens != b.all_special_tokens:
        return False
    backend_a, backend_b = getattr(a, "backend_tokenizer", None), getattr(b, "backend_tokenizer", None)
    if backend_a is None or backend_b is None:
        return backend_a is backend_b and getattr(a, "init_kwargs", None) == getattr(b, "init_kwargs", None)
    return _pipeline(backend_a) == _pipeline(backend_b)


def _pipeline(backend: Any) -> dict:
    spec = json.loads(backend.to_str())
    spec.pop("truncation", None)  # call-time settings, not part of how text becomes ids
    spec.pop("padding", None)
    return spec
