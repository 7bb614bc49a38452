"""Rewrite texts with a Hugging Face seq2seq model (a paraphraser or translator): sampled, seeded, batched."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSeq2SeqLM, GenerationConfig

from kdkit.models.load import _from_pretrained, load_tokenizer


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
