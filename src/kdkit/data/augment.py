"""Extra unlabeled training text for MixKD (Liang et al., ICLR 2021, Section 3.2: data augmentation by
back-translation): read from a file, or produced by a Hugging Face seq2seq model (paraphraser,
translator); the teacher labels it (its predicted class, or its value for regression), so no gold labels
are needed, and the examples join the training pool that pairs are drawn from.

For text pairs (MRPC, STS-B) a generated example rewrites the first text and keeps the second; a file
gives both columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

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


@torch.no_grad()
def generate_texts(
    model_name: str,
    texts: list[str],
    *,
    per_example: int = 1,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    temperature: float = 1.0,
    top_p: float = 0.9,
    seed: int = 0,
) -> list[str]:
    """``per_example`` sampled rewrites of every text by a seq2seq model, in order (text 0's first)."""
    from transformers import AutoModelForSeq2SeqLM, GenerationConfig

    from kdkit.models.load import _from_pretrained, load_tokenizer

    model = _from_pretrained(AutoModelForSeq2SeqLM, model_name).eval()
    tokenizer = load_tokenizer(model_name)
    gen = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=max_new_tokens,
        num_return_sequences=per_example,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=model.config.decoder_start_token_id,
    )
    out: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in tqdm(range(0, len(texts), batch_size), desc="augmenting", leave=False):
            enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True)
            ids = model.generate(**enc, generation_config=gen)
            out += [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return out


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
