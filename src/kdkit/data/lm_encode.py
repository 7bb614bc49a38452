"""Causal-LM tokenization and batching: prompt + response -> token ids with the prompt masked -> batches.

Labels follow the Hugging Face convention: ``labels`` align with ``input_ids`` and the model shifts them
(position t predicts token t + 1), with -100 where nothing is trained (the prompt, padding). The prompt
is the model's input, the response (and its EOS, so the student learns to stop) is trained on, as in
MiniLLM (Gu et al., 2024, §3) and GKD (Agarwal et al., 2024, §3).

Teacher and student of a causal LM share one tokenizer (token-level divergences need one vocabulary),
so a batch's ``"teacher"`` entry is the ``"student"`` dict itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from kdkit.data.lm_read import LMSplit
from kdkit.errors import KdkitError

IGNORE = -100  # label of positions that are not trained (torch cross_entropy's ignore_index)
_CHUNK = 1024  # examples per tokenizer call: batched for speed, bounded for memory


@dataclass
class LMEncoded:
    """One split tokenized for causal-LM training (no padding)."""

    input_ids: list[list[int]]  # N lists of L_i <= max_length token ids: prompt + response + EOS
    labels: list[list[int]]  # N lists of L_i: the token id on the response and EOS, -100 on the prompt
    # (its token ids too with train_on_prompt)
    num_truncated: int  # examples longer than max_length (they were cut, see ``encode_lm``)
    prompt_lengths: list[int]  # N: tokens of each (kept) prompt (labels[i][:n] -100 unless trained); 0: plain
    # N: (UTF-8 bytes, characters) of the text the labels score: the response (a cut one: its kept tokens,
    # decoded); tokenizer-free units for bits per byte / per character (``kdkit.eval.lm.perplexity``)
    text_sizes: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    def prompt_ids(self, i: int) -> list[int]:
        """The prompt tokens of example ``i`` as trained (a prefix of ``input_ids[i]``)."""
        return self.input_ids[i][: self.prompt_lengths[i]]


def format_prompt(prompt: str, tokenizer: Any, chat_template: bool) -> str:
    """The text the model sees before its response.

    With ``chat_template``, ``prompt`` becomes one user message rendered by the tokenizer's chat template
    with the generation prompt (the assistant turn's header) appended; otherwise it is returned as is.
    """
    if not chat_template:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise KdkitError(
            f"data.chat_template is true but the tokenizer ({type(tokenizer).__name__}, "
            f"'{getattr(tokenizer, 'name_or_path', '?')}') has no chat template; "
            "set data.chat_template: false or use an instruct model's tokenizer"
        )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return str(text)


def encode_lm(
    split: LMSplit,
    tokenizer: Any,
    max_length: int,
    chat_template: bool = False,
    train_on_prompt: bool = False,
) -> LMEncoded:
    """Tokenize ``split`` for training: ``input_ids = prompt + response + [EOS]``, prompt labels -100
    (``train_on_prompt``: the prompt's tokens are labelled too, so every token is trained; the truncation
    and ``prompt_lengths`` are the same either way).

    The prompt (after ``format_prompt``) is tokenized with the tokenizer's special tokens (e.g. BOS),
    except that a prefix the chat template already wrote is not added twice (no double BOS), and a
    suffix the tokenizer appends (e.g. an EOS) is dropped: the response follows the prompt directly.
    The response is tokenized without special tokens; EOS is appended and trained.

    Truncation (an example longer than ``max_length`` is cut and counted in ``num_truncated``): the
    response is cut from its end (its EOS is then dropped: the text did not end there), unless the prompt
    would leave fewer than ``max_length // 4`` tokens for it; the prompt is then cut from the left (its
    leading special tokens, e.g. BOS, kept) to leave the response that much (or all of it, if shorter).

    Plain text (``split.plain``): text + EOS, every token trained, cut from the end.
    """
    _check_length(max_length)
    eos = _eos_id(tokenizer)
    if split.plain and chat_template:
        raise KdkitError(
            "data.chat_template needs prompts: set data.response to a field, or chat_template: false"
        )
    prefix, bos = _added_tokens(tokenizer)[0], getattr(tokenizer, "bos_token_id", None)
    out = LMEncoded([], [], 0, [])
    for start in range(0, len(split), _CHUNK):
        texts_here = split.responses[start : start + _CHUNK]
        if split.plain:
            for text, ids in zip(texts_here, prompt_token_ids(texts_here, tokenizer), strict=True):
                ids = [*ids, eos]
                cut = len(ids) > max_length
                out.num_truncated += cut
                out.input_ids.append(ids[:max_length])
                out.labels.append(ids[:max_length])
                out.prompt_lengths.append(0)
                out.text_sizes.append(_text_size(tokenizer, ids[:max_length] if cut else None, text))
            continue
        texts = [format_prompt(p, tokenizer, chat_template) for p in split.prompts[start : start + _CHUNK]]
        prompts = prompt_token_ids(texts, tokenizer)
        responses = _tokenize(tokenizer, texts_here, special=False)
        for text, prompt, response in zip(texts_here, prompts, responses, strict=True):
            head = _head(prompt, prefix, bos)
            prompt, response, cut = fit_lengths(prompt, [*response, eos], max_length, head)
            out.num_truncated += cut
            out.input_ids.append(prompt + response)
            out.labels.append((prompt if train_on_prompt else [IGNORE] * len(prompt)) + response)
            out.prompt_lengths.append(len(prompt))
            out.text_sizes.append(_text_size(tokenizer, response if cut else None, text))
    return out


def _text_size(tokenizer: Any, kept: list[int] | None, text: str) -> tuple[int, int]:
    """(UTF-8 bytes, characters) of ``text``, or of the ``kept`` tokens decoded when it was cut."""
    if kept is not None:
        text = tokenizer.decode(kept, skip_special_tokens=True)
    return len(text.encode("utf-8")), len(text)


def encode_prompts(
    prompts: list[str], tokenizer: Any, max_length: int, chat_template: bool = False
) -> list[list[int]]:
    """Prompt token ids for generation, tokenized as in ``encode_lm``; a prompt longer than
    ``max_length`` keeps its last tokens (and its leading special tokens, e.g. BOS)."""
    _check_length(max_length)
    prefix, bos = _added_tokens(tokenizer)[0], getattr(tokenizer, "bos_token_id", None)
    out: list[list[int]] = []
    for start in range(0, len(prompts), _CHUNK):
        texts = [format_prompt(p, tokenizer, chat_template) for p in prompts[start : start + _CHUNK]]
        out.extend(
            cut_left(ids, max_length, _head(ids, prefix, bos)) for ids in prompt_token_ids(texts, tokenizer)
        )
    return out


def join_response(
    prompt_ids: Sequence[int],
    response_ids: Sequence[int],
    eos_id: int,
    max_length: int,
    bos_id: int | None = None,
    train_on_prompt: bool = False,
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for a generated response (teacher generations, on-policy student samples).

    Anything after the first EOS in ``response_ids`` (padding of finished sequences) is stripped; the EOS
    is kept and trained when there is one (the response was complete), else the response stays open.
    The prompt is masked (-100) unless ``train_on_prompt``, as in ``encode_lm``; truncation follows its
    rule, and a leading ``bos_id`` of the prompt is kept when the prompt is cut from the left.
    """
    _check_length(max_length)
    response = [int(t) for t in response_ids]
    if eos_id in response:
        response = response[: response.index(eos_id) + 1]
    prompt = [int(t) for t in prompt_ids]
    head = 1 if bos_id is not None and prompt[:1] == [bos_id] else 0
    prompt, response, _ = fit_lengths(prompt, response, max_length, head)
    return prompt + response, (prompt if train_on_prompt else [IGNORE] * len(prompt)) + response


