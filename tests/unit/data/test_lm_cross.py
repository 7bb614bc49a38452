"""Encoding for a teacher with another tokenizer: each side's own tokens, spans that cover the same
characters on both sides (decoded, they are the same text), cuts, plain text, and the batch tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import char_tokenizer, tiny_lm_tokenizer
from transformers import AutoTokenizer

from kdkit.data.lm import LMSplit, encode_lm
from kdkit.data.lm_cross import CrossCollator, CrossDataset, encode_cross
from kdkit.errors import KdkitError

PROMPTS = ["what is one ?", "question : two three", "say five"]
RESPONSES = ["answer : one one .", "two three five .", ""]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    root = tmp_path_factory.mktemp("cross_tok")
    chars = AutoTokenizer.from_pretrained(char_tokenizer(root / "chars"))
    words = AutoTokenizer.from_pretrained(tiny_lm_tokenizer(root / "words"))
    return chars, words


def split(plain: bool = False) -> LMSplit:
    prompts = ["" for _ in PROMPTS] if plain else PROMPTS
    return LMSplit(prompts, RESPONSES, [[r] for r in RESPONSES], plain=plain)


@pytest.mark.parametrize("chat", [False, True])
def test_spans_cover_the_same_text_on_both_sides(pair: tuple[Any, Any], chat: bool) -> None:
    chars, words = pair
    enc = encode_cross(split(), chars, words, 64, 32, chat_template=chat)
    # each side is exactly what encode_lm gives that side
    assert enc.student.input_ids == encode_lm(split(), chars, 64, chat).input_ids
    assert enc.teacher_ids == encode_lm(split(), words, 32, chat).input_ids
    for i in range(len(enc)):
        s_ids, t_ids = enc.student.input_ids[i], enc.teacher_ids[i]
        s_spans, t_spans = enc.student_spans[i], enc.teacher_spans[i]
        assert len(s_spans) == len(t_spans) > 0 and enc.eos_span[i]
        assert s_spans[-1] == (len(s_ids) - 1, len(s_ids)) and t_spans[-1] == (len(t_ids) - 1, len(t_ids))
        for (a, b), (c, d) in zip(s_spans[:-1], t_spans[:-1], strict=True):
            assert chars.decode(s_ids[a:b]).strip() == words.decode(t_ids[c:d]).strip()
        # spans tile the student's response (its labels) without gaps
        first = enc.student.prompt_lengths[i]
        assert [a for a, _ in s_spans] == [first] + [b for _, b in s_spans[:-1]]
    # "answer : one one ." is 18 characters and 5 words (+ EOS each): many-to-one spans, each word's
    # characters with the space after it (a whitespace token joins the span it follows)
    assert [b - a for a, b in enc.student_spans[0]] == [7, 2, 4, 4, 1, 1]
    assert enc.coverage == 1.0 and enc.aligned_tokens == enc.response_tokens


def test_a_cut_keeps_only_spans_inside_both_sides(pair: tuple[Any, Any]) -> None:
    chars, words = pair
    full = encode_cross(split(), chars, words, 64, 32)
    cut = encode_cross(split(), chars, words, 20, 32)  # the student's side is cut (16 tokens of prompt...)
    assert cut.student.num_truncated > 0
    for i in range(len(cut)):
        n = len(cut.student.input_ids[i])
        assert all(b <= n for _, b in cut.student_spans[i])
        assert len(cut.student_spans[i]) <= len(full.student_spans[i])
    assert cut.aligned_tokens < full.aligned_tokens and cut.coverage <= 1.0
    assert not cut.eos_span[0]  # the response was cut: its EOS went with it


def test_plain_text_spans_start_after_the_bos(pair: tuple[Any, Any]) -> None:
    chars, words = pair
    enc = encode_cross(split(plain=True), chars, words, 64, 32)
    for i in range(len(enc)):
        assert enc.student.input_ids[i][0] == chars.bos_token_id
        assert enc.student_spans[i][0][0] == 1 and enc.teacher_spans[i][0][0] == 1


def test_a_teacher_without_a_chat_template_is_named(pair: tuple[Any, Any], tmp_path: Path) -> None:
    chars, _ = pair
    words = AutoTokenizer.from_pretrained(tiny_lm_tokenizer(tmp_path / "w"))
    words.chat_template = None
    with pytest.raises(KdkitError, match=r"^the teacher's tokenizer: data\.chat_template is true"):
        encode_cross(split(), chars, words, 64, 32, chat_template=True)


@pytest.mark.parametrize("skip_eos", [False, True])
def test_collated_spans_are_numbered_across_the_batch(pair: tuple[Any, Any], skip_eos: bool) -> None:
    chars, words = pair
    enc = encode_cross(split(), chars, words, 64, 32)
    data = CrossDataset(enc)
    batch = CrossCollator(chars.pad_token_id, words.pad_token_id, skip_eos)(
        [data[i] for i in range(len(data))]
    )
    a = batch["align"]
    spans = sum(len(s) for s in enc.student_spans) - (len(enc) if skip_eos else 0)
    assert a["num_groups"] == spans
    for side in ("student", "teacher"):
        groups, first = a[f"{side}_groups"], a[f"{side}_first"]
        assert int(first.sum()) == spans
        assert sorted(groups[first].tolist()) == list(range(spans))  # one first token per span
        assert set(groups[groups >= 0].tolist()) == set(range(spans))
    assert batch["teacher"]["input_ids"].shape == (3, max(len(t) for t in enc.teacher_ids))
    assert batch["teacher"]["attention_mask"].sum().item() == sum(len(t) for t in enc.teacher_ids)
    assert batch["student"]["input_ids"].shape == batch["labels"].shape
    assert batch["prompts"] == PROMPTS


def test_merge_last_marks_each_spans_last_token(pair: tuple[Any, Any]) -> None:
    chars, words = pair
    data = CrossDataset(encode_cross(split(), chars, words, 64, 32))
    items = [data[i] for i in range(len(data))]
    first = CrossCollator(chars.pad_token_id, words.pad_token_id)(items)["align"]
    last = CrossCollator(chars.pad_token_id, words.pad_token_id, merge="last")(items)["align"]
    for side in ("student", "teacher"):
        groups = first[f"{side}_groups"]
        assert torch.equal(groups, last[f"{side}_groups"])
        for g in range(first["num_groups"]):
            where = (groups == g).nonzero().tolist()  # the span's positions, in order
            assert first[f"{side}_first"][tuple(where[0])] and last[f"{side}_first"][tuple(where[-1])]
            assert int(last[f"{side}_first"][groups == g].sum()) == 1
    assert any(int((first["student_groups"] == g).sum()) > 1 for g in range(first["num_groups"]))
    with pytest.raises(ValueError, match="merge must be"):
        CrossCollator(0, 0, merge="middle")
