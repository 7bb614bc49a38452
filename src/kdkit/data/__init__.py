"""Data for encoder tasks (GLUE-style classification and regression): read, map columns, encode labels,
split, tokenize and collate.

``load_task_data(config.data, config.task)`` -> ``TaskData`` (train/validation/test ``Split``s);
``encode(split, tokenizer, max_length)`` -> ``Encoded``; ``DistillDataset`` + ``Collator`` -> batches.
"""

from __future__ import annotations

from kdkit.data.encode import Collator, DistillDataset, Encoded, encode, same_tokenizer
from kdkit.data.sources import resolve_data_path
from kdkit.data.tables import read_table
from kdkit.data.task_data import Split, TaskData, load_task_data

__all__ = [
    "Collator",
    "DistillDataset",
    "Encoded",
    "Split",
    "TaskData",
    "encode",
    "load_task_data",
    "read_table",
    "resolve_data_path",
    "same_tokenizer",
]
