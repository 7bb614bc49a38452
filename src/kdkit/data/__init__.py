"""Data: read, map columns, split, tokenize and collate.

Encoder tasks (GLUE-style classification and regression): ``load_task_data(config.data, config.task)`` ->
``TaskData`` (train/validation/test ``Split``s); ``encode(split, tokenizer, max_length)`` -> ``Encoded``;
``DistillDataset`` + ``Collator`` -> batches.

Causal LMs: ``load_lm_data(config.data)`` -> ``LMData`` (``LMSplit``s of prompts, responses, references);
``encode_lm(split, tokenizer, max_length)`` -> ``LMEncoded`` (prompt labels -100); ``LMDataset`` +
``LMCollator`` -> batches; ``encode_prompts`` + ``left_pad`` for generation; ``join_response`` for
generated responses.
"""

from __future__ import annotations

from kdkit.data.encode import Collator, DistillDataset, Encoded, encode, same_tokenizer
from kdkit.data.lm import (
    IGNORE,
    LMCollator,
    LMData,
    LMDataset,
    LMEncoded,
    LMSplit,
    encode_lm,
    encode_prompts,
    fill_template,
    format_prompt,
    join_response,
    left_pad,
    load_lm_data,
    load_lm_file,
    with_responses,
)
from kdkit.data.sources import resolve_data_path
from kdkit.data.tables import read_table
from kdkit.data.task_data import Split, TaskData, load_task_data

__all__ = [
    "IGNORE",
    "Collator",
    "DistillDataset",
    "Encoded",
    "LMCollator",
    "LMData",
    "LMDataset",
    "LMEncoded",
    "LMSplit",
    "Split",
    "TaskData",
    "encode",
    "encode_lm",
    "encode_prompts",
    "fill_template",
    "format_prompt",
    "join_response",
    "left_pad",
    "load_lm_data",
    "load_lm_file",
    "load_task_data",
    "read_table",
    "resolve_data_path",
    "same_tokenizer",
    "with_responses",
]
