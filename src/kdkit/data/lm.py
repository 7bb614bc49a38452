"""Causal-LM data, one import: reading and splitting (``lm_read``), tokenizing and batching (``lm_encode``).

``load_lm_data(config.data)`` -> ``LMData`` of ``LMSplit``s; ``encode_lm`` -> ``LMEncoded``;
``LMDataset`` + ``LMCollator`` -> training batches; ``encode_prompts`` + ``left_pad`` -> generation inputs;
``join_response`` -> a generated response as a training example.
"""

from __future__ import annotations

from kdkit.data.lm_encode import (
    IGNORE,
    LMCollator,
    LMDataset,
    LMEncoded,
    encode_lm,
    encode_prompts,
    fit_lengths,
    format_prompt,
    join_response,
    left_pad,
    prompt_token_ids,
    shift_labels,
)
from kdkit.data.lm_read import (
    LMData,
    LMSplit,
    fill_template,
    lm_split,
    load_lm_data,
    load_lm_file,
    with_responses,
)

__all__ = [
    "IGNORE",
    "LMCollator",
    "LMData",
    "LMDataset",
    "LMEncoded",
    "LMSplit",
    "encode_lm",
    "encode_prompts",
    "fill_template",
    "fit_lengths",
    "format_prompt",
    "join_response",
    "left_pad",
    "lm_split",
    "load_lm_data",
    "load_lm_file",
    "prompt_token_ids",
    "shift_labels",
    "with_responses",
]
