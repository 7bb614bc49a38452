"""Aligning two tokenizations of the same text (a teacher and a student with different tokenizers).

Both tokenizers split the same response text; each token carries the character span it covers (a fast
tokenizer's offsets). Tokens are grouped into *aligned spans*: the shortest runs of tokens on each side
that end at the same character, i.e. the places where both tokenizers agree on a boundary. A span is one
token on each side where the two tokenizations agree; several on one side (or both) where they split the
text differently. Whitespace-only and zero-width tokens join the span they end in. The EOS that ends each
training response is one more span of its own (zero width, at the end of the text).

``vocabulary_matches`` pairs the tokens whose strings are the same in both vocabularies (after mapping the
two common space markers, byte-level ``Ġ``/``Ċ`` and SentencePiece ``▁``, to a space and a newline): the
shared sub-vocabulary on which the hybrid loss compares probabilities one to one.

Everything here is pure (lists in, lists out) except the calls that ask tokenizers for ids and offsets; a
tokenizer without offsets (a slow, Python tokenizer) is refused in one line.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kdkit.errors import KdkitError

Span = tuple[int, int]  # [start, end) token indices


@dataclass(frozen=True)
class Alignment:
    """The aligned spans of two tokenizations of one text, in order: ``student[i]`` and ``teacher[i]`` cover
    the same characters."""

    student: tuple[Span, ...]
    teacher: tuple[Span, ...]

    def __len__(self) -> int:
        return len(self.student)

    def one_to_one(self) -> bool:
        return all(b - a == 1 for a, b in (*self.student, *self.teacher))


def require_offsets(tokenizer: Any, role: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        name = getattr(tokenizer, "name_or_path", "?")
        raise KdkitError(
            f"the {role}'s tokenizer ('{name}', {type(tokenizer).__name__}) gives no character offsets (a slow "
            "tokenizer); cross-tokenizer distillation aligns the two tokenizations by offsets: save the model "
            "with its fast tokenizer (tokenizer.json)"
        )


def token_offsets(tokenizer: Any, texts: Sequence[str]) -> list[tuple[list[int], list[Span]]]:
    """(token ids, character spans) of each text, without special tokens."""
    require_offsets(tokenizer, "model")
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return [
        (list(ids), [(int(a), int(b)) for a, b in offsets])
        for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
    ]


def align_ends(student_ends: Sequence[int], teacher_ends: Sequence[int]) -> Alignment:
    """Group two token sequences by the character where each token ends (non-decreasing on each side).

    Walk both sides, advancing the one whose current token ends earlier; when both end at the same character,
    a span closes there, together with the zero-width tokens that end at that character too. Tokens left on
    either side at the end (texts of different lengths) form no span: they are not aligned.
    """
    s_spans: list[Span] = []
    t_spans: list[Span] = []
    s = t = s_start = t_start = 0
    n_s, n_t = len(student_ends), len(teacher_ends)
    while s < n_s and t < n_t:
        if student_ends[s] < teacher_ends[t]:
            s += 1
        elif student_ends[s] > teacher_ends[t]:
            t += 1
        else:
            boundary = student_ends[s]
            s, t = s + 1, t + 1
            # tokens that add nothing past the boundary (zero-width) belong to this span, unless both sides
            # have one: those are a span of their own (e.g. the two EOS tokens)
            while s < n_s and student_ends[s] == boundary and not (t < n_t and teacher_ends[t] == boundary):
                s += 1
            while t < n_t and teacher_ends[t] == boundary and not (s < n_s and student_ends[s] == boundary):
                t += 1
            s_spans.append((s_start, s))
            t_spans.append((t_start, t))
            s_start, t_start = s, t
    return Alignment(tuple(s_spans), tuple(t_spans))


def _ends(text: str, spans: Sequence[Span]) -> list[int]:
    """Where each token ends, running: a token never ends before the one before it (byte-level tokens that
    split a character share its span), and whitespace at a token's end does not count (tokenizers differ on
    whether a token takes the space after it)."""
    ends, last = [], 0
    for a, b in spans:
        end = b
        while end > a and text[end - 1].isspace():
            end -= 1
        last = max(last, end)
        ends.append(last)
    return ends


def align_responses(
    student_tokenizer: Any, teacher_tokenizer: Any, texts: Sequence[str], eos: bool = True
) -> list[tuple[list[int], list[int], Alignment]]:
    """For each text: the student's ids, the teacher's ids and their alignment; with ``eos`` each side's EOS
    is appended (a zero-width token at the end of the text: a span of its own)."""
    require_offsets(student_tokenizer, "student")
    require_offsets(teacher_tokenizer, "teacher")
    out = []
    for text, (s_ids, s_spans), (t_ids, t_spans) in zip(
        texts, token_offsets(student_tokenizer, texts), token_offsets(teacher_tokenizer, texts), strict=True
    ):
        s_ends, t_ends = _ends(text, s_spans), _ends(text, t_spans)
        if eos:
            s_ids, t_ids = [*s_ids, _eos(student_tokenizer)], [*t_ids, _eos(teacher_tokenizer)]
            s_ends.append(len(text) + 1)  # past every character: the EOS ends after the text
            t_ends.append(len(text) + 1)
        out.append((s_ids, t_ids, align_ends(s_ends, t_ends)))
    return out


def _eos(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise KdkitError(f"the tokenizer '{getattr(tokenizer, 'name_or_path', '?')}' has no EOS token")
    return int(eos)


def keep_within(alignment: Alignment, student_kept: int, teacher_kept: int) -> Alignment:
    """The spans that lie wholly within the first ``student_kept`` and ``teacher_kept`` tokens (a response
    cut to fit max_length keeps its first tokens)."""
    pairs = [
        (s, t) for s, t in zip(alignment.student, alignment.teacher, strict=True)
        if s[1] <= student_kept and t[1] <= teacher_kept
    ]  # fmt: skip
    return Alignment(tuple(s for s, _ in pairs), tuple(t for _, t in pairs))


_MARKERS = {"Ġ": " ", "▁": " ", "Ċ": "\n"}


def _normalized(token: str) -> str:
    return "".join(_MARKERS.get(c, c) for c in token)


def vocabulary_matches(student_tokenizer: Any, teacher_tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(student ids, teacher ids), each (M,) int64: the tokens whose strings match in both vocabularies."""
    return _matches(_vocab_items(student_tokenizer), _vocab_items(teacher_tokenizer))


def _vocab_items(tokenizer: Any) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]))


@functools.lru_cache(maxsize=8)  # built once per tokenizer pair (262k x 49k entries: about a second)
def _matches(
    student: tuple[tuple[str, int], ...], teacher: tuple[tuple[str, int], ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    by_string: dict[str, int] = {}
    for token, i in student:
        by_string.setdefault(_normalized(token), i)
    pairs = []
    seen: set[int] = set()
    for token, j in teacher:
        i = by_string.get(_normalized(token))
        if i is not None and i not in seen:  # one partner each way
            seen.add(i)
            pairs.append((i, j))
    if not pairs:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    ids = torch.tensor(pairs, dtype=torch.long)
    return ids[:, 0].contiguous(), ids[:, 1].contiguous()
