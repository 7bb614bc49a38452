from __future__ import annotations

import json
import random

import pytest
from tests.conftest import SHARED_DATA

from kdkit.errors import KdkitError
from kdkit.eval.rouge import lcs_length, mean_rouge_l, rouge_l, rouge_tokens

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer", reason="rouge-score is a dev dependency")

DOLLY = SHARED_DATA / "dolly" / "valid.jsonl"
EDGE = [
    "",
    " ",
    "...!?",
    "The cat sat on the mat.",
    "the CAT, sat; on-the mat!!",
    "Running runners ran quickly; generously generalized generations.",
    "café naïve — über 42 3.14 x2y",
    "日本語のテキスト",
    "a\nb\tc  d",
    "it's the dog's bone, isn't it?",
]


def _dp_lcs(a: list[str], b: list[str]) -> int:
    """The textbook O(len(a) * len(b)) table (rouge_score's _lcs_table), as a reference."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            same = a[i - 1] == b[j - 1]
            table[i][j] = table[i - 1][j - 1] + 1 if same else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def _random_text(rng: random.Random) -> str:
    words = [
        "the",
        "a",
        "cat",
        "cats",
        "dog",
        "running",
        "runs",
        "ran",
        "mat",
        "on",
        "sat",
        "42",
        "Blue",
        ".",
    ]
    seps = [" ", " ", " ", ", ", "-", "\n", "!", "'"]
    return "".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(0, 25)))


def _reference(prediction: str, references: list[str], use_stemmer: bool) -> float:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    return max(scorer.score(r, prediction)["rougeL"].fmeasure for r in references)


def test_lcs_bit_parallel_equals_table() -> None:
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 40))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 90))]  # > 64 columns: multi-word ints
        assert lcs_length(a, b) == _dp_lcs(a, b) == lcs_length(b, a)


def test_tokens_match_rouge_score() -> None:
    from rouge_score.tokenizers import DefaultTokenizer

    for stem in (False, True):
        tokenizer = DefaultTokenizer(use_stemmer=stem)
        for text in EDGE:
            assert rouge_tokens(text, stem) == tokenizer.tokenize(text), text


@pytest.mark.parametrize("use_stemmer", [True, False])
def test_equals_rouge_score_on_random_and_edge_strings(use_stemmer: bool) -> None:
    rng = random.Random(1)
    texts = EDGE + [_random_text(rng) for _ in range(150)]
    for i, prediction in enumerate(texts):
        references = rng.sample(texts, rng.randint(1, 3))  # often several references
        got = rouge_l(prediction, references, use_stemmer=use_stemmer)
        assert got == _reference(prediction, references, use_stemmer), (i, prediction, references)
        assert 0.0 <= got <= 1.0


@pytest.mark.skipif(not DOLLY.exists(), reason="shared dolly data absent")
def test_equals_rouge_score_on_dolly_outputs() -> None:
    rows = [json.loads(line) for line in DOLLY.read_text().splitlines()[:120]]
    outputs = [r["output"] for r in rows]
    rng = random.Random(2)
    predictions = []
    for i, out in enumerate(outputs):
        words = out.split()
        rng.shuffle(words)  # a noisy "generation": same words, other order, some dropped, another answer
        candidate = (
            " ".join(words[: rng.randint(0, len(words))]) if i % 3 else outputs[(i + 1) % len(outputs)]
        )
        predictions.append(candidate)
    refs = [[out] if i % 2 else [out, outputs[i - 1]] for i, out in enumerate(outputs)]
    expected = [_reference(p, r, True) for p, r in zip(predictions, refs, strict=True)]
    assert [rouge_l(p, r) for p, r in zip(predictions, refs, strict=True)] == expected
    assert mean_rouge_l(predictions, refs) == pytest.approx(100 * sum(expected) / len(expected), abs=1e-12)
    assert rouge_l(outputs[0], [outputs[0]]) == 1.0


def test_identities_and_known_value() -> None:
    assert rouge_l("", ["anything"]) == 0.0 and rouge_l("x", [""]) == 0.0 and rouge_l("", [""]) == 0.0
    assert rouge_l("The Cat!", ["the cat"]) == 1.0  # case and punctuation do not count
    # LCS("a b c d", "a c e") = 2: P = 2/3, R = 2/4, F = 2PR/(P+R) = 4/7
    assert rouge_l("a c e", ["a b c d"]) == pytest.approx(4 / 7)
    assert rouge_l("a c e", ["zzz", "a b c d", "a"]) == pytest.approx(4 / 7)  # best reference wins
    assert rouge_l("the cats are running", ["the cat is run"], use_stemmer=True) > rouge_l(
        "the cats are running", ["the cat is run"], use_stemmer=False
    )
    assert mean_rouge_l(["a b", "x"], [["a b"], ["y"]]) == pytest.approx(50.0)


def test_bad_input() -> None:
    with pytest.raises(KdkitError, match="wrap a single reference in a list"):
        rouge_l("a", "a")  # type: ignore[arg-type]
    with pytest.raises(KdkitError, match="non-empty list"):
        rouge_l("a", [])
    with pytest.raises(KdkitError, match="one list of references per prediction"):
        mean_rouge_l(["a", "b"], [["a"]])
