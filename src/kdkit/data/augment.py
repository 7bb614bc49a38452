"""Extra unlabeled training text: read from a file with the data's columns (or rewritten by a seq2seq
model, ``kdkit.models.paraphrase``), then labelled by the teacher (its predicted class, or its value for
regression), so no gold labels are needed, and appended to the training split.

For text pairs (MRPC, STS-B) a generated example rewrites the first text and keeps the second; a file
gives both columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kdkit.config import DataConfig
from kdkit.data.sources import resolve_data_path
from kdkit.data.tables import read_table
from kdkit.data.task_data import Split
from kdkit.errors import KdkitError


def read_texts(path: str, data: DataConfig) -> tuple[list[str], list[str] | None]:
    """Texts (and second texts of pairs) of an augmentation file, with the data's column names."""
    resolved = resolve_data_path(path, data)
    frame = read_table(resolved, data.format, data.header, data.encoding)
    columns = [str(data.text)] + ([str(data.text_pair)] if data.text_pair is not None else [])
    for col in columns:
        if col not in frame.columns:
            raise KdkitError(
                f"augmentation file '{resolved}' has no column '{col}' (data.text / data.text_pair); "
                f"columns: {', '.join(map(str, frame.columns))}"
            )
    keep = frame[columns].notna().all(axis=1) & (frame[columns[0]].astype(str).str.strip() != "")
    frame = frame[keep]
    if frame.empty:
        raise KdkitError(f"augmentation file '{resolved}' has no non-empty texts")
    pairs = frame[columns[1]].astype(str).tolist() if len(columns) == 2 else None
    return frame[columns[0]].astype(str).tolist(), pairs


def teacher_labelled(texts: list[str], pairs: list[str] | None, predict: Any, task: str) -> Split:
    """A Split of the texts with the teacher's labels: ``predict(Split) -> logits (N, C)``."""
    placeholder = np.zeros(len(texts), dtype=np.float32 if task == "regression" else np.int64)
    split = Split(texts, pairs, placeholder)
    logits = predict(split)
    labels = logits.reshape(-1).astype(np.float32) if task == "regression" else logits.argmax(-1)
    return Split(texts, pairs, labels.astype(placeholder.dtype))


def concat(a: Split, b: Split) -> Split:
    if (a.text_pairs is None) != (b.text_pairs is None):
        raise KdkitError("augmentation texts need a second text column exactly when the task has pairs")
    pairs = None if a.text_pairs is None else a.text_pairs + b.text_pairs
    return Split(a.texts + b.texts, pairs, np.concatenate([a.labels, b.labels]))
