"""Causal-LM evaluation: batched generation, perplexity of the labelled tokens, and ROUGE-L of generations.

Several processes: :func:`perplexity` reduces over processes (each one runs its shard of a prepared loader);
:func:`generate_tokens` and :func:`generation_scores` run on whatever process calls them over all the prompts
given, so call them on the main process only (or give each process its own prompts and gather yourself).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import GenerationConfig

from kdkit.errors import KdkitError
from kdkit.eval.rouge import mean_rouge_l


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (B, T), attention_mask (B, T)) with ``rows`` right-aligned: generation appends on the right,
    so every prompt must end at the last column."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def cut_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """``tokens`` up to (not including) the first token in ``eos_ids``."""
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[:i]
    return tokens


def _generation_config(
    pad_id: int, eos: list[int], max_new_tokens: int, temperature: float, top_p: float
) -> GenerationConfig:
    # Explicit, complete config: the model's own generation_config (sampling defaults, top_k=50, ...) must not
    # leak in, so that the same call means the same thing for every checkpoint.
    common = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_id, "eos_token_id": eos, "num_beams": 1}
    if temperature == 0:
        return GenerationConfig(do_sample=False, **common)
    return GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, **common)


def _generator(model: nn.Module) -> nn.Module:
    if not hasattr(model, "generate"):
        model = getattr(model, "module", model)  # DistributedDataParallel wraps the HF model in .module
    if not hasattr(model, "generate"):
        raise KdkitError(
            f"generate_tokens: {type(model).__name__} has no generate(); pass a transformers causal LM"
        )
    return model


def _check_generation_args(
    prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int, temperature: float, top_p: float
) -> None:
    if max_new_tokens < 1 or batch_size < 1:
        raise KdkitError(
            f"generate_tokens needs max_new_tokens >= 1 and batch_size >= 1, got {max_new_tokens} and {batch_size}"
        )
    if temperature < 0 or not 0 < top_p <= 1:
        raise KdkitError(
            f"generate_tokens needs temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}"
        )
    empty = [i for i, p in enumerate(prompt_ids) if len(p) == 0]
    if empty:
        raise KdkitError(
            f"prompt {empty[0]} is empty ({len(empty)} empty in all); give every prompt at least one token "
            "(e.g. the tokenizer's BOS)"
        )


@torch.no_grad()
def generate_tokens(
    model: nn.Module,
    prompt_ids: list[list[int]],
    *,
    pad_id: int,
    eos_id: int | list[int],
    max_new_tokens: int,
    batch_size: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    desc: str | None = "generate",
) -> list[list[int]]:
    """The new tokens that ``model`` generates after each prompt, in input order, cut before the first EOS.

    Greedy when ``temperature == 0``; otherwise ancestral sampling with ``temperature`` and nucleus
    ``top_p`` (Holtzman et al. 2020), seeded: the same seed, prompts and ``batch_size`` give the same output,
    and the caller's RNG state is left as it was. Prompts are sorted by length so that a batch wastes little
    left padding. The model runs in eval mode (its mode is restored after). ``desc=None`` hides the progress
    bar.

    Args:
        prompt_ids: N prompts, each a non-empty list of token ids (with BOS if the model expects one).
        pad_id: id used to left-pad a batch (masked out); any id works, e.g. EOS when there is no pad token.
        eos_id: id, or ids, that end a generation.
    Returns:
        N lists of new token ids, each at most ``max_new_tokens`` long, without EOS or padding.
    """
    _check_generation_args(prompt_ids, max_new_tokens, batch_size, temperature, top_p)
    if pad_id is None:
        raise KdkitError("generate_tokens needs a pad_id (int); pass the tokenizer's pad or EOS id")
    model = _generator(model)
    eos = [eos_id] if isinstance(eos_id, int) else list(eos_id)
    config = _generation_config(pad_id, eos, max_new_tokens, temperature, top_p)
    device = _device(model)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]), reverse=True)  # longest first:
    # an out-of-memory batch shows up at once, not at the end
    results: list[list[int]] = [[] for _ in prompt_ids]
    was_training = model.training
    model.eval()
    # fork_rng saves and restores the CPU RNG and the model's GPU's (sampling happens there)
    forked = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(seed)
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc=desc, leave=False, disable=desc is None):
                chunk = order[start : start + batch_size]
                ids, mask = left_pad([prompt_ids[i] for i in chunk], pad_id, device)
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
                for i, row in zip(chunk, out[:, ids.shape[1] :].tolist(), strict=True):
                    results[i] = cut_at_eos(row, set(eos))
    finally:
        model.train(was_training)
    return results


@torch.no_grad()
def perplexity(
    model: nn.Module,
    loader: DataLoader,
    accelerator: Accelerator,
    side: str = "student",
    vocab_size: int | None = None,
    desc: str | None = None,
) -> dict[str, float]:
    """Perplexity of ``model`` on the labelled tokens of ``loader``: exp of the token-weighted mean NLL.

    Batches are ``{side: {"input_ids" (B, T), "attention_mask" (B, T)}, "labels" (B, T)}`` with labels aligned
    with input_ids (HF convention: logits[:, t] predicts labels[:, t + 1]) and -100 where not scored (prompt,
    padding). Only the first ``vocab_size`` logits are used when given (embedding rows padded past the
    tokenizer). Per-sequence sums are gathered over processes with ``gather_for_metrics``, so the samples
    that a prepared loader repeats to even out the last batch are not counted twice.

    When the batches carry ``text_size`` ((B, 2): UTF-8 bytes and characters of the text each sequence's
    labels score, ``kdkit.data.lm_encode``), the same NLL is also given per byte and per character, in bits:
    a tokenizer-free measure that compares models with different tokenizers (the EOS token's NLL counts, its
    text is empty; a response cut by max_length counts its kept tokens' decoded text).

    Returns:
        {"perplexity": exp(nll), "nll": mean NLL per scored token (nats), "tokens": number of scored tokens,
        and with text sizes "bits_per_byte", "bits_per_char"}
    """
    was_training = model.training
    model.eval()
    nll_sum, count = 0.0, 0.0
    sizes = torch.zeros(2, dtype=torch.float64)  # bytes, characters
    sized = True
    bar = tqdm(loader, desc=desc, leave=False, disable=desc is None or not accelerator.is_local_main_process)
    for batch in bar:
        inputs = _model_inputs(batch, side)
        with accelerator.autocast():
            logits = model(**inputs).logits
        seq_nll, seq_count = _sequence_nll(logits, batch["labels"], vocab_size)  # (B,), (B,)
        text_size = batch.get("text_size")
        sized = sized and text_size is not None
        if text_size is None:
            text_size = torch.zeros(len(seq_nll), 2, dtype=torch.long, device=seq_nll.device)
        seq_nll, seq_count, text_size = accelerator.gather_for_metrics((seq_nll, seq_count, text_size))
        nll_sum += float(seq_nll.double().sum())
        count += float(seq_count.double().sum())
        sizes += text_size.double().sum(0).cpu()
    model.train(was_training)
    if count == 0:
        raise KdkitError("perplexity: no labelled tokens (all labels are -100); check the data's responses")
    nll = nll_sum / count
    out = {"perplexity": float(torch.tensor(nll, dtype=torch.float64).exp()), "nll": nll, "tokens": count}
    if sized and sizes[0] > 0:
        bits = nll_sum / math.log(2)
        out.update(bits_per_byte=bits / float(sizes[0]), bits_per_char=bits / float(sizes[1]))
    return out


def _model_inputs(batch: dict[str, Any], side: str) -> dict[str, torch.Tensor]:
    if side not in batch:
        raise KdkitError(
            f"perplexity: batch has no '{side}' inputs (keys: {', '.join(batch)}); side is student or teacher"
        )
    inputs = {k: v for k, v in batch[side].items() if k in ("input_ids", "attention_mask")}
    if inputs["input_ids"].shape != batch["labels"].shape:
        raise KdkitError(
            f"perplexity: labels {tuple(batch['labels'].shape)} do not align with {side} input_ids "
            f"{tuple(inputs['input_ids'].shape)}; score the side whose tokenizer made the labels"
        )
    mask = inputs.get("attention_mask")
    if mask is not None and bool((mask[:, :1] == 0).any()) and bool((mask[:, -1:] == 1).any()):
        # Left padding: HF forward numbers positions 0..T-1 whatever the mask says, so give the real ones.
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return inputs


def _sequence_nll(
    logits: torch.Tensor, labels: torch.Tensor, vocab_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence (NLL sum (B,), scored-token count (B,)) from logits (B, T, V') and labels (B, T)."""
    logits = logits[:, :-1, :vocab_size].float()  # (B, T-1, V) fp32: log-softmax of bf16 logits loses digits
    target = labels[:, 1:]  # (B, T-1)
    scored = target != -100
    if vocab_size is not None and bool((target[scored] >= vocab_size).any()):
        raise KdkitError(f"perplexity: a label id is >= vocab_size {vocab_size}; the vocab_size is too small")
    nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")  # (B, T-1)
    return nll.sum(-1), scored.sum(-1).to(nll.dtype)


def generation_scores(
    model: nn.Module,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    references: list[list[str]],
    *,
    max_new_tokens: int,
    batch_size: int,
    desc: str | None = "generate",
) -> dict[str, Any]:
    """Greedy generations for ``prompt_ids`` and their ROUGE-L against ``references`` (one list per prompt).

    Generation stops at the tokenizer's EOS or any of the model's generation-config EOS ids (chat models end
    turns with their own token). Returns {"rouge_l": mean ROUGE-L x100, "generations": decoded texts, special
    tokens skipped, stripped}.
    """
    if len(prompt_ids) != len(references):
        raise KdkitError(
            f"generation_scores got {len(prompt_ids)} prompts and {len(references)} reference lists; give one each"
        )
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    tokens = generate_tokens(
        model,
        prompt_ids,
        pad_id=pad_id,
        eos_id=eos,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        desc=desc,
    )
    texts = [t.strip() for t in tokenizer.batch_decode(tokens, skip_special_tokens=True)]
    return {"rouge_l": mean_rouge_l(texts, references), "generations": texts}


def _eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        for i in [value] if isinstance(value, int) else (value or []):
            if i not in ids:
                ids.append(int(i))
    if not ids:
        raise KdkitError(
            "generation_scores: neither the tokenizer nor the model defines an EOS token; set one"
        )
    return ids
