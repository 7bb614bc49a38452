"""Aligning two tokenizations of one text: spans whose boundaries coincide, on hand-made ends and on two real
tokenizers (SmolLM2's byte-level BPE and MiniLM's WordPiece), and the shared sub-vocabulary."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import AutoTokenizer

from kdkit.align import (
    Alignment,
    align_ends,
    align_responses,
    keep_within,
    require_offsets,
    vocabulary_matches,
)
from kdkit.assets import ASSETS, asset_path
from kdkit.errors import KdkitError
from kdkit.models import load_tokenizer


def test_spans_close_where_both_sides_end() -> None:
    # "the cat sat": student [the][ cat][ sat], teacher [th][e][ c][at][ sat]
    got = align_ends([3, 7, 11], [2, 3, 5, 7, 11])
    assert got == Alignment(((0, 1), (1, 2), (2, 3)), ((0, 2), (2, 4), (4, 5)))
    assert align_ends([3, 7], [3, 7]).one_to_one() and not got.one_to_one()
    # a side whose tokens cross the other's boundaries: one span for both
    assert align_ends([2, 5, 9], [3, 9]) == Alignment(((0, 3),), ((0, 2),))


def test_zero_width_tokens_join_their_span_and_paired_ones_make_their_own() -> None:
    # student has a whitespace-only token (zero width at 3); both end with an EOS past the text (12)
    got = align_ends([3, 3, 7, 12], [3, 7, 12])
    assert got == Alignment(((0, 2), (2, 3), (3, 4)), ((0, 1), (1, 2), (2, 3)))
    # leftovers (texts of different lengths) are not aligned
    assert align_ends([3, 7, 9], [3, 7]) == Alignment(((0, 1), (1, 2)), ((0, 1), (1, 2)))


def test_keep_within_drops_spans_past_a_cut() -> None:
    a = Alignment(((0, 1), (1, 3), (3, 4)), ((0, 2), (2, 3), (3, 4)))
    assert keep_within(a, 3, 2) == Alignment(((0, 1),), ((0, 2),))
    assert keep_within(a, 4, 4) == a


@pytest.fixture(scope="module")
def tokenizers() -> tuple[Any, Any]:
    minilm = load_tokenizer(str(asset_path("minilm-l6")))
    minilm.eos_token = "[SEP]"  # an encoder's tokenizer has none; a causal LM built on it would
    # the GGUF's own tokenizer: no model conversion needed to test alignment
    gguf = ASSETS["smollm2-135m"].path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name), minilm


TEXTS = [
    "Paris is the capital of France.",
    "It costs 2,024 dollars... really?!\nYes: très cher.",
    "",
]


def test_real_tokenizers_align_on_the_same_characters(tokenizers: tuple[Any, Any]) -> None:
    smol, minilm = tokenizers
    for text, (s_ids, t_ids, alignment) in zip(TEXTS, align_responses(smol, minilm, TEXTS), strict=True):
        assert (
            s_ids[-1] == smol.eos_token_id and t_ids[-1] == minilm.eos_token_id
        ) or minilm.eos_token_id is None
        assert alignment.student[-1] == (len(s_ids) - 1, len(s_ids))  # the two EOS pair up
        covered_s = "".join(smol.decode(s_ids[a:b]) for a, b in alignment.student[:-1]).replace(" ", "")
        covered_t = "".join(minilm.decode(t_ids[a:b]) for a, b in alignment.teacher[:-1]).replace(" ", "")
        covered_t = covered_t.replace("##", "")  # a WordPiece continuation decoded alone
        bare = text.replace(" ", "").replace("\n", "").lower()
        assert covered_s.replace("\n", "").lower() == bare
        assert covered_t == bare.replace("è", "e")  # MiniLM lowercases and strips accents
        spans = [*alignment.student, *alignment.teacher]
        assert all(b > a for a, b in spans)  # every span has tokens on both sides
    same = align_responses(smol, smol, TEXTS[:1])[0]
    assert same[2].one_to_one() and same[0] == same[1]


def test_slow_tokenizers_are_refused() -> None:
    class Slow:
        is_fast = False
        name_or_path = "some/model"

    with pytest.raises(KdkitError, match="gives no character offsets"):
        require_offsets(Slow(), "teacher")


def test_vocabulary_matches_pair_equal_strings_across_space_markers() -> None:
    class Vocab:
        def __init__(self, items: dict[str, int]) -> None:
            self.items = items

        def get_vocab(self) -> dict[str, int]:
            return self.items

    student = Vocab({"Ġthe": 0, "cat": 1, "Ċ": 2, "zz": 3})
    teacher = Vocab({"▁the": 5, "cat": 7, "\n": 1, "dog": 0, "Ġthe": 9})
    s, t = vocabulary_matches(student, teacher)
    assert sorted(zip(s.tolist(), t.tolist(), strict=True)) == [(0, 5), (1, 7), (2, 1)]