def fit_lengths(
    prompt: list[int], response: list[int], max_length: int, head: int = 0
) -> tuple[list[int], list[int], bool]:
    """(prompt, response, truncated) cut to fit ``max_length`` tokens together (see ``encode_lm``).

    The response keeps ``max(max_length - len(prompt), min(len(response), max_length // 4))`` tokens
    (at least 1 of a non-empty response); the prompt is left-cut to the rest, its first ``head`` kept.
    """
    if len(prompt) + len(response) <= max_length:
        return prompt, response, False
    floor = min(len(response), max(1, max_length // 4))
    room = max(max_length - len(prompt), floor)
    return cut_left(prompt, max_length - room, head), response[:room], True


def cut_left(ids: list[int], keep: int, head: int = 0) -> list[int]:
    """The last ``keep`` tokens of ``ids``, except that its first ``head`` tokens (e.g. BOS) stay first."""
    if len(ids) <= keep:
        return ids
    head = min(head, keep)
    return ids[:head] + ids[len(ids) - (keep - head) :]


def prompt_token_ids(texts: list[str], tokenizer: Any) -> list[list[int]]:
    """Tokenize prompts with the tokenizer's leading special tokens (e.g. BOS), added once.

    A text that already starts with them (a chat template that writes BOS) does not get a second copy;
    trailing special tokens the tokenizer appends (e.g. ``add_eos_token``) are removed, since the
    response follows the prompt.
    """
    prefix, suffix = _added_tokens(tokenizer)
    out = []
    for ids in _tokenize(tokenizer, texts, special=True):
        if suffix and ids[-len(suffix) :] == suffix:
            ids = ids[: -len(suffix)]
        if prefix and ids[len(prefix) : 2 * len(prefix)] == prefix:
            ids = ids[len(prefix) :]
        out.append(ids)
    return out


def _added_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(prefix, suffix): the token ids the tokenizer adds around a text with ``add_special_tokens``."""
    probe = "a"
    plain = _tokenize(tokenizer, [probe], special=False)[0]
    full = _tokenize(tokenizer, [probe], special=True)[0]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []  # the specials change how the text itself is split: add them as the tokenizer does


def _head(ids: list[int], prefix: list[int], bos: int | None) -> int:
    """How many leading tokens of a prompt a left cut keeps: the tokenizer's added prefix, else a BOS."""
    if prefix and ids[: len(prefix)] == prefix:
        return len(prefix)
    return 1 if bos is not None and ids[:1] == [bos] else 0


def _tokenize(tokenizer: Any, texts: list[str], special: bool) -> list[list[int]]:
    out = tokenizer(
        texts,
        add_special_tokens=special,
        truncation=False,
        padding=False,
        return_attention_mask=False,
        verbose=False,  # the "longer than the model's maximum" warning: we count and truncate ourselves
    )
    return [list(ids) for ids in out["input_ids"]]


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise KdkitError(
            f"the tokenizer '{getattr(tokenizer, 'name_or_path', '?')}' has no EOS token; a causal LM needs "
            "one to learn where a response ends (use the causal LM's own tokenizer)"
        )
    return int(eos)


def _check_length(max_length: int) -> None:
    if max_length < 2:
        raise KdkitError(f"max_length must be >= 2 (a prompt token and a response token), got {max_length}")


class LMDataset(Dataset):
    """Encoded causal-LM examples.

    ``__getitem__(i)`` -> ``{"idx": i, "input_ids": [...], "labels": [...], "prompt_ids": [...]}``;
    ``prompt_ids`` lets on-policy training regenerate the response from a batch.
    """

    def __init__(self, encoded: LMEncoded) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {
            "idx": i,
            "input_ids": self.encoded.input_ids[i],
            "labels": self.encoded.labels[i],
            "prompt_ids": self.encoded.prompt_ids(i),
        }
        if self.encoded.text_sizes:
            item["text_size"] = self.encoded.text_sizes[i]
        return item


class LMCollator:
    """Pads ``LMDataset`` items (or any ``{"input_ids", "labels", "prompt_ids"}`` dicts, e.g. regenerated
    examples; ``"idx"`` optional) on the right to the batch's longest.

    Returns ``{"student": {"input_ids": (B, T) int64 (pad_id on padding), "attention_mask": (B, T)
    int64}, "teacher": <the same dict>, "labels": (B, T) int64 (-100 on padding), "prompt_ids": B lists
    of ints, "idx": (B,) int64 (when every item has one)}``.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise KdkitError("cannot collate an empty batch")
        size = (len(items), max(len(item["input_ids"]) for item in items))
        input_ids = torch.full(size, self.pad_id, dtype=torch.long)
        labels = torch.full(size, IGNORE, dtype=torch.long)
        mask = torch.zeros(size, dtype=torch.long)
        for b, item in enumerate(items):
            n = len(item["input_ids"])
            if len(item["labels"]) != n:
                raise KdkitError(
                    f"example {b} of the batch has {n} input_ids but {len(item['labels'])} labels"
                )
            input_ids[b, :n] = torch.tensor(item["input_ids"], dtype=torch.long)
            labels[b, :n] = torch.tensor(item["labels"], dtype=torch.long)
            mask[b, :n] = 1
        side = {"input_ids": input_ids, "attention_mask": mask}  # one tokenizer: the teacher sees the same
        batch: dict[str, Any] = {
            "student": side,
            "teacher": side,
            "labels": labels,
            "prompt_ids": [list(item["prompt_ids"]) for item in items],
        }
        if all("idx" in item for item in items):
            batch["idx"] = torch.tensor([item["idx"] for item in items], dtype=torch.long)
        if all("text_size" in item for item in items):  # (B, 2): bytes and characters of the scored text
            batch["text_size"] = torch.tensor([item["text_size"] for item in items], dtype=torch.long)
        return batch


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) int64, padded on the left for batched generation
    (new tokens are appended on the right, so every row's last real token must be at T - 1)."""
    if not rows:
        raise KdkitError("cannot pad an empty list of prompts")
    size = (len(rows), max(len(r) for r in rows))
    input_ids = torch.full(size, pad_id, dtype=torch.long)
    mask = torch.zeros(size, dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            input_ids[b, -len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[b, -len(row) :] = 1
    return input_ids, mask


def shift_labels(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, mask), each (B, T - 1): the token each position predicts and whether it counts."""
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    return labels.masked_fill(~mask, 0), mask
